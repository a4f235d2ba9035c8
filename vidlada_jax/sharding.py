"""Meshes, logical-axis rules and parameters placed directly in their shardings.

Every parameter carries logical axis names in flax's partitioning metadata (`out_sharding`; see
`vidlada_jax.nn.layers.logical`), so flax tooling such as `nnx.get_partition_spec` sees them. A
rule set (`RULE_SETS`, or a job's own) maps each logical name to mesh axes; this module is the one
place that turns them into `NamedSharding`s, builds meshes, and creates or places models sharded,
so that no full unsharded copy of the parameters ever sits on one device. Switching between
FSDP-only and FSDP + tensor parallelism is a change of rule set, never of model code.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from vidlada_jax.params import flat_params, map_params

Rules = Sequence[tuple[str, Any]]

MESH_AXES = ('data', 'fsdp', 'tensor')
# Where every rule set puts the batch and the attention heads: what ops that run per shard
# (`shard_map`) split over.
BATCH_AXES = ('data', 'fsdp')
HEAD_AXES = ('tensor',)

# Axes every rule set leaves whole (the last two name cache and activation dimensions: the
# sequence, and the model width of cached hidden states).
_REPLICATED = (
    ('layers', None),
    ('head_dim', None),
    ('norm', None),
    ('vision_positions', None),
    ('cache_length', None),
    ('activation_embed', None),
)

RULE_SETS = {
    # ZeRO-3 style: every large matrix is split along its model-width dimension.
    'fsdp': (
        ('batch', ('data', 'fsdp')),
        ('embed', 'fsdp'),
        ('vision_embed', 'fsdp'),
        ('vocab', None),
        ('heads', None),
        ('kv_heads', None),
        ('mlp', None),
        ('vision_heads', None),
        ('vision_mlp', None),
    ) + _REPLICATED,
    # Megatron-style tensor parallelism (heads, MLP width, vocabulary) on top of FSDP.
    'fsdp_tp': (
        ('batch', ('data', 'fsdp')),
        ('embed', 'fsdp'),
        ('vision_embed', 'fsdp'),
        ('vocab', 'tensor'),
        ('heads', 'tensor'),
        ('kv_heads', 'tensor'),
        ('mlp', 'tensor'),
        ('vision_heads', 'tensor'),
        ('vision_mlp', 'tensor'),
    ) + _REPLICATED,
}

# Mesh shapes a rule set gets when a spec names no sizes (-1: the remaining devices).
DEFAULT_MESH_SHAPES = {
    'fsdp': dict(data=1, fsdp=-1, tensor=1),
    'fsdp_tp': dict(data=1, fsdp=-1, tensor=2),
}


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """`jax.distributed.initialize` for a multi-host job (arguments left out are detected: TPU pod
  metadata, SLURM's variables), first thing in every process.

  On the CPU backend it also turns JAX's persistent compilation cache off: an XLA:CPU program
  with cross-process (gloo) collectives, read back from the cache, runs mismatched collectives
  and gloo aborts the job ("Received data size doesn't match expected size"). GPU and TPU jobs
  keep the cache.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  if jax.default_backend() == 'cpu' and jax.config.jax_compilation_cache_dir:
    warnings.warn('the persistent compilation cache is off for this CPU multi-process job (its '
                  'programs do not run correctly when read back from the cache)', stacklevel=2)
    jax.config.update('jax_enable_compilation_cache', False)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with the given axis sizes (one -1 takes the remaining devices), Auto axis types.

  Auto axes (GSPMD propagation) let the model run unchanged under any rule set; parameters and
  inputs carry the shardings and XLA places the rest.
  """
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(shape)
  sizes = [int(shape[n]) for n in names]
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {dict(shape)}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'mesh {dict(shape)} does not divide the {len(devices)} devices')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f'mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, '
        f'but {len(devices)} are available')
  return jax.make_mesh(
      tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def parse_mesh_spec(spec: str, default_rules: str | None = None) -> tuple[str, dict[str, int]]:
  """"fsdp_tp:data=2,tensor=4" -> ("fsdp_tp", {data: 2, fsdp: -1, tensor: 4}): a rule-set name,
  optionally followed by axis sizes (axes not named keep the rule set's default shape).

  With `default_rules`, a spec of sizes alone ("fsdp=8,tensor=2") names the whole shape (axes not
  named are 1) under that rule set.
  """
  name, _, sizes = spec.partition(':')
  if default_rules is not None and '=' in name:
    name, sizes = default_rules, spec
    shape = dict.fromkeys(MESH_AXES, 1)
  elif name not in RULE_SETS:
    raise ValueError(f'unknown mesh rule set {name!r}; known: {", ".join(RULE_SETS)}')
  else:
    shape = dict(DEFAULT_MESH_SHAPES[name])
  for item in filter(None, sizes.split(',')):
    axis, _, size = item.partition('=')
    if axis not in MESH_AXES or not size.lstrip('-').isdigit():
      raise ValueError(f'unknown mesh axis {axis!r} in {spec!r}; axes are {MESH_AXES}')
    shape[axis] = int(size)
  return name, shape


def mesh_from_spec(spec: str, devices: Sequence[jax.Device] | None = None) -> tuple[Mesh, Rules]:
  """(mesh, rules) from a spec such as "fsdp" or "fsdp_tp:data=2,tensor=4" (`parse_mesh_spec`)."""
  name, shape = parse_mesh_spec(spec)
  return make_mesh(shape, devices), RULE_SETS[name]


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
  return tuple(variable.get_metadata().get('out_sharding') or (None,) * variable.ndim)


def partition_spec(axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
  """Maps logical axis names to mesh axes; an unknown name is an error, not silent replication."""
  table = dict(rules)
  spec = []
  for name in axes:
    if name is None:
      spec.append(None)
    elif name in table:
      spec.append(table[name])
    else:
      raise ValueError(f'logical axis {name!r} has no rule; rules cover {sorted(table)}')
  return PartitionSpec(*spec)


def mesh_axis_size(mesh: Mesh, entry) -> int:
  """How many devices a partition-spec entry (None, an axis name, or a tuple of them) spans."""
  if entry is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[n] for n in names)


def param_shardings(state, mesh: Mesh, rules: Rules):
  """The `NamedSharding` of every parameter in `state` (a State of Variables, concrete or abstract).

  Raises if a dimension does not divide evenly over its mesh axes, naming the parameter.
  """

  def sharding_of(path, variable):
    spec = partition_spec(logical_axes(variable), rules)
    for dim, (size, entry) in enumerate(zip(variable.shape, spec)):
      parts = mesh_axis_size(mesh, entry)
      if size % parts:
        raise ValueError(
            f'parameter {path} {tuple(variable.shape)}: dimension {dim} (size {size}) does not '
            f'divide over mesh axes {entry} ({parts} devices)')
    return variable.replace(NamedSharding(mesh, spec))

  return map_params(sharding_of, state)


def target_shardings(state, mesh: Mesh | None = None, rules: Rules | None = None):
  """path -> the sharding each parameter goes to: its NamedSharding on `mesh`, or without a mesh
  the first device."""
  if mesh is None:
    device = SingleDeviceSharding(jax.devices()[0])
    return {path: device for path in flat_params(state)}
  shardings = flat_params(param_shardings(state, mesh, rules))
  return {path: sharding.get_value() for path, sharding in shardings.items()}


def cache_shardings(cache, mesh: Mesh, rules: Rules):
  """The `NamedSharding` of every array of a cache (`vidlada_jax.cache.LMCache`), from the logical
  axis names of its fields. Unlike parameters, caches follow the batch and sequence sizes of each
  call, so a mesh axis that does not divide a dimension leaves that dimension whole."""

  def sharding_of(array, axes):
    spec = partition_spec(axes, rules)
    spec = [entry if size % mesh_axis_size(mesh, entry) == 0 else None
            for size, entry in zip(array.shape, spec)]
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(sharding_of, cache, cache.logical_axes())


def create_sharded(make_model, mesh: Mesh, rules: Rules):
  """Initialises `make_model()` (an nnx module) with every parameter created in its sharding."""
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = param_shardings(abstract_state, mesh, rules)

  def init():
    return jax.lax.with_sharding_constraint(nnx.state(make_model()), shardings)

  state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def place(model, mesh: Mesh, rules: Rules):
  """Moves an existing model's parameters into their shardings (copies one array at a time)."""
  graphdef, state = nnx.split(model)
  shardings = flat_params(param_shardings(state, mesh, rules))
  state = map_params(
      lambda path, v: v.replace(jax.device_put(v.get_value(), shardings[path].get_value())), state)
  return nnx.merge(graphdef, state)


def host_local_array(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host copy of the full value; each process places only its shards."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
