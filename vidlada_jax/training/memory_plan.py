"""A job's train step compiled for a mesh with abstract inputs, and the memory XLA plans for it.

`compile_plan` builds the step from the trainer's own pieces (`plan_step`, `batch_shardings`)
for the job's model, optimizer, frozen modules and mesh; its inputs are `ShapeDtypeStruct`s
carrying their shardings, so nothing is allocated. `memory_analysis()` then says what one device
holds. The command line, with its targets (simulated CPU devices, GPUs, TPU slices compiled
ahead of time), is `vidlada_jax.launch.memory_plan`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp

from vidlada_jax import checkpoint as checkpoint_lib
from vidlada_jax import sharding as sharding_lib
from vidlada_jax.config import Runtime
from vidlada_jax.nn.attention import resolve_auto
from vidlada_jax.training.optimizer import OptimizerConfig
from vidlada_jax.training.train_step import batch_shardings
from vidlada_jax.training.trainer import (TrainConfig, architecture_of, as_tuples,
                                          check_batch_divides, config_section, plan_step)


def compile_plan(config, mesh, rules, *, platform: str, dtype: str,
                 text_length: int | None = None) -> dict[str, Any]:
  """Lowers and compiles the job's train step for `mesh` with abstract inputs; returns the
  shapes it was compiled for and the per-device memory (bytes) XLA planned."""
  train = TrainConfig(**config_section(config, 'train'))
  optimizer = OptimizerConfig(**as_tuples(config_section(config, 'optimizer')))
  runtime = Runtime(**dict(config_section(config, 'runtime'), dtype=dtype))
  # `auto` resolves against the target, not this host: the backend the job would run there.
  resolved = lambda name, tower: (resolve_auto(platform, dtype, tower=tower) if name == 'auto'
                                  else name)
  runtime = dataclasses.replace(runtime, attention=resolved(runtime.attention, 'lm'),
                                vision_attention=resolved(runtime.vision_attention, 'vision'))
  model_config = architecture(config).replace(runtime=runtime)

  check_batch_divides(train, mesh, rules)
  step_plan = plan_step(model_config, optimizer, train, mesh, rules)
  state, frozen_args = step_plan.abstract_state(), step_plan.abstract_frozen()

  data = config_section(config, 'data')
  length = text_length or max(data['buckets'])
  frames, side = int(data['num_frames']), model_config.vision.image_size
  lead = (train.accumulation, train.micro_batch)
  batch_devices = sharding_lib.mesh_axis_size(mesh, dict(rules).get('batch'))
  batch_shapes = {'input_ids': (lead + (length,), jnp.int32),
                  'labels': (lead + (length,), jnp.int32),
                  'frames': (lead + (frames, side, side, 3), jnp.uint8)}
  batch = {k: jax.ShapeDtypeStruct(*batch_shapes[k], sharding=sharding)
           for k, sharding in batch_shardings(mesh, rules).items()}

  count = lambda params: sum(math.prod(x.shape) for x in params.values())
  plan = dict(
      dtype=dtype, param_dtype=runtime.param_dtype, remat=runtime.remat,
      attention=runtime.attention, vision_attention=runtime.vision_attention,
      trainable_params=count(step_plan.trainable), frozen_params=count(step_plan.frozen),
      global_batch=train.global_batch, micro_batch=train.micro_batch,
      accumulation=train.accumulation, per_device_micro_batch=train.micro_batch // batch_devices,
      text_length=length, frames=frames,
      sequence_length=length - 1 + frames * model_config.tokens_per_frame)

  with jax.set_mesh(mesh):
    lowered = step_plan.step_fn.jitted.lower(state, frozen_args, batch)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program whose temporaries exceed the chip's memory; what it
    # says is the plan: the temporaries it needed, beside the arguments (counted here: each
    # argument's shard on one device).
    needed = re.search(r'temporaries \(([\d.]+)([KMGT])\) exceeds available HBM '
                       r'\(([\d.]+)([KMGT])\)', str(e))
    if not needed:
      raise
    arguments = sum(_shard_bytes(x) for x in jax.tree.leaves((state, frozen_args, batch)))
    temp = _binary_bytes(needed.group(1), needed.group(2))
    plan.update(error=str(e).splitlines()[0], hbm_bytes=_binary_bytes(*needed.group(3, 4)),
                bytes=dict(argument=arguments, temp=temp, total=arguments + temp))
    return plan
  memory = compiled.memory_analysis()
  if memory is None:
    raise RuntimeError(f'the {platform} compiler reports no memory analysis')
  argument = memory.argument_size_in_bytes + memory.host_argument_size_in_bytes
  output = memory.output_size_in_bytes + memory.host_output_size_in_bytes
  alias = memory.alias_size_in_bytes + memory.host_alias_size_in_bytes
  temp = memory.temp_size_in_bytes + memory.host_temp_size_in_bytes
  plan['bytes'] = dict(argument=argument, output=output, alias=alias, temp=temp,
                       code=memory.generated_code_size_in_bytes,
                       total=argument + output - alias + temp)
  return plan


def _shard_bytes(x) -> int:
  return math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize


def _binary_bytes(number: str, unit: str) -> int:
  """XLA's '314.52G': binary units (GiB)."""
  return int(float(number) * 1024 ** ('KMGT'.index(unit) + 1))


def architecture(config):
  """The job's model architecture: `model.architecture` with its overrides, or the one stored in
  `model.init_checkpoint` (a vidlada-jax checkpoint or work directory)."""
  section = config.model
  if section.get('architecture'):
    return architecture_of(config_section(config, 'model'))
  if section.get('init_checkpoint'):
    return checkpoint_lib.read_manifest(section.init_checkpoint).model
  raise ValueError('config.model names neither an architecture nor an init_checkpoint')
