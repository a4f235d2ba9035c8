"""vidlada-jax checkpoints: one format for converted weights, saved models and training steps.

A checkpoint is an orbax checkpoint directory:

    custom metadata 'vidlada'   the manifest: format version, the architecture (`ModelConfig`
                                without its run-time choices), each parameter's stored dtype, and
                                for converted weights where they came from (layout, name prefix,
                                the original config.json, the names of tensors the model ignores)
    state/params/...            the model parameters ('lm/norm/weight'). A parameter stacked over
                                layers is stored whole ('lm/layers/mlp/up_proj/kernel', as the
                                trainer saves it) or one array per layer ('.../kernel/0', '.../1',
                                as converters stream it); readers accept both
    state/passthrough/...       source tensors the model ignores (the 27th vision layer, the
                                pooling head, a text tower), so that an export reproduces the
                                source checkpoint tensor for tensor
    train_state/, data_iterator/   optimizer state, step, RNG and input-pipeline position, in
                                checkpoints a training run writes (`vidlada_jax.training`)
    tokenizer.json, ...         tokenizer files copied from the source, when it had them

`ModelWriter` writes the model part a few arrays at a time (`save` and the converters), and
`checkpointables` gives the same layout to the trainer's asynchronous `training.Checkpointer`.
A training run's work directory holds its steps under `checkpoints/<step>/`; `resolve` turns a
work directory into its latest step, so `vj.from_pretrained(WORKDIR)` loads it.

Directories are written under a temporary name beside the destination and renamed into place
only when complete, so a failed run never leaves something that looks like a checkpoint, and an
existing checkpoint is replaced only on request and only after its replacement is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vidlada_jax import orbax_io
from vidlada_jax import sharding as sharding_lib
from vidlada_jax.config import ModelConfig, Runtime
from vidlada_jax.hf import layouts
from vidlada_jax.hf.safetensors_io import CheckpointError, aligned_empty
from vidlada_jax.params import abstract_model, flat_params, map_params
from vidlada_jax.vidlada import VidLaDA

FORMAT = 'vidlada-jax'
FORMAT_VERSION = 2
MANIFEST_KEY = 'vidlada'  # in the checkpoint's custom metadata
PARAMS = 'params'  # subtree of the `state` pytree
PASSTHROUGH = 'passthrough'
TRAINING_STEPS = 'checkpoints'  # a training work directory's steps
_FORMAT_1_MANIFEST = 'vidlada_config.json'
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'generation_config.json', 'chat_template.jinja', 'chat_template.json')


@dataclasses.dataclass
class Source:
  """Where converted weights came from, so that an export can reproduce the original."""

  layout: str
  vision_prefix: str
  config: dict[str, Any]  # the original config.json
  passthrough: list[str]  # names of the unused tensors kept in passthrough/, in order


@dataclasses.dataclass
class Manifest:
  model: ModelConfig
  param_dtypes: dict[str, str]
  source: Source | None = None

  @property
  def stored_dtype(self) -> str:
    """The parameters' dtype when they all share one, else float32."""
    names = set(self.param_dtypes.values())
    return names.pop() if len(names) == 1 else 'float32'

  def to_dict(self) -> dict[str, Any]:
    return dict(
        format=FORMAT, format_version=FORMAT_VERSION, model=self.model.to_dict(),
        param_dtypes=self.param_dtypes,
        source=dataclasses.asdict(self.source) if self.source else None)

  @classmethod
  def from_dict(cls, data: dict[str, Any], where: Path) -> 'Manifest':
    if data.get('format') != FORMAT:
      raise CheckpointError(f'{where} is not a {FORMAT} checkpoint manifest')
    if data.get('format_version', 0) > FORMAT_VERSION:
      raise CheckpointError(
          f'{where} has format version {data["format_version"]}; this vidlada-jax reads up to '
          f'{FORMAT_VERSION}: upgrade vidlada-jax')
    source = Source(**data['source']) if data.get('source') else None
    return cls(ModelConfig.from_dict(data['model']), dict(data['param_dtypes']), source)


