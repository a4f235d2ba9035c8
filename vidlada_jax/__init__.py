"""vidlada-jax: VidLaDA, a video language model with a masked-diffusion LM, in JAX/Flax.

    import vidlada_jax as vj
    model = vj.from_pretrained(path, dtype=jnp.bfloat16)
    logits = model(input_ids, pixel_values)

The names below are imported on first use, so that importing a light subpackage (the lmms-eval
plugin `vidlada_jax.lmms`, the job configs) does not start JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> (module, attribute).
_EXPORTS = {
    'Answer': ('vidlada_jax.answering', 'Answer'),
    'Answerer': ('vidlada_jax.answering', 'Answerer'),
    'CACHE_POLICIES': ('vidlada_jax.policies', 'CACHE_POLICIES'),
    'CheckpointError': ('vidlada_jax.hf.safetensors_io', 'CheckpointError'),
    'ConfigError': ('vidlada_jax.hf.config', 'ConfigError'),
    'DualCache': ('vidlada_jax.mars', 'DualCache'),
    'FullRecompute': ('vidlada_jax.sampling', 'FullRecompute'),
    'LMConfig': ('vidlada_jax.config', 'LMConfig'),
    'MarsCache': ('vidlada_jax.mars', 'MarsCache'),
    'MarsCacheConfig': ('vidlada_jax.mars', 'MarsCache'),  # its 0.1 name
    'ModelConfig': ('vidlada_jax.config', 'ModelConfig'),
    'Runtime': ('vidlada_jax.config', 'Runtime'),
    'SampleOutput': ('vidlada_jax.sampling', 'SampleOutput'),
    'SamplerConfig': ('vidlada_jax.sampling', 'SamplerConfig'),
    'TokenIds': ('vidlada_jax.config', 'TokenIds'),
    'VidLaDA': ('vidlada_jax.vidlada', 'VidLaDA'),
    'VisionConfig': ('vidlada_jax.config', 'VisionConfig'),
    'count_params': ('vidlada_jax.params', 'count_params'),
    'from_pretrained': ('vidlada_jax.loading', 'from_pretrained'),
    'generate': ('vidlada_jax.sampling', 'generate'),
    'init_model': ('vidlada_jax.loading', 'init_model'),
    'masked_diffusion_loss': ('vidlada_jax.objective', 'masked_diffusion_loss'),
    'model_config': ('vidlada_jax.config', 'model_config'),
    'PromptTooLong': ('vidlada_jax.answering', 'PromptTooLong'),
    'Question': ('vidlada_jax.answering', 'Question'),
    'cache_policy': ('vidlada_jax.policies', 'cache_policy'),
    'preprocess_frames': ('vidlada_jax.preprocess', 'preprocess_frames'),
    'save_checkpoint': ('vidlada_jax.checkpoint', 'save'),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attribute = _EXPORTS[name]
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what static tools and IDEs see
  from vidlada_jax.answering import Answer, Answerer, PromptTooLong, Question
  from vidlada_jax.checkpoint import save as save_checkpoint
  from vidlada_jax.config import (LMConfig, ModelConfig, Runtime, TokenIds, VisionConfig,
                                  model_config)
  from vidlada_jax.hf.config import ConfigError
  from vidlada_jax.hf.safetensors_io import CheckpointError
  from vidlada_jax.loading import from_pretrained, init_model
  from vidlada_jax.mars import DualCache, MarsCache, MarsCacheConfig
  from vidlada_jax.objective import masked_diffusion_loss
  from vidlada_jax.params import count_params
  from vidlada_jax.policies import CACHE_POLICIES, cache_policy
  from vidlada_jax.preprocess import preprocess_frames
  from vidlada_jax.sampling import FullRecompute, SampleOutput, SamplerConfig, generate
  from vidlada_jax.vidlada import VidLaDA
