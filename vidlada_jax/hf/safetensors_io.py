"""Reading a checkpoint directory's safetensors, one tensor at a time.

A directory holds `model.safetensors`, or shards listed by `model.safetensors.index.json`. Headers
are read up front (names, shapes, dtypes: no tensor data), so a checkpoint is validated before the
first byte of weights is loaded; a truncated or corrupt file is reported by name.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

INDEX_FILE = 'model.safetensors.index.json'
SINGLE_FILE = 'model.safetensors'

FLOAT_DTYPES = ('F64', 'F32', 'F16', 'BF16')


class CheckpointError(ValueError):
  """A checkpoint directory is missing, incomplete, corrupt, or does not match the model."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: Path
  shape: tuple[int, ...]
  dtype: str  # safetensors dtype name: BF16, F32, ...
  offset: int  # where its bytes start in `file`


# XLA:CPU adopts a host buffer without copying only when it is this aligned (and `device_put`
# then costs nothing); a page also keeps direct reads off the allocator's header.
ALIGNMENT = 4096
_HUGE_PAGE = 2 << 20


def aligned_empty(shape, dtype) -> np.ndarray:
  """An uninitialised C-contiguous array whose data start on an `ALIGNMENT` boundary.

  A large one is its own anonymous mapping backed by transparent huge pages where the kernel
  offers them: the first write to fresh memory then faults once per 2 MB instead of once per
  4 KB page, which on some hosts makes filling it several times faster (a loader fills
  checkpoint-sized memory once, so this is most of its cost after the reads themselves).
  """
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if nbytes >= _HUGE_PAGE:
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, 'MADV_HUGEPAGE'):
      mapping.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(mapping, dtype).reshape(shape)  # the array keeps the mapping alive
  raw = np.empty(nbytes + ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % ALIGNMENT
  return raw[start:start + nbytes].view(dtype).reshape(shape)


class Scratch:
  """One reused aligned buffer, viewed as whatever array a step needs: it grows to the largest
  request and is never freshly allocated (and faulted in) again for smaller ones."""

  def __init__(self):
    self._buffer = np.empty(0, np.uint8)

  def array(self, shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous view; valid until the next call."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if self._buffer.size < nbytes:
      self._buffer = aligned_empty((nbytes,), np.uint8)
    return self._buffer[:nbytes].view(dtype).reshape(shape)


def data_offsets(path: Path) -> dict[str, int]:
  """Each tensor's absolute byte offset in a safetensors file (8-byte header length, the JSON
  header, then the data; the header was already validated by `safe_open`)."""
  with open(path, 'rb') as handle:
    length = int.from_bytes(handle.read(8), 'little')
    header = json.loads(handle.read(length))
  return {name: 8 + length + info['data_offsets'][0] for name, info in header.items()
          if name != '__metadata__'}


class SafetensorsCheckpoint:
  """The tensors of one checkpoint directory: `names`, `info(name)`, `read(name)`."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = Path(directory)
    if not self.directory.is_dir():
      raise CheckpointError(f'checkpoint directory {self.directory} does not exist')
    files = self._files()
    self._tensors: dict[str, TensorInfo] = {}
    self._descriptors: dict[Path, int] = {}
    for path in files:
      try:
        # Validates the header and the file's length; the data are read with `os.preadv`.
        handle = safe_open(str(path), framework='numpy')
      except Exception as e:  # the Rust reader raises its own error type
        raise CheckpointError(f'cannot read {path} (truncated or corrupt?): {e}') from e
      offsets = data_offsets(path)
      for name in handle.keys():
        if name in self._tensors:
          raise CheckpointError(f'tensor {name} appears in both {self._tensors[name].file.name} '
                                f'and {path.name}')
        piece = handle.get_slice(name)
        self._tensors[name] = TensorInfo(path, tuple(piece.get_shape()), piece.get_dtype(),
                                         offsets[name])
      self._descriptors[path] = os.open(path, os.O_RDONLY)
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
        raise CheckpointError(f'{INDEX_FILE} places tensor {name} in {file}, '
                              'which does not hold it')
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

  def dtype(self, name: str) -> np.dtype:
    return numpy_dtype(self._tensors[name].dtype)

  def read(self, name: str) -> np.ndarray:
    """One tensor as a host numpy array in its stored dtype (bfloat16 via ml_dtypes)."""
    info = self._tensors[name]
    out = aligned_empty(info.shape, self.dtype(name))
    self.read_into(name, out)
    return out

  def read_into(self, name: str, out: np.ndarray, first: int = 0) -> None:
    """Reads a tensor's elements [first, first + out.size) straight into `out` (C-contiguous, of
    its stored dtype, any shape): one copy from the page cache, the least reading can cost."""
    info = self._tensors[name]
    if out.dtype != self.dtype(name) or not 0 <= first <= first + out.size <= int(
        np.prod(info.shape)) or not out.flags.c_contiguous:
      raise ValueError(f'tensor {name} is {info.dtype}{list(info.shape)}; cannot read elements '
                       f'from {first} into a {"" if out.flags.c_contiguous else "non-contiguous "}'
                       f'{out.dtype}{list(out.shape)} array')
    view = memoryview(out.reshape(-1).view(np.uint8))
    start = info.offset + first * out.dtype.itemsize
    done = 0
    while done < len(view):
      count = os.preadv(self._descriptors[info.file], [view[done:]], start + done)
      if count == 0:
        raise CheckpointError(f'{info.file} ended inside tensor {name} (truncated?)')
      done += count

  def mapped(self, name: str, first: int = 0, count: int | None = None) -> np.ndarray:
    """A tensor's elements [first, first + count) (default: all) as a read-only flat array over
    the file's pages, mapped rather than copied: a loader that reorders a tensor anyway (a
    transpose) reads it once, from the page cache into its destination. The mapping lives as long
    as the returned array."""
    info = self._tensors[name]
    dtype = self.dtype(name)
    size = int(np.prod(info.shape))
    count = size - first if count is None else count
    if not 0 <= first <= first + count <= size:
      raise ValueError(f'tensor {name} has {size} elements; cannot map [{first}, {first + count})')
    start, nbytes = info.offset + first * dtype.itemsize, max(count, 1) * dtype.itemsize
    descriptor = self._descriptors[info.file]
    # Touching a mapped page past the end of a file kills the process (SIGBUS): a file that
    # shrank since it was opened is reported instead.
    if os.fstat(descriptor).st_size < start + nbytes:
      raise CheckpointError(f'{info.file} ended inside tensor {name} (truncated?)')
    page_start = start - start % mmap.ALLOCATIONGRANULARITY
    # MAP_POPULATE maps every page in one call instead of faulting them in one by one.
    mapping = mmap.mmap(descriptor, start + nbytes - page_start, prot=mmap.PROT_READ,
                        flags=mmap.MAP_SHARED | getattr(mmap, 'MAP_POPULATE', 0),
                        offset=page_start)
    return np.frombuffer(mapping, dtype, count, offset=start - page_start)

  def close(self) -> None:
    for descriptor in self._descriptors.values():
      os.close(descriptor)
    self._descriptors.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


_ITEMSIZE = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2, 'I8': 1,
             'U8': 1, 'BOOL': 1}


# --- Writing ----------------------------------------------------------------------------------

_DTYPE_NAMES = {'float64': 'F64', 'float32': 'F32', 'float16': 'F16', 'bfloat16': 'BF16',
                'int64': 'I64', 'int32': 'I32', 'int16': 'I16', 'int8': 'I8', 'uint8': 'U8',
                'bool': 'BOOL'}


def numpy_dtype(safetensors_name: str) -> np.dtype:
  """'BF16' -> bfloat16 (ml_dtypes), 'F32' -> float32, ..."""
  names = {v: k for k, v in _DTYPE_NAMES.items()}
  if safetensors_name not in names:
    raise CheckpointError(f'unsupported tensor dtype {safetensors_name}')
  return np.dtype(jnp.dtype(names[safetensors_name]))


def safetensors_dtype(dtype) -> str:
  name = np.dtype(dtype).name
  if name not in _DTYPE_NAMES:
    raise ValueError(f'cannot store dtype {name} in a checkpoint; '
                     f'expected one of {list(_DTYPE_NAMES)}')
  return _DTYPE_NAMES[name]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  name: str
  shape: tuple[int, ...]
  dtype: str  # safetensors dtype name

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * _ITEMSIZE[self.dtype]


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
  """Packs tensors, in order, into files of at most `max_shard_bytes` (a larger tensor alone)."""
  shards: list[list[TensorSpec]] = [[]]
  size = 0
  for spec in specs:
    if shards[-1] and size + spec.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(spec)
    size += spec.nbytes
  return shards


class ShardedSafetensorsWriter:
  """Writes a checkpoint whose tensor list is known up front, one tensor at a time, in any order.

  The safetensors library only writes a whole file from a dict held in memory; a multi-GB shard
  would then be held at once. Here every file's header (names, dtypes, shapes, offsets) is
  written first, and `write(name, array)` puts each tensor's bytes at its offset, so memory holds
  one tensor. Produces `model.safetensors`, or `model-0000k-of-0000n.safetensors` shards plus
  `model.safetensors.index.json` (the Hugging Face layout). `close()` checks every tensor was
  written.
  """

  def __init__(self, directory: str | os.PathLike, specs: list[TensorSpec], max_shard_bytes: int,
               metadata: dict[str, str] | None = None):
    self.directory = Path(directory)
    shards = plan_shards(specs, max_shard_bytes)
    self._where: dict[str, tuple[Path, int, TensorSpec]] = {}
    self._files = {}
    for k, shard in enumerate(shards):
      file = self.directory / (SINGLE_FILE if len(shards) == 1
                               else f'model-{k + 1:05d}-of-{len(shards):05d}.safetensors')
      header: dict = {'__metadata__': {'format': 'pt', **(metadata or {})}}
      offset = 0
      for spec in shard:
        header[spec.name] = {'dtype': spec.dtype, 'shape': list(spec.shape),
                             'data_offsets': [offset, offset + spec.nbytes]}
        offset += spec.nbytes
      encoded = json.dumps(header, separators=(',', ':')).encode()
      encoded += b' ' * (-len(encoded) % 8)  # data starts 8-byte aligned
      start = 8 + len(encoded)
      handle = open(file, 'wb')
      handle.write(len(encoded).to_bytes(8, 'little') + encoded)
      handle.truncate(start + offset)
      self._files[file] = handle
      for spec in shard:
        begin = header[spec.name]['data_offsets'][0]
        self._where[spec.name] = (file, start + begin, spec)
    self._pending = set(self._where)
    self._index = None
    if len(shards) > 1:
      self._index = {
          'metadata': {'total_size': sum(s.nbytes for s in specs)},
          'weight_map': {name: file.name for name, (file, _, _) in self._where.items()},
      }

  @property
  def files(self) -> list[Path]:
    return list(self._files)

  def write(self, name: str, array: np.ndarray) -> None:
    file, offset, spec = self._where[name]
    if tuple(array.shape) != spec.shape or safetensors_dtype(array.dtype) != spec.dtype:
      raise ValueError(f'tensor {name}: got {array.dtype}{list(array.shape)}, '
                       f'planned {spec.dtype}{list(spec.shape)}')
    handle = self._files[file]
    handle.seek(offset)
    # Raw little-endian bytes (the host order on every platform JAX runs on), without a copy.
    handle.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    self._pending.discard(name)

  def close(self) -> None:
    for handle in self._files.values():
      handle.close()
    if self._pending:
      raise ValueError(f'{len(self._pending)} planned tensor(s) were never written: '
                       f'{sorted(self._pending)[:5]}')
    if self._index is not None:
      (self.directory / INDEX_FILE).write_text(json.dumps(self._index, indent=2))