def manifest_metadata(manifest: Manifest) -> dict[str, Any]:
  """The custom metadata a checkpoint with `manifest` is saved with."""
  return {MANIFEST_KEY: manifest.to_dict()}


def _step_dirs(workdir: Path) -> list[tuple[int, Path]]:
  steps = workdir / TRAINING_STEPS
  if not steps.is_dir():
    return []
  return sorted((int(p.name), p) for p in steps.iterdir()
                if p.name.isdigit() and (p / '_CHECKPOINT_METADATA').is_file())


def resolve(path) -> Path:
  """`path` itself, or for a training run's work directory its latest checkpoint."""
  path = Path(path)
  if (path / TRAINING_STEPS).is_dir() and not (path / '_CHECKPOINT_METADATA').is_file():
    steps = _step_dirs(path)
    if not steps:
      raise CheckpointError(f'{path} is a training work directory without a finished checkpoint')
    return steps[-1][1]
  return path


def is_checkpoint(path) -> bool:
  path = resolve(path) if (Path(path) / TRAINING_STEPS).is_dir() else Path(path)
  if (path / _FORMAT_1_MANIFEST).is_file():
    return True  # an older vidlada-jax checkpoint: read_manifest says what to do
  # Orbax also recognises safetensors directories; a vidlada-jax checkpoint is an orbax-layout one.
  return ((path / '_CHECKPOINT_METADATA').is_file()
          and MANIFEST_KEY in orbax_io.custom_metadata(path))


def read_manifest(path) -> Manifest:
  path = resolve(path)
  if (path / _FORMAT_1_MANIFEST).is_file():
    raise CheckpointError(
        f'{path} is a vidlada-jax checkpoint of format version 1, which this version no longer '
        'reads: convert the original PyTorch checkpoint again with vidlada_jax.convert.hf_to_jax')
  if not (path / '_CHECKPOINT_METADATA').is_file():
    raise CheckpointError(f'{path} is not a {FORMAT} checkpoint (not an orbax checkpoint)')
  data = orbax_io.custom_metadata(path).get(MANIFEST_KEY)
  if data is None:
    raise CheckpointError(f'{path} is an orbax checkpoint without a {FORMAT} manifest')
  return Manifest.from_dict(data, path)


def _is_primary() -> bool:
  return jax.process_index() == 0


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def staged_output(destination, overwrite: bool = False, *, create: bool = True) -> Iterator[Path]:
  """Yields a fresh temporary path beside `destination`; on success it becomes `destination`.

  Refuses a non-empty destination unless `overwrite`; a failure leaves the destination exactly
  as it was. With `create=False` the path is left for the caller to create (orbax creates its
  checkpoints itself, through temporaries of its own beside the path, which a failure removes
  too). Every process of a multi-host job calls this together.
  """
  destination = Path(destination).absolute()
  if destination.exists() and not destination.is_dir():
    raise FileExistsError(f'{destination} exists and is not a directory')
  if destination.is_dir() and any(destination.iterdir()) and not overwrite:
    raise FileExistsError(f'{destination} exists and is not empty; pass --overwrite to replace it')
  # Not a hidden name: orbax does not finalize checkpoints whose names start with a dot.
  staging = destination.parent / f'{destination.name}.incomplete'

  def remove_staging():
    # The name is reserved for us: anything under it was left by this or an interrupted run.
    for leftover in staging.parent.glob(staging.name + '*'):
      shutil.rmtree(leftover, ignore_errors=True)

  if _is_primary():
    remove_staging()
    staging.parent.mkdir(parents=True, exist_ok=True)
    if create:
      staging.mkdir()
  _barrier('vidlada_staging_created')
  try:
    yield staging
  except BaseException:
    if _is_primary():
      remove_staging()
    raise
  _barrier('vidlada_staging_complete')
  if _is_primary():
    # On disk before the rename publishes them: after a crash the destination is either the
    # old one or complete, never a complete-looking directory of truncated files.
    _sync_tree(staging)
    if destination.exists():
      retired = destination.parent / f'.{destination.name}.replaced'
      if retired.exists():
        shutil.rmtree(retired)
      destination.rename(retired)
      staging.rename(destination)
      shutil.rmtree(retired)
    else:
      staging.rename(destination)
    _fsync(destination.parent)  # the rename itself
  _barrier('vidlada_staging_renamed')


