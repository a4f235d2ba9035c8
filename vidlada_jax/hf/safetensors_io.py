"""Reading a checkpoint directory's safetensors, one tensor at a time.

A directory holds `model.safetensors`, or shards listed by `model.safetensors.index.json`. Headers
are read up front (names, shapes, dtypes: no tensor data), so a checkpoint is validated before the
first byte of weights is loaded; a truncated or corrupt file is reported by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np
from safetensors import safe_open

INDEX_FILE = 'model.safetensors.index.json'
SINGLE_FILE = 'model.safetensors'

_FLOAT_DTYPES = ('F64', 'F32', 'F16', 'BF16')


class CheckpointError(ValueError):
  """A checkpoint directory is missing, incomplete, corrupt, or does not match the model."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: Path
  shape: tuple[int, ...]
  dtype: str  # safetensors dtype name: BF16, F32, ...


class SafetensorsCheckpoint:
  """The tensors of one checkpoint directory: `names`, `info(name)`, `read(name)`."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = Path(directory)
    if not self.directory.is_dir():
      raise CheckpointError(f'checkpoint directory {self.directory} does not exist')
    files = self._files()
    self._tensors: dict[str, TensorInfo] = {}
    self._handles = {}
    for path in files:
      try:
        handle = safe_open(str(path), framework='flax')
      except Exception as e:  # the Rust reader raises its own error type
        raise CheckpointError(f'cannot read {path} (truncated or corrupt?): {e}') from e
      self._handles[path] = handle
      for name in handle.keys():
        if name in self._tensors:
          raise CheckpointError(f'tensor {name} appears in both {self._tensors[name].file.name} '
                                f'and {path.name}')
        piece = handle.get_slice(name)
        self._tensors[name] = TensorInfo(path, tuple(piece.get_shape()), piece.get_dtype())
    self._check_index()

  def _files(self) -> list[Path]:
    index = self.directory / INDEX_FILE
    if index.exists():
      weight_map = json.loads(index.read_text())['weight_map']
      self._weight_map = weight_map
      files = sorted({self.directory / f for f in weight_map.values()})
      missing = [f.name for f in files if not f.exists()]
      if missing:
        raise CheckpointError(f'{INDEX_FILE} in {self.directory} lists missing shard(s) {missing}')
      return files
    self._weight_map = None
    single = self.directory / SINGLE_FILE
    if single.exists():
      return [single]
    raise CheckpointError(
        f'{self.directory} holds neither {SINGLE_FILE} nor {INDEX_FILE}')

  def _check_index(self) -> None:
    if self._weight_map is None:
      return
    for name, file in self._weight_map.items():
      info = self._tensors.get(name)
      if info is None or info.file.name != file:
        raise CheckpointError(f'{INDEX_FILE} places tensor {name} in {file}, which does not hold it')
    unlisted = sorted(set(self._tensors) - set(self._weight_map))
    if unlisted:
      raise CheckpointError(f'tensors {unlisted[:5]} are stored but not listed in {INDEX_FILE}')

  @property
  def names(self) -> list[str]:
    return list(self._tensors)

  def info(self, name: str) -> TensorInfo:
    return self._tensors[name]

  def nbytes(self, name: str) -> int:
    info = self._tensors[name]
    return int(np.prod(info.shape)) * _ITEMSIZE[info.dtype]

  def read(self, name: str) -> np.ndarray:
    """One tensor as a host numpy array (bfloat16 via ml_dtypes), in its stored dtype."""
    info = self._tensors[name]
    if info.dtype not in _FLOAT_DTYPES:
      raise CheckpointError(f'tensor {name} has dtype {info.dtype}; expected a float tensor')
    # The flax reader understands bfloat16; keep the array on the host CPU device.
    with jax.default_device(jax.devices('cpu')[0]):
      array = self._handles[info.file].get_tensor(name)
    return np.asarray(array)

  def close(self) -> None:
    self._handles.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


_ITEMSIZE = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2, 'I8': 1,
             'U8': 1, 'BOOL': 1}
