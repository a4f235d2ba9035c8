"""Bad checkpoints fail before any weight is loaded, with errors that name the problem."""

import json

import numpy as np
import pytest
import torch

import vidlada_jax as vj
from tests import torch_reference as ref


@pytest.fixture(scope='module')
def llama():
  return ref.tiny_llama(seed=0)


def write(tmp_path, tensors, config, **kw):
  return ref.write_checkpoint(tmp_path / 'ckpt', tensors, config, **kw)


def test_missing_tensor_is_named(tmp_path, llama):
  tensors = dict(llama.state_dict())
  del tensors['model.layers.1.mlp.up_proj.weight']
  directory = write(tmp_path, tensors, llama.config.to_dict())
  with pytest.raises(vj.CheckpointError,
                     match=r'1 tensor\(s\) missing: model\.layers\.1\.mlp\.up_proj\.weight'):
    vj.from_pretrained(directory, progress=False)


def test_unexpected_tensor_is_named(tmp_path, llama):
  tensors = dict(llama.state_dict())
  tensors['model.layers.0.self_attn.q_norm.weight'] = torch.ones(64)
  directory = write(tmp_path, tensors, llama.config.to_dict())
  with pytest.raises(vj.CheckpointError,
                     match=r'unexpected tensor\(s\): '
                           r'model\.layers\.0\.self_attn\.q_norm\.weight'):
    vj.from_pretrained(directory, progress=False)


def test_extra_lm_layer_is_unexpected(tmp_path, llama):
  # Only the 27th *vision* layer is ignorable; a surplus LM layer means a wrong config.
  tensors = dict(llama.state_dict())
  tensors['model.layers.2.input_layernorm.weight'] = torch.ones(64)
  directory = write(tmp_path, tensors, llama.config.to_dict())
  with pytest.raises(vj.CheckpointError, match='model.layers.2.input_layernorm.weight'):
    vj.from_pretrained(directory, progress=False)


def test_shape_mismatch_is_named(tmp_path, llama):
  tensors = dict(llama.state_dict())
  tensors['model.layers.0.mlp.gate_proj.weight'] = torch.zeros(96, 64)
  directory = write(tmp_path, tensors, llama.config.to_dict())
  with pytest.raises(vj.CheckpointError,
                     match=r'model\.layers\.0\.mlp\.gate_proj\.weight has shape \[96, 64\], '
                           r'expected \[128, 64\]'):
    vj.from_pretrained(directory, progress=False)


def test_truncated_file_is_named(tmp_path, llama):
  directory = write(tmp_path, llama.state_dict(), llama.config.to_dict(), shards=2)
  shard = sorted(directory.glob('model-*.safetensors'))[1]
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])
  with pytest.raises(vj.CheckpointError, match=f'{shard.name}.*truncated or corrupt'):
    vj.from_pretrained(directory, progress=False)


def test_file_truncated_after_opening_is_named_not_a_crash(tmp_path, llama):
  """Reordered tensors are read through a mapping of the file; touching a mapped page past the end
  of a file that shrank would kill the process, so the reader checks first."""
  from vidlada_jax.hf.safetensors_io import SafetensorsCheckpoint

  directory = write(tmp_path, llama.state_dict(), llama.config.to_dict(), shards=1)
  shard = directory / 'model.safetensors'
  with SafetensorsCheckpoint(directory) as tensors:
    name = max(tensors.names, key=lambda n: tensors.info(n).offset)  # the last tensor stored
    whole = np.asarray(tensors.mapped(name)).copy()
    np.testing.assert_array_equal(whole, tensors.read(name).reshape(-1))
    np.testing.assert_array_equal(tensors.mapped(name, 3, 5), whole[3:8])
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(vj.CheckpointError, match=f'{shard.name} ended inside tensor {name}'):
      tensors.mapped(name)


def test_index_listing_a_missing_shard(tmp_path, llama):
  directory = write(tmp_path, llama.state_dict(), llama.config.to_dict(), shards=2)
  sorted(directory.glob('model-*.safetensors'))[0].unlink()
  with pytest.raises(vj.CheckpointError, match='missing shard'):
    vj.from_pretrained(directory, progress=False)


def test_directory_without_config_or_weights(tmp_path, llama):
  with pytest.raises(vj.CheckpointError, match='does not exist'):
    vj.from_pretrained(tmp_path / 'nowhere', progress=False)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(vj.CheckpointError, match='no config.json'):
    vj.from_pretrained(tmp_path / 'empty', progress=False)
  (tmp_path / 'empty' / 'config.json').write_text(json.dumps(llama.config.to_dict()))
  with pytest.raises(vj.CheckpointError, match='neither model.safetensors nor'):
    vj.from_pretrained(tmp_path / 'empty', progress=False)


@pytest.mark.parametrize('change, message', [
    (dict(tie_word_embeddings=True), 'untied'),
    (dict(rope_scaling=dict(rope_type='linear', factor=2.0)), "RoPE scaling 'linear'"),
    (dict(num_hidden_layers=None), 'num_hidden_layers'),
    (dict(model_type='bert', hidden_size=None), 'matches no known checkpoint layout'),
    (dict(mm_projector_type='linear'), "mm_projector_type 'linear'"),
])
def test_unsupported_configs_are_named(tmp_path, llama, change, message):
  config = {**llama.config.to_dict(), **change}
  config = {k: v for k, v in config.items() if v is not None}
  directory = write(tmp_path, llama.state_dict(), config)
  with pytest.raises(vj.ConfigError, match=message):
    vj.from_pretrained(directory, progress=False)


def test_nothing_is_half_loaded_on_error(tmp_path, llama, monkeypatch):
  # Validation happens from headers only: a bad checkpoint never reads a tensor.
  from vidlada_jax.hf import safetensors_io

  reads = []
  monkeypatch.setattr(safetensors_io.SafetensorsCheckpoint, 'read',
                      lambda self, name: reads.append(name))
  tensors = dict(llama.state_dict())
  del tensors['lm_head.weight']
  directory = write(tmp_path, tensors, llama.config.to_dict())
  with pytest.raises(vj.CheckpointError):
    vj.from_pretrained(directory, progress=False)
  assert reads == []
