"""Synthetic PyTorch checkpoints with the real tensor names and 8B shapes, for benchmarks.

A combined VidLaDA-8B checkpoint cut down in depth (and, optionally, vocabulary): every tensor
has the real name and the real per-layer shape (4096-wide LM, so400m tower), filled with random
bfloat16 values of weight-like magnitude. Written tensor by tensor, so making a multi-GB
checkpoint needs memory for one tensor only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_dtypes
import numpy as np

from vidlada_jax.config import LLADA_8B, SIGLIP2_SO400M, ModelConfig
from vidlada_jax.hf import config as hf_config
from vidlada_jax.hf import layouts
from vidlada_jax.hf.safetensors_io import ShardedSafetensorsWriter, TensorSpec
from vidlada_jax.params import abstract_model, flat_params


def synthetic_config(lm_layers: int, vision_layers: int, vocab_size: int = 126464) -> ModelConfig:
  return ModelConfig(
      lm=dataclasses.replace(LLADA_8B, num_layers=lm_layers, vocab_size=vocab_size),
      vision=dataclasses.replace(SIGLIP2_SO400M, num_layers=vision_layers))


def random_bfloat16(rng: np.random.Generator, shape) -> np.ndarray:
  """Random bfloat16 in +-[2^-7, 2^-6) (weight-like magnitudes), built from random bits (fast)."""
  bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
  bits = (bits & np.uint16(0x803F)) | np.uint16(0x3C00)  # random sign and mantissa, exponent 2^-7
  return bits.view(ml_dtypes.bfloat16)


def write_synthetic_checkpoint(directory, *, lm_layers: int, vision_layers: int,
                               vocab_size: int = 126464, max_shard_bytes: int = 2 * 10**9,
                               seed: int = 0) -> dict:
  """Writes a combined checkpoint (plus the unused 27th-style vision layer) to `directory`."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  config = synthetic_config(lm_layers, vision_layers, vocab_size)
  params = flat_params(abstract_model(config)[1])
  specs = []
  for entry in layouts.tensor_table(config, layouts.LLADA_V):
    shape = params[entry.param].shape
    per_tensor = tuple(entry.transform.torch_shape(shape[1:] if entry.stacked else shape))
    for name in entry.source_names(layouts.num_layers_of(config, entry)):
      specs.append(TensorSpec(name, per_tensor, 'BF16'))
  # The layer the reference drops, as real so400m-derived checkpoints may still hold it.
  extra = f'{layouts.COMBINED_VISION_PREFIX}encoder.layers.{vision_layers}.'
  specs += [TensorSpec(s.name.replace(f'{layouts.COMBINED_VISION_PREFIX}encoder.layers.0.', extra),
                       s.shape, s.dtype)
            for s in specs
            if s.name.startswith(f'{layouts.COMBINED_VISION_PREFIX}encoder.layers.0.')]
  rng = np.random.default_rng(seed)
  writer = ShardedSafetensorsWriter(directory, specs, max_shard_bytes)
  for spec in specs:
    writer.write(spec.name, random_bfloat16(rng, spec.shape))
  writer.close()
  raw = hf_config.export_config(config, layouts.LLADA_V, 'bfloat16')
  (directory / 'config.json').write_text(json.dumps(raw, indent=2))
  return dict(checkpoint_bytes=sum(s.nbytes for s in specs),
              largest_tensor_bytes=max(s.nbytes for s in specs), tensors=len(specs))
