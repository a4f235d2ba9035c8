"""`from_pretrained`: a VidLaDA model from a PyTorch checkpoint directory.

The whole checkpoint is validated from its headers first (every parameter accounted for, no
unexpected tensor, every shape right); then parameters are built one at a time: the tensor(s) of
one parameter are read, converted to our layout and dtype into one host buffer, and placed straight
into that parameter's sharding. At no point is more than one parameter held twice.

Copies are counted: a tensor our layout keeps as stored (embeddings, norms, biases) is read from
the page cache straight into its place in the parameter's buffer; one that is transposed (every
`Linear`) is transposed into place straight from a read-only mapping of the file, in row blocks.
Either way each element is copied once. The parameter's buffer is page aligned, so on the host
platform placing it on the device adopts it without a copy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from vidlada_jax import checkpoint as jax_checkpoint
from vidlada_jax import sharding as sharding_lib
from vidlada_jax.config import ModelConfig, Runtime
from vidlada_jax.hf import config as hf_config
from vidlada_jax.hf import layouts
from vidlada_jax.hf.safetensors_io import (FLOAT_DTYPES, CheckpointError, SafetensorsCheckpoint,
                                           aligned_empty, numpy_dtype)
from vidlada_jax.params import abstract_model, flat_params, map_params
from vidlada_jax.vidlada import VidLaDA

_MAX_LISTED = 12


def read_hf_config(directory: Path) -> dict:
  if not Path(directory).is_dir():
    raise CheckpointError(f'checkpoint directory {directory} does not exist')
  path = Path(directory) / 'config.json'
  if not path.exists():
    raise CheckpointError(f'{directory} has no config.json; it is not a checkpoint directory')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{path} is not valid JSON: {e}') from e


def _listing(names) -> str:
  names = sorted(names)
  shown = ', '.join(names[:_MAX_LISTED])
  return shown + (f', ... ({len(names) - _MAX_LISTED} more)' if len(names) > _MAX_LISTED else '')


class LoadPlan:
  """Which checkpoint tensor(s) make each parameter, checked against the files' headers."""

  def __init__(self, tensors: SafetensorsCheckpoint, config: ModelConfig, layout: str,
               *, text_tower: bool = False):
    self.config = config
    self.layout = layout
    names = tensors.names
    self.vision_prefix = (
        layouts.vision_prefix_of(names) if layout == layouts.SIGLIP
        else layouts.COMBINED_VISION_PREFIX)
    self.table = layouts.tensor_table(config, layout, self.vision_prefix)
    self.graphdef, self.abstract_state = abstract_model(config)
    self.params = flat_params(self.abstract_state)

    expected = {name: (entry, layer)
                for name, entry, layer in layouts.expected_names(config, self.table)}
    available = set(names)
    self.ignored = sorted(
        n for n in available - set(expected)
        if layouts.ignorable(n, config, self.vision_prefix, text_tower=text_tower))
    unexpected = available - set(expected) - set(self.ignored)
    missing = set(expected) - available
    errors = []
    if missing:
      errors.append(f'{len(missing)} tensor(s) missing: {_listing(missing)}')
    if unexpected:
      errors.append(f'{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}')
    for name in sorted(set(expected) & available):
      entry, layer = expected[name]
      shape = self.params[entry.param].shape
      want = entry.transform.torch_shape(shape[1:] if layer is not None else shape)
      info = tensors.info(name)
      if tuple(info.shape) != tuple(want):
        errors.append(f'tensor {name} has shape {list(info.shape)}, expected {list(want)} '
                      f'(for parameter {entry.param})')
      if info.dtype not in FLOAT_DTYPES:
        errors.append(f'tensor {name} has dtype {info.dtype}, expected a float dtype')
    if errors:
      raise CheckpointError(
          f'checkpoint {tensors.directory} ({layout} layout) does not match the model its '
          'config.json describes:\n  ' + '\n  '.join(errors))
    self.tensors = tensors
    self.reader = TensorReader(tensors)
    self.entries = {entry.param: entry for entry in self.table}

  def num_layers(self, entry: layouts.TensorMap) -> int:
    return layouts.num_layers_of(self.config, entry)

  def stored_dtype(self, param: str) -> np.dtype:
    """The dtype a parameter is stored in; its per-layer tensors must agree."""
    entry = self.entries[param]
    names = entry.source_names(self.num_layers(entry))
    dtypes = {self.tensors.info(n).dtype for n in names}
    if len(dtypes) > 1:
      listing = ', '.join(f'{n}: {self.tensors.info(n).dtype}' for n in names)
      raise CheckpointError(
          f'the tensors of parameter {param} mix dtypes ({listing}); pass a dtype to convert to')
    return np.dtype(numpy_dtype(dtypes.pop()))

  def source_bytes(self, param: str) -> int:
    entry = self.entries[param]
    return sum(self.tensors.nbytes(n) for n in entry.source_names(self.num_layers(entry)))

  def place(self, param: str, dtype, sharding: jax.sharding.Sharding) -> jax.Array:
    """One parameter, read and converted on the host, then placed in `sharding` (each process
    puts only its own shards on its devices); the host copy is dropped on return."""
    entry = self.entries[param]
    value = aligned_empty(self.params[param].shape, dtype)
    names = entry.source_names(self.num_layers(entry))
    for i, name in enumerate(names):
      self.reader.read(entry, name, value[i] if entry.stacked else value)
    return sharding_lib.host_local_array(value, sharding)

  def place_layer(self, param: str, layer: int, dtype, sharding) -> jax.Array:
    """Layer `layer` of a stacked parameter alone: one checkpoint tensor."""
    entry = self.entries[param]
    value = aligned_empty(self.params[param].shape[1:], dtype)
    self.reader.read(entry, entry.source_names(self.num_layers(entry))[layer], value)
    return sharding_lib.host_local_array(value, sharding)


