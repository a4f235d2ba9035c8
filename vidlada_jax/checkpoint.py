"""vidlada-jax checkpoint directories: orbax-stored parameters plus what a round trip needs.

    DIR/vidlada_config.json   format version, the ModelConfig, each parameter's stored dtype, and
                              where the weights came from (layout, name prefix, the original
                              config.json, the names of tensors the model does not use)
    DIR/params/               orbax pytree of the model parameters ('lm/norm/weight'); a parameter
                              stacked over layers is stored one array per layer
                              ('lm/layers/mlp/up_proj/kernel/0', '.../1', ...), so converters
                              write and read one layer's tensor at a time
    DIR/passthrough/          orbax pytree of the source tensors the model ignores (the 27th
                              vision layer, the pooling head, a text tower), kept so that an
                              export reproduces the source checkpoint tensor for tensor
    DIR/tokenizer.json, ...   tokenizer files copied from the source, when it had them

Directories are written under a temporary name beside the destination and renamed into place
only when complete, so a failed run never leaves something that looks like a checkpoint, and an
existing checkpoint is replaced only on request and only after its replacement is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
from vidlada_jax.config import ModelConfig
from vidlada_jax.hf.safetensors_io import CheckpointError
from vidlada_jax.params import abstract_model, flat_params, map_params
from vidlada_jax.vidlada import VidLaDA

FORMAT = 'vidlada-jax'
FORMAT_VERSION = 1
MANIFEST = 'vidlada_config.json'
PARAMS = 'params'
PASSTHROUGH = 'passthrough'
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

  def to_json(self) -> str:
    return json.dumps(dict(
        format=FORMAT, format_version=FORMAT_VERSION, model=self.model.to_dict(),
        param_dtypes=self.param_dtypes,
        source=dataclasses.asdict(self.source) if self.source else None), indent=2)

  @classmethod
  def from_json(cls, text: str, where: Path) -> 'Manifest':
    data = json.loads(text)
    if data.get('format') != FORMAT:
      raise CheckpointError(f'{where} is not a {FORMAT} checkpoint manifest')
    if data.get('format_version', 0) > FORMAT_VERSION:
      raise CheckpointError(
          f'{where} has format version {data["format_version"]}; this vidlada-jax reads up to '
          f'{FORMAT_VERSION}: upgrade vidlada-jax')
    source = Source(**data['source']) if data.get('source') else None
    return cls(ModelConfig.from_dict(data['model']), dict(data['param_dtypes']), source)


def is_checkpoint(path) -> bool:
  return (Path(path) / MANIFEST).is_file()


def read_manifest(path) -> Manifest:
  path = Path(path)
  if not is_checkpoint(path):
    raise CheckpointError(f'{path} is not a {FORMAT} checkpoint (no {MANIFEST})')
  return Manifest.from_json((path / MANIFEST).read_text(), path / MANIFEST)


def _is_primary() -> bool:
  return jax.process_index() == 0


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def staged_output(destination, overwrite: bool = False) -> Iterator[Path]:
  """Yields a fresh temporary directory beside `destination`; on success it becomes
  `destination`. Refuses a non-empty destination unless `overwrite`; a failure leaves the
  destination exactly as it was. Every process of a multi-host job calls this together."""
  destination = Path(destination).absolute()
  if destination.exists() and not destination.is_dir():
    raise FileExistsError(f'{destination} exists and is not a directory')
  if destination.is_dir() and any(destination.iterdir()) and not overwrite:
    raise FileExistsError(f'{destination} exists and is not empty; pass --overwrite to replace it')
  staging = destination.parent / f'.{destination.name}.incomplete'
  if _is_primary():
    if staging.exists():
      shutil.rmtree(staging)  # left by an interrupted run; the name is reserved for us
    staging.mkdir(parents=True)
  _barrier('vidlada_staging_created')
  try:
    yield staging
  except BaseException:
    if _is_primary():
      shutil.rmtree(staging, ignore_errors=True)
    raise
  _barrier('vidlada_staging_complete')
  if _is_primary():
    if destination.exists():
      retired = destination.parent / f'.{destination.name}.replaced'
      if retired.exists():
        shutil.rmtree(retired)
      destination.rename(retired)
      staging.rename(destination)
      shutil.rmtree(retired)
    else:
      staging.rename(destination)
  _barrier('vidlada_staging_renamed')


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
  kept = orbax_io.array_metadata(Path(path) / PASSTHROUGH)
  return [PassthroughTensor(passthrough_key(i), name, *kept[passthrough_key(i)])
          for i, name in enumerate(source.passthrough)]


def layer_key(param: str, layer: int) -> str:
  """Where layer `layer` of a stacked parameter is stored."""
  return f'{param}/{layer}'


@dataclasses.dataclass(frozen=True)
class StoredParam:
  shape: tuple[int, ...]  # the parameter's full shape ([layers, ...] when stacked)
  dtype: np.dtype
  layers: int | None  # stored as this many per-layer arrays, or None: one array


def stored_params(params_dir) -> dict[str, StoredParam]:
  """Every parameter stored in `params_dir`, per-layer arrays gathered back into one entry."""
  single: dict[str, StoredParam] = {}
  per_layer: dict[str, dict[int, tuple]] = {}
  for key, (shape, dtype) in orbax_io.array_metadata(params_dir).items():
    param, _, last = key.rpartition('/')
    if last.isdigit():
      per_layer.setdefault(param, {})[int(last)] = (shape, dtype)
    else:
      single[key] = StoredParam(shape, dtype, None)
  for param, layers in per_layer.items():
    if sorted(layers) != list(range(len(layers))) or len(set(layers.values())) != 1:
      raise CheckpointError(f'{params_dir}: the layers of {param} are incomplete or disagree in '
                            f'shape/dtype: {sorted(layers)}')
    shape, dtype = layers[0]
    single[param] = StoredParam((len(layers),) + tuple(shape), dtype, len(layers))
  return single


def without_layer_axis(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  """The sharding of one layer of a parameter stacked with `sharding`."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
  return sharding


