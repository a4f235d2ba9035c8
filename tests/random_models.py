"""Tiny random models with weights of useful scale for sampler and cache tests."""

from __future__ import annotations

import vidlada_jax as vj
from vidlada_jax.params import randomise


def random_model(name: str = 'tiny', seed: int = 0, **overrides) -> vj.VidLaDA:
  """`vj.model_config(name, **overrides)` with weights of useful scale (`params.randomise`);
  `lm=dict(...)` overrides fields of the language model."""
  lm = overrides.pop('lm', None)
  config = vj.model_config(name, **overrides)
  if lm:
    config = config.replace(lm=vj.LMConfig(**{**vars(config.lm), **lm}))
  return randomise(vj.init_model(config, seed=seed), seed)
