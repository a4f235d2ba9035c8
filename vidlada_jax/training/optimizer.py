"""The optimizer of the curriculum (SPEC 7): AdamW under a warm-up + cosine schedule, global-norm
clipping, a learning rate per module, and frozen modules.

Modules are named by parameter-path prefixes ('vision_tower', 'mm_projector', 'lm/embed_tokens').
A frozen module is not given to the optimizer at all: the trainer differentiates only the
trainable parameters, so a frozen tower costs no backward pass and no optimizer state.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The defaults are the released one-stage recipe (SPEC 7)."""

  learning_rate: float = 1e-5  # the LM, projector and newline
  # (path prefix, peak learning rate) for modules that differ; the released recipe trains the
  # vision tower 5x slower.
  module_learning_rates: tuple[tuple[str, float], ...] = (('vision_tower', 2e-6),)
  frozen: tuple[str, ...] = ()  # path prefixes of modules that are not trained
  warmup_ratio: float = 0.03  # linear warm-up over this share of the steps, then cosine decay
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 1.0  # global-norm gradient clipping; 0 turns it off

  def __post_init__(self):
    if not 0 <= self.warmup_ratio < 1:
      raise ValueError(f'warmup_ratio must lie in [0, 1), got {self.warmup_ratio}')
    if self.learning_rate < 0 or any(lr < 0 for _, lr in self.module_learning_rates):
      raise ValueError('learning rates must not be negative')


def _matches(path: str, prefix: str) -> bool:
  return path == prefix or path.startswith(prefix.rstrip('/') + '/')


def is_frozen(config: OptimizerConfig, path: str) -> bool:
  return any(_matches(path, prefix) for prefix in config.frozen)


def check_prefixes(config: OptimizerConfig, paths) -> None:
  """Every prefix the config names must name some parameter: a typo must not silently train a
  module the user meant to freeze."""
  paths = list(paths)
  named = list(config.frozen) + [prefix for prefix, _ in config.module_learning_rates]
  unknown = [p for p in named if not any(_matches(path, p) for path in paths)]
  if unknown:
    tops = sorted({path.split('/')[0] for path in paths})
    raise ValueError(f'optimizer names modules {unknown} that match no parameter; the model\'s '
                     f'modules are {tops}')


def schedule(config: OptimizerConfig, peak: float, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_ratio` of the steps, then cosine decay to 0."""
  warmup = int(round(config.warmup_ratio * total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total_steps, 1),
      end_value=0.0)


def group_of(config: OptimizerConfig, path: str) -> str:
  """The learning-rate group of a trainable parameter: its module prefix, or 'default'."""
  for prefix, _ in config.module_learning_rates:
    if _matches(path, prefix):
      return prefix
  return 'default'


def make_optimizer(config: OptimizerConfig, trainable_paths,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(transformation over a {path: array} dict of the trainable parameters, the default
  group's schedule, for logging)."""
  trainable_paths = list(trainable_paths)
  peaks: Mapping[str, float] = {'default': config.learning_rate,
                                **dict(config.module_learning_rates)}
  groups = {path: group_of(config, path) for path in trainable_paths}

  def adamw(peak: float) -> optax.GradientTransformation:
    return optax.adamw(schedule(config, peak, total_steps), b1=config.b1, b2=config.b2,
                       eps=config.eps, weight_decay=config.weight_decay)

  used = sorted(set(groups.values()))
  per_group = optax.multi_transform({g: adamw(peaks[g]) for g in used}, groups)
  clip = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm > 0 else []
  return optax.chain(*clip, per_group), schedule(config, config.learning_rate, total_steps)
