"""Named configs and exact parameter counts (SPEC 2.1, 2.2)."""

import pytest

import vidlada_jax as vj


def test_8b_parameter_count_is_exact():
  config = vj.model_config('8b')
  total = vj.count_params(config)
  print(f'8B parameter count: {total:,}')
  assert total == 8_434_837_024
  assert vj.count_params(config.replace(vision=None)) == 8_015_581_184
  assert vj.count_params(config.replace(lm=None)) == 397_747_744


def test_8b_component_counts():
  # projector 1152*4096 + 4096 + 4096*4096 + 4096 and the newline vector, from SPEC 2.2
  config = vj.model_config('8b')
  whole = vj.count_params(config)
  lm_only = vj.count_params(config.replace(vision=None))
  vision_only = vj.count_params(config.replace(lm=None))
  assert whole - lm_only - vision_only == 21_504_000 + 4_096


def test_8b_geometry():
  config = vj.model_config('8b')
  assert config.vision.patches_per_side == 27
  assert config.pooled_side == 14
  assert config.tokens_per_frame == 210
  assert config.lm.head_dim == 128


def test_dtype_overrides():
  config = vj.model_config('tiny', dtype='bfloat16', param_dtype='bfloat16')
  assert config.compute_dtype.name == 'bfloat16'


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match='unknown model'):
    vj.model_config('9b')
  with pytest.raises(ValueError, match='float32, bfloat16'):
    vj.model_config('tiny', dtype='int8')


def test_runtime_choices_are_not_architecture():
  config = vj.model_config('tiny', dtype='bfloat16', attention='xla_chunked', remat='dots_saveable')
  assert config.runtime.attention == 'xla_chunked'
  assert 'runtime' not in config.to_dict() and 'dtype' not in config.to_dict()
  # An architecture read back (as from a checkpoint) runs with the reader's runtime.
  reread = vj.ModelConfig.from_dict(config.to_dict())
  assert reread.runtime == vj.Runtime() and reread.replace(runtime=config.runtime) == config
  # Manifests of format 1 carried run-time fields with the architecture: they are dropped.
  legacy = dict(config.to_dict(), dtype='bfloat16', attention='xla', remat=False)
  assert vj.ModelConfig.from_dict(legacy).runtime == vj.Runtime()


def test_remat_is_a_named_policy():
  import jax

  assert vj.Runtime(remat='none').remat_policy is None
  assert vj.Runtime(remat='dots_saveable').remat_policy is jax.checkpoint_policies.dots_saveable
  with pytest.raises(ValueError, match='unknown remat policy'):
    vj.Runtime(remat='sometimes')


def test_each_architecture_is_written_once():
  import dataclasses

  # No architecture numbers hide in dataclass defaults: the schema has none to offer.
  with pytest.raises(TypeError):
    vj.LMConfig()
  with pytest.raises(TypeError):
    vj.VisionConfig()
  assert {f.name for f in dataclasses.fields(vj.LMConfig) if f.default is dataclasses.MISSING} == {
      f.name for f in dataclasses.fields(vj.LMConfig)}


def test_library_does_not_import_job_configs():
  import subprocess
  import sys

  code = ('import sys, vidlada_jax as vj, vidlada_jax.training, vidlada_jax.convert.hf_to_jax, '
          'vidlada_jax.convert.jax_to_hf; vj.generate; '
          'print(sorted(m for m in sys.modules if m.startswith("vidlada_jax.configs")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'


@pytest.mark.parametrize('name, arg', [
    ('tiny', None), ('tiny', 'stage=3,init=/runs/tiny2'), ('stage1', None),
    ('stage2', 'frames=32,init=/runs/stage1'), ('stage3', None), ('llada_v_finetune', None),
    ('demo', None), ('demo', 'stage=tower'), ('demo', 'init=/runs/demo-tower')])
def test_job_configs_fill_the_library_schema(name, arg):
  """Every job config builds, and each section is accepted by the dataclass it fills."""
  import importlib

  from vidlada_jax.training import CheckpointConfig, OptimizerConfig, TrainConfig
  from vidlada_jax.training.trainer import config_section, as_tuples

  config = importlib.import_module(f'vidlada_jax.configs.{name}').get_config(arg)
  vj.Runtime(**config_section(config, 'runtime'))
  optimizer = OptimizerConfig(**as_tuples(config_section(config, 'optimizer')))
  TrainConfig(**config_section(config, 'train'))
  CheckpointConfig(**config_section(config, 'checkpoint'))
  assert config.data.num_frames > 0 and list(config.data.buckets) == sorted(config.data.buckets)
  if name == 'stage3' or (arg or '').startswith('stage=3'):
    assert optimizer.frozen == ('vision_tower',)


def test_config_arguments_are_checked():
  from vidlada_jax.configs import tiny

  with pytest.raises(ValueError, match="unknown config argument 'frame=2'"):
    tiny.get_config('frame=2')
  assert tiny.get_config('stage=2,steps=5').train.total_steps == 5


def test_initializer_range_sets_the_init_scale_and_travels_with_exports():
  import numpy as np
  from vidlada_jax.hf import config as hf_config

  for name, expected in (('tiny', 0.02), ('demo', 0.08)):
    config = vj.model_config(name)
    assert config.lm.initializer_range == config.vision.initializer_range == expected
    model = vj.init_model(config, seed=0)
    stds = {part: float(np.std(np.asarray(array))) for part, array in (
        ('lm q_proj', model.lm.layers.self_attn.q_proj.kernel.value),
        ('lm embeddings', model.lm.embed_tokens.embedding.value),
        ('tower fc1', model.vision_tower.layers.mlp.fc1.kernel.value),
        ('projector', model.mm_projector.linear_2.kernel.value))}
    for part, std in stds.items():
      assert abs(std - expected) < 0.1 * expected, (name, part, std)
    exported = hf_config.export_config(config, 'llada_v', 'float32')
    assert exported['initializer_range'] == expected
    assert hf_config.parse(exported)[1].lm.initializer_range == expected
    llada = hf_config.export_config(config.replace(vision=None), 'llada', 'float32')
    assert hf_config.parse(llada)[1].lm.initializer_range == expected
  # Checkpoints from before the field existed were initialised at 0.02.
  legacy = vj.model_config('demo').to_dict()
  del legacy['lm']['initializer_range'], legacy['vision']['initializer_range']
  reread = vj.ModelConfig.from_dict(legacy)
  assert reread.lm.initializer_range == reread.vision.initializer_range == 0.02
  assert 'initializer_range' not in legacy['lm'], 'from_dict must not change what it reads'