class TensorReader:
  """Reads checkpoint tensors into buffers in our layout and dtype, copying each exactly once:
  straight from the page cache into place when the layout keeps it as stored, and otherwise
  through a read-only mapping of the file (no intermediate copy) that the reorder or cast reads.

  A `Linear` weight is mapped and transposed in blocks of rows of at most `BLOCK_BYTES`, so
  loading holds the model plus that much of mapped file (mapping a whole 1 GB output projection
  of an 8B model at once would add 1.4x a one-layer checkpoint to the peak).
  """

  BLOCK_BYTES = 64 << 20

  def __init__(self, tensors: SafetensorsCheckpoint):
    self.tensors = tensors

  def read(self, entry: layouts.TensorMap, name: str, out: np.ndarray) -> None:
    """Tensor `name`, converted by `entry`'s transform, into `out` (C-contiguous)."""
    transform, dtype, shape = (entry.transform, self.tensors.dtype(name),
                               self.tensors.info(name).shape)
    if not transform.reorders and dtype == out.dtype:
      self.tensors.read_into(name, out)
    elif getattr(transform, 'streams_rows', False):
      row = int(np.prod(shape[1:]))
      block = max(1, self.BLOCK_BYTES // (row * dtype.itemsize))
      for first in range(0, shape[0], block):
        rows = min(block, shape[0] - first)
        stored = self.tensors.mapped(name, first * row, rows * row).reshape(rows, *shape[1:])
        transform.into(out, stored, first)
    else:
      transform.into(out, self.tensors.mapped(name).reshape(shape))


def load_safetensors(
    directory: Path,
    config: ModelConfig,
    layout: str,
    *,
    mesh: Mesh | None = None,
    rules=None,
    text_tower: bool = False,
    progress: bool = True,
) -> VidLaDA:
  with SafetensorsCheckpoint(directory) as tensors:
    plan = LoadPlan(tensors, config, layout, text_tower=text_tower)
    shardings = sharding_lib.target_shardings(plan.abstract_state, mesh, rules)
    total = sum(v.size * v.dtype.itemsize for v in plan.params.values())
    bar = tqdm(total=total, unit='B', unit_scale=True, desc=f'loading {Path(directory).name}',
               disable=not progress)

    def load_param(path: str, variable: nnx.Variable) -> nnx.Variable:
      array = plan.place(path, variable.dtype, shardings[path])
      bar.update(array.nbytes)
      return variable.replace(array)

    with bar:
      state = map_params(load_param, plan.abstract_state)
  return nnx.merge(plan.graphdef, state)


def _dtype_name(dtype) -> str | None:
  return None if dtype is None else jnp.dtype(dtype).name


def from_pretrained(
    path,
    dtype=None,
    *,
    param_dtype=None,
    mesh: Mesh | None = None,
    rules=None,
    runtime: Runtime | None = None,
    attention: str | None = None,
    vision_attention: str | None = None,
    progress: bool = True,
) -> VidLaDA:
  """Loads a checkpoint directory: the reference's PyTorch format or a vidlada-jax checkpoint.

  PyTorch formats (SPEC 2.3): a LLaDA-V / VidLaDA checkpoint (combined, or its language model
  alone), the original LLaDA-8B checkpoint, or a standalone SigLIP vision tower (prefix
  `model.vision_tower.vision_tower.vision_model.`, `vision_model.` or none), as `config.json` plus
  `model.safetensors` or shards with `model.safetensors.index.json`. A vidlada-jax checkpoint
  (written by `vidlada_jax.convert.hf_to_jax`) is restored with orbax straight into the shardings.

  Args:
    path: the checkpoint directory.
    dtype: computation dtype; defaults to `runtime`'s, else the checkpoint's dtype.
    param_dtype: parameter dtype; defaults to `runtime`'s, else `dtype`.
    mesh, rules: place every parameter directly in its sharding on `mesh` under the logical-axis
      `rules` (see `vidlada_jax.sharding.RULE_SETS` and `sharding.mesh_from_spec`).
    runtime: how the model runs (`vidlada_jax.config.Runtime`: dtypes, attention backends,
      rematerialisation); the arguments above and below override its fields.
    attention, vision_attention: attention backends of the language model and of the vision
      tower (default "auto": chosen from the platform; see vidlada_jax.nn.attention).
    progress: show a progress bar.
  """
  directory = Path(path)
  if (mesh is None) != (rules is None):
    raise ValueError('pass both mesh and rules (see sharding.mesh_from_spec), or neither')

  def resolve(stored_dtype: str) -> Runtime:
    chosen = dict(dtype=_dtype_name(dtype), param_dtype=_dtype_name(param_dtype),
                  attention=attention, vision_attention=vision_attention)
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if runtime is None:
      base = Runtime(dtype=chosen.get('dtype', stored_dtype))
      base = dataclasses.replace(base, param_dtype=base.dtype)
    else:
      base = runtime
    return dataclasses.replace(base, **chosen)

  if jax_checkpoint.is_checkpoint(directory):
    stored = jax_checkpoint.read_manifest(directory).stored_dtype
    return jax_checkpoint.load(directory, runtime=resolve(stored), mesh=mesh, rules=rules)
  raw = read_hf_config(directory)
  layout, config, facts = hf_config.parse(raw)
  stored = raw.get('torch_dtype') or raw.get('dtype') or 'float32'
  config = dataclasses.replace(config, runtime=resolve(stored))
  return load_safetensors(
      directory, config, layout, mesh=mesh, rules=rules,
      text_tower=facts.get('text_tower', False), progress=progress)


def init_model(config: ModelConfig, seed: int = 0, *, mesh: Mesh | None = None,
               rules=None) -> VidLaDA:
  """A randomly initialised model, created directly in its shardings when `mesh` is given."""
  make = lambda: VidLaDA(config, rngs=nnx.Rngs(seed))
  if mesh is None:
    return nnx.jit(make)()
  return sharding_lib.create_sharded(make, mesh, rules)