def _fsync(path: Path) -> None:
  descriptor = os.open(path, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def _sync_tree(root: Path) -> None:
  """fsyncs every file and directory under `root`, then `root`."""
  for path in sorted(root.rglob('*'), reverse=True):  # children before their directories
    if path.is_file() or path.is_dir():
      _fsync(path)
  _fsync(root)


def copy_tokenizer_files(source: Path, destination: Path) -> list[str]:
  copied = []
  if _is_primary():
    for name in TOKENIZER_FILES:
      if (Path(source) / name).is_file():
        shutil.copy2(Path(source) / name, Path(destination) / name)
        copied.append(name)
  return copied


def passthrough_key(index: int) -> str:
  """Where the `index`-th unused source tensor is stored in passthrough/."""
  return f'{index:05d}'


@dataclasses.dataclass(frozen=True)
class PassthroughTensor:
  key: str  # in passthrough/
  name: str  # in the source checkpoint
  shape: tuple[int, ...]
  dtype: np.dtype


def stored_passthrough(path) -> list[PassthroughTensor]:
  """The unused source tensors a checkpoint carries, in the source's order."""
  source = read_manifest(path).source
  if not source or not source.passthrough:
    return []
  kept = _stored_arrays(path, PASSTHROUGH)
  return [PassthroughTensor(f'{PASSTHROUGH}/{passthrough_key(i)}', name,
                            *kept[passthrough_key(i)])
          for i, name in enumerate(source.passthrough)]


def _stored_arrays(path, subtree: str) -> dict[str, tuple]:
  prefix = subtree + '/'
  return {key[len(prefix):]: value for key, value in orbax_io.array_metadata(path).items()
          if key.startswith(prefix)}


def layer_key(param: str, layer: int) -> str:
  """Where layer `layer` of a stacked parameter is stored."""
  return f'{param}/{layer}'


@dataclasses.dataclass(frozen=True)
class StoredParam:
  shape: tuple[int, ...]  # the parameter's full shape ([layers, ...] when stacked)
  dtype: np.dtype
  layers: int | None  # stored as this many per-layer arrays, or None: one array


def stored_params(path) -> dict[str, StoredParam]:
  """Every parameter stored in checkpoint `path`, per-layer arrays gathered back into one entry."""
  single: dict[str, StoredParam] = {}
  per_layer: dict[str, dict[int, tuple]] = {}
  for key, (shape, dtype) in _stored_arrays(path, PARAMS).items():
    param, _, last = key.rpartition('/')
    if last.isdigit():
      per_layer.setdefault(param, {})[int(last)] = (shape, dtype)
    else:
      single[key] = StoredParam(shape, dtype, None)
  for param, layers in per_layer.items():
    if sorted(layers) != list(range(len(layers))) or len(set(layers.values())) != 1:
      raise CheckpointError(f'{path}: the layers of {param} are incomplete or disagree in '
                            f'shape/dtype: {sorted(layers)}')
    shape, dtype = layers[0]
    single[param] = StoredParam((len(layers),) + tuple(shape), dtype, len(layers))
  return single


def without_layer_axis(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  """The sharding of one layer of a parameter stacked with `sharding`."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
  return sharding


def param_key(param: str) -> str:
  """Where parameter (or stored layer) `param` lies in the checkpoint's pytree."""
  return f'{PARAMS}/{param}'


# Arrays restored per orbax call (layers of a stacked parameter; on the host path, any arrays):
# memory holds the parameters plus this much. Restoring all the layers of a parameter before
# stacking them held it twice: an 8B model's MLP weights are 3.7 GB each, and loading a converted
# 8B checkpoint ran out of 24 GB.
LAYER_GROUP_BYTES = 512 << 20


def read_params(path, stored: dict[str, StoredParam], dtypes: dict[str, Any],
                shardings: dict[str, jax.sharding.Sharding]) -> dict[str, jax.Array]:
  """The parameters named in `stored`, each restored into its sharding and dtype (each process
  reads only its chunks).

  Largest first: restoring a parameter briefly holds it twice (orbax's buffer, then the
  device's), and that costs least while little else is held (an 8B output projection is 1 GB;
  in file order a one-layer checkpoint peaked at 1.38x its size, largest first at 1.15x).
  """
  order = sorted(stored, key=lambda p: -math.prod(stored[p].shape) * np.dtype(dtypes[p]).itemsize)
  on_host = [p for p in order if _adopted_from_host(shardings[p])]
  restored = _read_params_on_host(path, {p: stored[p] for p in on_host}, dtypes, shardings)
  for param in order:
    if param not in restored:
      restored[param] = read_param(path, param, stored[param], dtypes[param], shardings[param])
  return restored


def read_param(path, param: str, stored: StoredParam, dtype, sharding) -> jax.Array:
  """One parameter restored into `sharding` and `dtype` (each process reads only its chunks)."""
  if stored.layers is None:
    target = jax.ShapeDtypeStruct(stored.shape, dtype, sharding=sharding)
    return orbax_io.load(path, {param_key(param): target})[param_key(param)]
  layer = jax.ShapeDtypeStruct(stored.shape[1:], dtype, sharding=without_layer_axis(sharding))
  per_group = max(1, LAYER_GROUP_BYTES // (math.prod(layer.shape) * np.dtype(dtype).itemsize))
  stacked = jax.jit(lambda: jnp.zeros(stored.shape, dtype), out_shardings=sharding)()
  # Donated, so each group of layers is written into the stacked buffer in place.
  put = jax.jit(lambda whole, index, value: jax.lax.dynamic_update_index_in_dim(
      whole, value, index, 0), donate_argnums=0, out_shardings=sharding)
  for first in range(0, stored.layers, per_group):
    keys = [param_key(layer_key(param, i))
            for i in range(first, min(first + per_group, stored.layers))]
    pieces = orbax_io.load(path, {key: layer for key in keys})
    for i, key in enumerate(keys, start=first):
      stacked = put(stacked, i, pieces.pop(key))
  return stacked


def _adopted_from_host(sharding) -> bool:
  """Whether `sharding` is one host-platform device, which adopts an aligned host buffer as it
  is (XLA's own copy of a restored array would be one more pass over fresh memory)."""
  return (isinstance(sharding, jax.sharding.SingleDeviceSharding)
          and next(iter(sharding.device_set)).platform == 'cpu')


def _read_params_on_host(path, stored: dict[str, StoredParam], dtypes,
                         shardings) -> dict[str, jax.Array]:
  """`read_params` for host-platform devices: every stored array is restored on the host and
  copied into its slot of its parameter's buffer, which the device then adopts. The arrays are
  restored about `LAYER_GROUP_BYTES` per orbax call, since each call has a fixed cost (a
  one-layer checkpoint has 38 parameters)."""
  buffers = {p: aligned_empty(stored[p].shape, dtypes[p]) for p in stored}
  slots = {}  # stored key -> the part of a buffer it fills, largest parameter first
  for param, info in stored.items():
    if info.layers is None:
      slots[param_key(param)] = buffers[param]
    else:
      slots.update({param_key(layer_key(param, i)): buffers[param][i] for i in range(info.layers)})
  abstract = {key: np.empty(slot.shape, slot.dtype) for key, slot in slots.items()}
  for key, value in orbax_io.load_in_batches(path, abstract, LAYER_GROUP_BYTES):
    layouts.copy_into(slots[key], value)
  return {p: jax.device_put(buffers.pop(p), shardings[p]) for p in stored}


class ModelWriter:
  """Writes the model part of a checkpoint at `directory` a few arrays at a time (each process
  its own shards), with `manifest` as its metadata; nothing exists there until `finalize`."""

  def __init__(self, directory, manifest: Manifest):
    self._save = orbax_io.IncrementalSave(directory, custom_metadata=manifest_metadata(manifest))

  def add_param(self, param: str, array) -> None:
    self._save.add({param_key(param): array})

  def add_layer(self, param: str, layer: int, array) -> None:
    """Layer `layer` of a parameter stacked over layers."""
    self._save.add({param_key(layer_key(param, layer)): array})

  def add_passthrough(self, index: int, array) -> None:
    self._save.add({f'{PASSTHROUGH}/{passthrough_key(index)}': array})

  def finalize(self) -> None:
    self._save.finalize()


def checkpointables(params: dict[str, jax.Array],
                    config: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
  """(checkpointables, custom metadata) of a model's parameters ({path: array}) in the
  checkpoint layout, for orbax's `training.Checkpointer.save_checkpointables_async` (parameters
  stacked over layers are saved whole)."""
  manifest = Manifest(model=config, param_dtypes={
      p: str(np.dtype(v.dtype)) for p, v in params.items()})
  return {'state': {PARAMS: orbax_io.nest(dict(params))}}, manifest_metadata(manifest)


def save(model: VidLaDA, path, *, overwrite: bool = False, tokenizer=None) -> Path:
  """Writes `model` as a vidlada-jax checkpoint (sharded arrays are written shard by shard, each
  process its own), with `tokenizer` (a `tokenizers.Tokenizer`) as tokenizer.json."""
  variables = flat_params(nnx.state(model, nnx.Param))
  manifest = Manifest(model=model.config, param_dtypes={
      p: str(np.dtype(v.get_value().dtype)) for p, v in variables.items()})
  with staged_output(path, overwrite, create=False) as staging:
    writer = ModelWriter(staging, manifest)
    for name, variable in variables.items():
      array = variable.get_value()
      if sharding_lib.logical_axes(variable)[:1] == ('layers',):
        for i in range(array.shape[0]):  # one layer per array, so exports stream layer by layer
          writer.add_layer(name, i, array[i])
      else:
        writer.add_param(name, array)
    writer.finalize()
    if tokenizer is not None and _is_primary():
      tokenizer.save(str(staging / 'tokenizer.json'))
  return Path(path)


def load(path, *, runtime: Runtime | None = None, mesh: Mesh | None = None,
         rules=None) -> VidLaDA:
  """A model from a vidlada-jax checkpoint, restored straight into its shardings: each process
  reads only the chunks of the arrays its devices hold. `runtime` defaults to the stored dtype."""
  path = resolve(path)
  manifest = read_manifest(path)
  if runtime is None:
    runtime = Runtime(dtype=manifest.stored_dtype, param_dtype=manifest.stored_dtype)
  config = dataclasses.replace(manifest.model, runtime=runtime)
  graphdef, abstract_state = abstract_model(config)
  params = flat_params(abstract_state)
  stored = stored_params(path)
  missing = sorted(set(params) - set(stored))
  unexpected = sorted(set(stored) - set(params))
  mismatched = [f'{p}: stored {list(stored[p].shape)}, model needs {list(params[p].shape)}'
                for p in sorted(set(params) & set(stored)) if stored[p].shape != params[p].shape]
  if missing or unexpected or mismatched:
    raise CheckpointError(
        f'{path} does not match its manifest: missing {missing}, unexpected '
        f'{unexpected}, shape mismatches {mismatched}')
  shardings = sharding_lib.target_shardings(abstract_state, mesh, rules)
  restored = read_params(path, {p: stored[p] for p in params},
                         {p: v.dtype for p, v in params.items()}, shardings)
  state = map_params(lambda p, v: v.replace(restored.pop(p)), abstract_state)
  return nnx.merge(graphdef, state)


def load_host_array(path, name: str, shape, dtype) -> np.ndarray:
  """One stored array (a parameter or a passthrough tensor) as a host numpy array of `dtype`."""
  return orbax_io.load(path, {name: np.empty(shape, dtype)})[name]
