"""Pieces every job config shares: parsing `get_config` arguments and the default sections.

A job config is `get_config(arg)` returning an `ml_collections.ConfigDict` with the sections

    model       architecture (a named one, `vidlada_jax.config.ARCHITECTURES`) and overrides, or
                init_checkpoint (a PyTorch or vidlada-jax checkpoint, or a previous stage's
                work directory: its latest checkpoint)
    runtime     dtypes, attention backends, remat policy (`vidlada_jax.config.Runtime`)
    mesh        rule set (`vidlada_jax.sharding.RULE_SETS`) and axis sizes
    data        `vidlada_jax.training.data`
    optimizer   `vidlada_jax.training.OptimizerConfig`
    objective   the loss (`vidlada_jax.training.trainer.objective_of`): masked diffusion, or
                cell colours for pretraining a tower on a synthetic world (configs/demo.py)
    train       `vidlada_jax.training.TrainConfig`
    checkpoint  `vidlada_jax.training.CheckpointConfig`

`arg` is a comma-separated list of `key=value` knobs the config declares (`"frames=64,steps=10"`),
given after the file name on the command line: `--config configs/stage2.py:frames=64`. Any field
can also be set with `--config.section.key=value`.
"""

from __future__ import annotations

import ast

import ml_collections


def parse_arg(arg: str | None, **defaults):
  """'frames=64,steps=10' -> ConfigDict(defaults updated); unknown knobs are errors."""
  knobs = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in knobs:
      raise ValueError(f'unknown config argument {item!r}; this config takes '
                       f'{", ".join(f"{k}=..." for k in knobs)}')
    knobs[key] = _value(value.strip(), type(knobs[key]))
  return ml_collections.ConfigDict(knobs)


def _value(text: str, kind: type):
  if kind is str:
    return text
  if kind is bool:
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'expected a boolean, got {text!r}')
    return text.lower() in ('true', '1')
  return kind(ast.literal_eval(text))


def mesh(rules: str = 'fsdp', **shape) -> ml_collections.ConfigDict:
  """A mesh section: the rule set and axis sizes (-1: every remaining device)."""
  return ml_collections.ConfigDict(dict(
      rules=rules, shape=dict(dict(data=1, fsdp=-1, tensor=1), **shape)))


def text_buckets(context: int, frames: int, tokens_per_frame: int = 210,
                 smallest: int = 512) -> tuple[int, ...]:
  """Text lengths up to what the context leaves beside the visual tokens, doubling from
  `smallest`: the train step compiles once per bucket."""
  room = context - frames * tokens_per_frame
  if room < smallest:
    raise ValueError(f'a {context}-token context leaves {room} text tokens beside {frames} '
                     f'frames of {tokens_per_frame} visual tokens')
  buckets = [smallest]
  while buckets[-1] * 2 < room:
    buckets.append(buckets[-1] * 2)
  if buckets[-1] != room:
    buckets.append(room)
  return tuple(buckets)


def base(**sections) -> ml_collections.ConfigDict:
  """A job config with every section; `sections` replace the defaults."""
  config = ml_collections.ConfigDict()
  config.model = dict(architecture='8b', overrides={}, init_checkpoint='', seed=0)
  # bf16 compute over float32 master weights, as the reference trains (SPEC 7: bf16).
  config.runtime = dict(dtype='bfloat16', param_dtype='float32', attention='auto',
                        vision_attention='auto', interpret_kernels=False,
                        remat='nothing_saveable')  # SPEC 7: activation checkpointing
  config.mesh = mesh('fsdp')
  config.data = dict(source='mixture', mixture='', array_record='', synthetic_clips=0,
                     synthetic_video_frames=0, tokenizer='', num_frames=32, buckets=(512,),
                     worker_count=8, seed=0)
  config.optimizer = dict(
      learning_rate=1e-5,  # SPEC 7: LM, projector and newline
      module_learning_rates=(('vision_tower', 2e-6),),  # SPEC 7: the vision tower
      frozen=(), warmup_ratio=0.03,  # SPEC 7: cosine decay with 3% linear warm-up
      b1=0.9, b2=0.999, eps=1e-8,  # SPEC 7: AdamW (0.9, 0.999, eps 1e-8)
      weight_decay=0.0,  # SPEC 7
      clip_norm=1.0)  # SPEC 7: gradient clipping 1.0
  config.objective = dict(name='masked_diffusion')  # SPEC 3
  config.train = dict(total_steps=1000, global_batch=64,  # SPEC 7: global batch 64
                      micro_batch=64, seed=0, log_every=10, loss_chunk=1024)
  config.checkpoint = dict(every=500, keep=3)
  for name, values in sections.items():
    getattr(config, name).update(values)
  return config