def read_param(params_dir, param: str, stored: StoredParam, dtype, sharding) -> jax.Array:
  """One parameter restored into `sharding` and `dtype` (each process reads only its chunks)."""
  if stored.layers is None:
    target = jax.ShapeDtypeStruct(stored.shape, dtype, sharding=sharding)
    return orbax_io.load(params_dir, {param: target})[param]
  layer = jax.ShapeDtypeStruct(stored.shape[1:], dtype, sharding=without_layer_axis(sharding))
  keys = [layer_key(param, i) for i in range(stored.layers)]
  pieces = orbax_io.load(params_dir, {key: layer for key in keys})
  return jax.jit(jnp.stack, out_shardings=sharding)([pieces[key] for key in keys])


def save(model: VidLaDA, path, *, overwrite: bool = False, tokenizer=None) -> Path:
  """Writes `model` as a vidlada-jax checkpoint (sharded arrays are written shard by shard, each
  process its own), with `tokenizer` (a `tokenizers.Tokenizer`) as tokenizer.json."""
  variables = flat_params(nnx.state(model))
  manifest = Manifest(model=model.config, param_dtypes={
      p: str(np.dtype(v.get_value().dtype)) for p, v in variables.items()})
  with staged_output(path, overwrite) as staging:
    writer = orbax_io.IncrementalSave(staging / PARAMS)
    for name, variable in variables.items():
      array = variable.get_value()
      if sharding_lib.logical_axes(variable)[:1] == ('layers',):
        for i in range(array.shape[0]):
          writer.add({layer_key(name, i): array[i]})
      else:
        writer.add({name: array})
    writer.finalize()
    if _is_primary():
      (staging / MANIFEST).write_text(manifest.to_json())
    if tokenizer is not None and _is_primary():
      tokenizer.save(str(staging / 'tokenizer.json'))
  return Path(path)


def load(
    path,
    *,
    dtype: str | None = None,
    param_dtype: str | None = None,
    mesh: Mesh | None = None,
    rules=None,
    attention: str | None = None,
    vision_attention: str | None = None,
) -> VidLaDA:
  """A model from a vidlada-jax checkpoint, restored straight into its shardings: each process
  reads only the chunks of the arrays its devices hold."""
  path = Path(path)
  manifest = read_manifest(path)
  stored_dtypes = set(manifest.param_dtypes.values())
  default = manifest.model.param_dtype if len(stored_dtypes) != 1 else stored_dtypes.pop()
  dtype = dtype or default
  config = manifest.model.replace(
      dtype=dtype, param_dtype=param_dtype or dtype,
      attention=attention or manifest.model.attention,
      vision_attention=vision_attention or manifest.model.vision_attention)
  graphdef, abstract_state = abstract_model(config)
  params = flat_params(abstract_state)
  stored = stored_params(path / PARAMS)
  missing = sorted(set(params) - set(stored))
  unexpected = sorted(set(stored) - set(params))
  mismatched = [f'{p}: stored {list(stored[p].shape)}, model needs {list(params[p].shape)}'
                for p in sorted(set(params) & set(stored)) if stored[p].shape != params[p].shape]
  if missing or unexpected or mismatched:
    raise CheckpointError(
        f'{path / PARAMS} does not match its manifest: missing {missing}, unexpected '
        f'{unexpected}, shape mismatches {mismatched}')
  shardings = sharding_lib.target_shardings(abstract_state, mesh, rules)
  state = map_params(
      lambda p, v: v.replace(read_param(path / PARAMS, p, stored[p], v.dtype, shardings[p])),
      abstract_state)
  return nnx.merge(graphdef, state)


def load_host_array(path, name: str, shape, dtype) -> np.ndarray:
  """One stored array (a parameter or a passthrough tensor) as a host numpy array of `dtype`."""
  return orbax_io.load(path, {name: np.empty(shape, dtype)})[name]
