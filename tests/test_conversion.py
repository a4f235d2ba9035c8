"""PyTorch checkpoint <-> vidlada-jax checkpoint conversion: bit-exact round trips in every layout,
sharded restores, exported checkpoints checked against transformers, and every error case."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

import vidlada_jax as vj
from vidlada_jax.convert import hf_to_jax, inspect, jax_to_hf
from tests import torch_reference as ref
from tests.random_models import random_model
from vidlada_jax import checkpoint, sharding
from vidlada_jax.params import flat_params

IDS = np.array([[126080, 7, -200, 8, 9, 126336], [126080, 5, 6, -200, 126336, 126336]], np.int32)
PIXELS = np.random.default_rng(5).uniform(-1, 1, size=(2, 1, 384, 384, 3)).astype(np.float32)


def read_all(directory: Path) -> dict[str, torch.Tensor]:
  """Every tensor of a PyTorch checkpoint directory, read with the safetensors library."""
  out = {}
  for file in sorted(directory.glob('*.safetensors')):
    with safe_open(str(file), 'pt') as handle:
      out.update({name: handle.get_tensor(name) for name in handle.keys()})
  return out


def assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    assert a[name].shape == b[name].shape, name
    assert a[name].contiguous().view(-1).view(torch.uint8).equal(
        b[name].contiguous().view(-1).view(torch.uint8)), name


def round_trip(tmp_path, source: Path, **export_args) -> Path:
  assert hf_to_jax.main(['--src', str(source), '--dst', str(tmp_path / 'jax'), '--quiet']) == 0
  args = ['--src', str(tmp_path / 'jax'), '--dst', str(tmp_path / 'back'), '--quiet']
  for key, value in export_args.items():
    args += [f'--{key.replace("_", "-")}', value]
  assert jax_to_hf.main(args) == 0
  return tmp_path / 'back'


# --- Checkpoints in every layout ------------------------------------------------------------------


@pytest.fixture(scope='module')
def combined():
  return ref.TinyVidLaDA(seed=7)


def combined_checkpoint(directory, combined, shards=1, dtype=torch.float32):
  tensors = {k: v.to(dtype) for k, v in combined.state_dict().items()}
  return ref.write_checkpoint(directory, tensors, combined.config(), shards=shards)


def llada_checkpoint(directory, shards=1):
  llama = ref.tiny_llama(seed=8)
  tensors = {k: v.to(torch.bfloat16) for k, v in ref.llada_names(llama.state_dict()).items()}
  return ref.write_checkpoint(directory, tensors, ref.llada_config(llama.config), shards=shards)


def llada_v_lm_checkpoint(directory, shards=1):
  llama = ref.tiny_llama(seed=9)
  return ref.write_checkpoint(directory, llama.state_dict(), llama.config.to_dict(), shards=shards)


def siglip_checkpoint(directory, prefix, shards=1):
  tower = ref.tiny_siglip(num_layers=3, seed=10)
  tensors = {prefix + k.removeprefix('vision_model.'): v for k, v in tower.state_dict().items()}
  return ref.write_checkpoint(directory, tensors, tower.config.to_dict(), shards=shards)


LAYOUT_CASES = {
    'combined-1-file': lambda d, m: combined_checkpoint(d, m),
    'combined-3-shards-bf16':
        lambda d, m: combined_checkpoint(d, m, shards=3, dtype=torch.bfloat16),
    'llada-v-lm': lambda d, m: llada_v_lm_checkpoint(d),
    'llada-1-file-bf16': lambda d, m: llada_checkpoint(d),
    'llada-2-shards-bf16': lambda d, m: llada_checkpoint(d, shards=2),
    'siglip-no-prefix': lambda d, m: siglip_checkpoint(d, ''),
    'siglip-vision-model-prefix': lambda d, m: siglip_checkpoint(d, 'vision_model.', shards=2),
    'siglip-combined-prefix': lambda d, m: siglip_checkpoint(d, ref.VISION_PREFIX),
}


@pytest.mark.parametrize('case', list(LAYOUT_CASES))
def test_round_trip_is_bit_exact(tmp_path, combined, case):
  source = LAYOUT_CASES[case](tmp_path / 'hf', combined)
  back = round_trip(tmp_path, source)
  assert_bit_exact(read_all(source), read_all(back))
  assert json.loads((back / 'config.json').read_text()) == json.loads(
      (source / 'config.json').read_text())
  # The inspector agrees, and sees the vidlada-jax checkpoint through the export.
  assert inspect.compare(inspect.open_view(source), inspect.open_view(back), values=True) == []
  assert inspect.compare(inspect.open_view(tmp_path / 'jax'), inspect.open_view(source)) == []


def test_sharded_export_writes_an_index(tmp_path, combined):
  source = combined_checkpoint(tmp_path / 'hf', combined)
  back = round_trip(tmp_path, source, max_shard_size='100KB')
  index = json.loads((back / 'model.safetensors.index.json').read_text())
  files = sorted(p.name for p in back.glob('*.safetensors'))
  assert len(files) > 3 and set(index['weight_map'].values()) == set(files)
  for file in files:  # at most 100 KB of tensors per file, unless one tensor alone is larger
    names = [n for n, f in index['weight_map'].items() if f == file]
    sizes = [t.numel() * t.element_size() for t in read_all_file(back / file).values()]
    assert len(names) == 1 or sum(sizes) <= 100_000, file
  assert index['metadata']['total_size'] == sum(
      t.numel() * t.element_size() for t in read_all(source).values())
  assert_bit_exact(read_all(source), read_all(back))


def test_export_is_on_disk_before_it_is_renamed_into_place(tmp_path, combined, monkeypatch):
  """Every exported file, and the directory holding it, is fsynced before the rename that makes
  the export look complete; the parent directory after it."""
  import os

  events = []
  real_fsync, real_rename = os.fsync, Path.rename
  monkeypatch.setattr(os, 'fsync', lambda fd: (events.append(
      ('fsync', os.readlink(f'/proc/self/fd/{fd}'))), real_fsync(fd))[1])
  monkeypatch.setattr(Path, 'rename', lambda self, target: (events.append(
      ('rename', str(self))), real_rename(self, target))[1])
  source = combined_checkpoint(tmp_path / 'hf', combined)
  back = round_trip(tmp_path, source, max_shard_size='100KB')
  staging = f'{back}.incomplete'
  published = next(i for i, event in enumerate(events) if event == ('rename', staging))
  synced = {path for kind, path in events[:published] if kind == 'fsync'}
  for file in back.iterdir():
    assert f'{staging}/{file.name}' in synced, file.name
  assert staging in synced
  assert ('fsync', str(back.parent)) in events[published:]


def read_all_file(file: Path) -> dict[str, torch.Tensor]:
  with safe_open(str(file), 'pt') as handle:
    return {name: handle.get_tensor(name) for name in handle.keys()}


def test_orbax_checkpoint_loads_to_the_same_logits(tmp_path, combined):
  source = combined_checkpoint(tmp_path / 'hf', combined, shards=2)
  hf_to_jax.convert(source, tmp_path / 'jax', progress=False)
  from_hf = np.asarray(vj.from_pretrained(source, dtype='float32', progress=False)(IDS, PIXELS))
  from_orbax = np.asarray(vj.from_pretrained(tmp_path / 'jax', dtype='float32')(IDS, PIXELS))
  np.testing.assert_array_equal(from_orbax, from_hf)


def test_loading_a_pytorch_checkpoint_does_not_import_orbax(tmp_path, combined):
  """Orbax is a fifth of a fresh process's imports; reading safetensors never needs it."""
  source = combined_checkpoint(tmp_path / 'hf', combined)
  code = ('import sys, vidlada_jax as vj; '
          f'vj.from_pretrained({str(source)!r}, progress=False); '
          'print(sorted(m for m in sys.modules if m.startswith("orbax")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.stdout.strip().splitlines()[-1] == '[]'


def test_dtype_option_converts(tmp_path, combined):
  source = combined_checkpoint(tmp_path / 'hf', combined, dtype=torch.bfloat16)
  hf_to_jax.convert(source, tmp_path / 'jax', dtype='float32', progress=False)
  model = vj.from_pretrained(tmp_path / 'jax')
  assert model.lm.lm_head.kernel[...].dtype == np.float32
  jax_to_hf.export(tmp_path / 'jax', tmp_path / 'back', dtype='bfloat16', progress=False)
  assert_bit_exact(read_all(source), read_all(tmp_path / 'back'))  # bf16 -> f32 -> bf16 is exact


def test_tokenizer_files_travel(tmp_path, combined):
  source = combined_checkpoint(tmp_path / 'hf', combined)
  from vidlada_jax.fixtures import tiny_tokenizer

  tiny_tokenizer().save(str(source / 'tokenizer.json'))
  (source / 'generation_config.json').write_text('{"eos_token_id": 126081}')
  back = round_trip(tmp_path, source)
  for name in ('tokenizer.json', 'generation_config.json'):
    assert (tmp_path / 'jax' / name).read_bytes() == (source / name).read_bytes()
    assert (back / name).read_bytes() == (source / name).read_bytes()


# --- Exports checked against transformers -------------------------------------------------------


def test_exported_combined_checkpoint_runs_in_transformers(tmp_path, combined):
  source = combined_checkpoint(tmp_path / 'hf', combined)
  hf_to_jax.convert(source, tmp_path / 'jax', progress=False)
  jax_to_hf.export(tmp_path / 'jax', tmp_path / 'out', progress=False)
  exported = read_all(tmp_path / 'out')
  config = json.loads((tmp_path / 'out' / 'config.json').read_text())
  model = vj.from_pretrained(tmp_path / 'jax', dtype='float32')

  lm_config = LlamaConfig(**{k: config[k] for k in (
      'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
      'num_key_value_heads', 'rope_theta', 'rms_norm_eps')}, tie_word_embeddings=False,
                          attn_implementation='eager')
  llama = LlamaForCausalLM(lm_config).eval()
  lm_tensors = {k: v for k, v in exported.items() if k in llama.state_dict()}
  llama.load_state_dict(lm_tensors, strict=True)
  ids = IDS[:, 4:]  # text only
  expected = ref.bidirectional_logits(llama, input_ids=torch.from_numpy(ids).long())
  assert ref.max_relative_error(np.asarray(model.lm_logits(ids)), expected) < 1e-5

  vision = config['vision_config']
  tower = SiglipVisionModel(SiglipVisionConfig(
      **{k: vision[k] for k in ('hidden_size', 'intermediate_size', 'num_attention_heads',
                                'image_size', 'patch_size', 'layer_norm_eps')},
      num_hidden_layers=vision['num_hidden_layers'] + 1, attn_implementation='eager')).eval()
  vision_tensors = {k.removeprefix(ref.VISION_PREFIX): v for k, v in exported.items()
                    if k.startswith(ref.VISION_PREFIX)}
  missing, unexpected = tower.load_state_dict(vision_tensors, strict=False)
  assert unexpected == [] and all('head' in k for k in missing)  # the pooling head only
  features = ref.siglip_features(tower, PIXELS[0]).numpy()
  assert ref.max_relative_error(np.asarray(model.vision_tower(PIXELS[0])), features) < 1e-5


def test_llada_layout_export_of_a_combined_model(tmp_path, combined):
  source = combined_checkpoint(tmp_path / 'hf', combined)
  hf_to_jax.convert(source, tmp_path / 'jax', progress=False)
  summary = jax_to_hf.export(tmp_path / 'jax', tmp_path / 'llada', layout='llada', progress=False)
  assert any('language-model only' in note for note in summary['notes'])
  exported = read_all(tmp_path / 'llada')
  assert set(exported) == set(ref.llada_names(combined.lm.state_dict()))
  lm = vj.from_pretrained(tmp_path / 'llada', dtype='float32', progress=False)
  expected = ref.bidirectional_logits(combined.lm, input_ids=torch.from_numpy(IDS[:, 4:]).long())
  assert ref.max_relative_error(np.asarray(lm.lm_logits(IDS[:, 4:])), expected) < 1e-5


# --- Sharding ------------------------------------------------------------------------------------


def test_restore_onto_a_different_mesh(tmp_path, combined):
  assert jax.device_count() == 8
  source = combined_checkpoint(tmp_path / 'hf', combined)
  assert hf_to_jax.main(['--src', str(source), '--dst', str(tmp_path / 'jax'), '--quiet',
                         '--mesh', 'fsdp=8,tensor=1']) == 0
  mesh, rules = sharding.mesh_from_spec('fsdp_tp:data=2,tensor=2')
  model = vj.from_pretrained(tmp_path / 'jax', dtype='float32', mesh=mesh, rules=rules)
  kernel = model.lm.layers.mlp.gate_proj.kernel[...]
  assert kernel.sharding.mesh.shape == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor')
  assert {s.data.shape for s in kernel.addressable_shards} == {(2, 32, 64)}
  reference = vj.from_pretrained(source, dtype='float32', progress=False)
  assert ref.max_relative_error(np.asarray(model(IDS, PIXELS)),
                                np.asarray(reference(IDS, PIXELS))) < 1e-5


@pytest.mark.parametrize('mesh_spec', [None, 'fsdp'])
def test_restore_in_layer_groups_is_exact(tmp_path, monkeypatch, mesh_spec):
  """Stacked parameters restored a layer group at a time, on the host path (one device) and into
  a mesh, hold exactly the saved values, each layer in its slot."""
  model = random_model('tiny', seed=11, lm=dict(num_layers=3))
  vj.save_checkpoint(model, tmp_path / 'jax')
  monkeypatch.setattr(checkpoint, 'LAYER_GROUP_BYTES', 1)  # one layer per orbax call
  mesh, rules = sharding.mesh_from_spec(mesh_spec) if mesh_spec else (None, None)
  back = vj.from_pretrained(tmp_path / 'jax', mesh=mesh, rules=rules)
  saved = flat_params(nnx.state(model, nnx.Param))
  restored = flat_params(nnx.state(back, nnx.Param))
  assert sorted(saved) == sorted(restored)
  for name in saved:
    np.testing.assert_array_equal(np.asarray(restored[name].get_value()),
                                  np.asarray(saved[name].get_value()), err_msg=name)


# --- Errors --------------------------------------------------------------------------------------


def run_convert(capsys, *args) -> tuple[int, str]:
  code = hf_to_jax.main([*map(str, args), '--quiet'])
  return code, capsys.readouterr().err


def test_unknown_layout(tmp_path, capsys):
  (tmp_path / 'hf').mkdir()
  (tmp_path / 'hf' / 'config.json').write_text(json.dumps({'model_type': 'bert', 'dim': 8}))
  code, err = run_convert(capsys, '--src', tmp_path / 'hf', '--dst', tmp_path / 'out')
  assert code == 2 and 'matches no known checkpoint layout' in err
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('mutation, message', [
    (lambda t: t.pop('model.norm.weight'), r'missing: model.norm.weight'),
    (lambda t: t.update({'model.extra.weight': torch.zeros(2)}),
     r'unexpected tensor\(s\): model.extra.weight'),
    (lambda t: t.update({'model.norm.weight': torch.zeros(65)}),
     r'model.norm.weight has shape \[65\], expected \[64\]'),
    (lambda t: t.update({'model.norm.weight': torch.zeros(64, dtype=torch.int32)}),
     r'model.norm.weight has dtype I32'),
    (lambda t: t.update({'model.layers.1.mlp.up_proj.weight':
                         t['model.layers.1.mlp.up_proj.weight'].half()}),
     r'parameter lm/layers/mlp/up_proj/kernel mix dtypes'),
])
def test_bad_tensors_are_named(tmp_path, capsys, mutation, message):
  llama = ref.tiny_llama(seed=11)
  tensors = dict(llama.state_dict())
  mutation(tensors)
  source = ref.write_checkpoint(tmp_path / 'hf', tensors, llama.config.to_dict())
  code, err = run_convert(capsys, '--src', source, '--dst', tmp_path / 'out')
  assert code == 2
  assert __import__('re').search(message, err), err
  assert not (tmp_path / 'out').exists()


def test_mixed_dtypes_convert_with_an_explicit_dtype(tmp_path):
  llama = ref.tiny_llama(seed=11)
  tensors = dict(llama.state_dict())
  tensors['model.layers.1.mlp.up_proj.weight'] = tensors['model.layers.1.mlp.up_proj.weight'].half()
  source = ref.write_checkpoint(tmp_path / 'hf', tensors, llama.config.to_dict())
  assert hf_to_jax.main(['--src', str(source), '--dst', str(tmp_path / 'out'), '--quiet',
                         '--dtype', 'float32']) == 0


def test_truncated_safetensors(tmp_path, capsys):
  source = llada_v_lm_checkpoint(tmp_path / 'hf', shards=2)
  shard = sorted(source.glob('model-*.safetensors'))[0]
  shard.write_bytes(shard.read_bytes()[:-1000])
  code, err = run_convert(capsys, '--src', source, '--dst', tmp_path / 'out')
  assert code == 2 and shard.name in err and 'truncated or corrupt' in err


def test_existing_destination_is_refused_then_replaced_only_when_complete(tmp_path, capsys):
  source = llada_v_lm_checkpoint(tmp_path / 'hf')
  destination = tmp_path / 'out'
  destination.mkdir()
  (destination / 'precious.txt').write_text('keep me')
  code, err = run_convert(capsys, '--src', source, '--dst', destination)
  assert code == 2 and 'not empty' in err and '--overwrite' in err
  assert (destination / 'precious.txt').read_text() == 'keep me'

  # A run that fails half-way leaves the destination untouched and no staging directory behind.
  broken = tmp_path / 'broken'
  broken.mkdir()
  for f in source.iterdir():
    (broken / f.name).write_bytes(f.read_bytes())
  (broken / 'model.safetensors').write_bytes((source / 'model.safetensors').read_bytes()[:-64])
  code, _ = run_convert(capsys, '--src', broken, '--dst', destination, '--overwrite')
  assert code == 2
  assert sorted(p.name for p in destination.iterdir()) == ['precious.txt']
  assert sorted(p.name for p in tmp_path.iterdir()) == ['broken', 'hf', 'out']

  code, _ = run_convert(capsys, '--src', source, '--dst', destination, '--overwrite')
  assert code == 0
  assert not (destination / 'precious.txt').exists()
  assert vj.checkpoint.is_checkpoint(destination)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['broken', 'hf', 'out']


def test_export_errors(tmp_path, capsys, combined):
  source = combined_checkpoint(tmp_path / 'hf', combined)
  hf_to_jax.convert(source, tmp_path / 'jax', progress=False)
  code = jax_to_hf.main(['--src', str(tmp_path / 'jax'), '--dst', str(tmp_path / 'x'),
                         '--layout', 'siglip', '--quiet'])
  assert code == 2 and 'counts the layer the reference drops' in capsys.readouterr().err
  with pytest.raises(SystemExit):  # argparse rejects an unknown layout
    jax_to_hf.main(['--src', str(tmp_path / 'jax'), '--dst', str(tmp_path / 'x'),
                    '--layout', 'gpt2'])
  code = jax_to_hf.main(['--src', str(tmp_path / 'hf'), '--dst', str(tmp_path / 'x'), '--quiet'])
  assert code == 2 and 'not a vidlada-jax checkpoint' in capsys.readouterr().err
  code = jax_to_hf.main(['--src', str(tmp_path / 'jax'), '--dst', str(tmp_path / 'x'), '--quiet',
                         '--max-shard-size', 'lots'])
  assert code == 2 and 'cannot read size' in capsys.readouterr().err
  assert not (tmp_path / 'x').exists()


def test_inspect_reports_differences(tmp_path, capsys, combined):
  a = combined_checkpoint(tmp_path / 'a', combined)
  tensors = combined.state_dict()
  tensors['model.norm.weight'] = tensors['model.norm.weight'] + 1
  del tensors['lm_head.weight']
  b = ref.write_checkpoint(tmp_path / 'b', tensors, combined.config())
  assert inspect.main([str(a), '--against', str(b), '--values']) == 1
  out = capsys.readouterr().out
  assert 'only in A: lm_head.weight F32[126464, 64]' in out
  assert 'values differ: model.norm.weight' in out
  assert inspect.main([str(a)]) == 0
  assert 'PyTorch checkpoint: 90 tensors' in capsys.readouterr().out


def test_export_of_a_model_made_in_jax(tmp_path):
  """No source checkpoint: config.json is generated, and it loads back to the same model."""
  model = vj.init_model(vj.model_config('tiny'), seed=4)
  vj.save_checkpoint(model, tmp_path / 'jax')
  assert jax_to_hf.main(['--src', str(tmp_path / 'jax'), '--dst', str(tmp_path / 'hf'),
                         '--quiet']) == 0
  config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  assert (config['mm_projector_type'] == 'mlp2x_gelu'
          and config['vision_config']['num_hidden_layers'] == 2)
  back = vj.from_pretrained(tmp_path / 'hf', progress=False)
  assert back.config == model.config
  np.testing.assert_array_equal(np.asarray(back(IDS, PIXELS)), np.asarray(model(IDS, PIXELS)))
  assert jax_to_hf.main(['--src', str(tmp_path / 'jax'), '--dst', str(tmp_path / 'llada'),
                         '--layout', 'llada', '--quiet']) == 0
  lm = vj.from_pretrained(tmp_path / 'llada', progress=False)
  np.testing.assert_array_equal(np.asarray(lm.lm_logits(IDS[:, 4:])),
                                np.asarray(model.lm_logits(IDS[:, 4:])))


@pytest.mark.parametrize('shape', [(2048, 2048), (3, 2048, 1024), (7, 5)])
def test_copy_into_on_every_core_equals_a_plain_copy(shape):
  """Restored arrays are copied into their slots by `layouts.copy_into` (split over the first
  axis when large); bits and casts must be exactly numpy's."""
  from vidlada_jax.hf import layouts

  value = np.random.default_rng(0).normal(size=shape).astype(ml_dtypes.bfloat16)
  same = np.zeros(shape, ml_dtypes.bfloat16)
  layouts.copy_into(same, value)
  np.testing.assert_array_equal(same.view(np.uint16), value.view(np.uint16))
  cast = np.zeros(shape, np.float32)
  layouts.copy_into(cast, value)
  np.testing.assert_array_equal(cast, value.astype(np.float32))
