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
