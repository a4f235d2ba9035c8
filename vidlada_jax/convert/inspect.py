"""Print the tensors of a checkpoint, or the differences between two.

    python -m vidlada_jax.convert.inspect PATH                  names, dtypes, shapes and totals
    python -m vidlada_jax.convert.inspect PATH --against OTHER  what differs (names, shapes, dtypes)
    python -m vidlada_jax.convert.inspect PATH --against OTHER --values
                                                                ... and the bytes of every tensor

PATH and OTHER are PyTorch checkpoint directories or vidlada-jax checkpoints. A vidlada-jax
checkpoint compared with a PyTorch one is seen through the export to that checkpoint's layout
(the tensors `vidlada_jax.convert.jax_to_hf` would write), so names and layouts line up. Exits 0
when there is no difference, 1 when there is one, 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from vidlada_jax import checkpoint as jax_checkpoint
from vidlada_jax.hf import config as hf_config
from vidlada_jax.hf.safetensors_io import SafetensorsCheckpoint, numpy_dtype, safetensors_dtype

from vidlada_jax.convert.jax_to_hf import ExportPlan, natural_sort_key

Spec = tuple[str, tuple[int, ...]]  # (dtype name, shape)


class HFView:
  """A PyTorch checkpoint directory: tensor name -> (dtype, shape), values by name."""

  kind = 'PyTorch checkpoint'

  def __init__(self, path: Path):
    self.files = SafetensorsCheckpoint(path)
    self.layout = hf_config.detect_layout(json.loads((path / 'config.json').read_text()))
    self.specs = {n: (self.files.info(n).dtype, tuple(self.files.info(n).shape))
                  for n in self.files.names}

  def get(self, name: str) -> np.ndarray:
    return self.files.read(name)

  def stream(self) -> Iterator[tuple[str, np.ndarray]]:
    for name in self.specs:
      yield name, self.get(name)


class JaxView:
  """A vidlada-jax checkpoint: its parameters (by path) and passthrough tensors (by name)."""

  kind = 'vidlada-jax checkpoint'

  def __init__(self, path: Path):
    self.path = path
    self.stored = jax_checkpoint.stored_params(path)
    self.specs = {p: (safetensors_dtype(s.dtype), s.shape) for p, s in self.stored.items()}
    self.passthrough = {f'passthrough:{t.name}': t
                        for t in jax_checkpoint.stored_passthrough(path)}
    for key, tensor in self.passthrough.items():
      self.specs[key] = (safetensors_dtype(tensor.dtype), tensor.shape)

  def get(self, key: str) -> np.ndarray:
    if key in self.passthrough:
      tensor = self.passthrough[key]
      return jax_checkpoint.load_host_array(self.path, tensor.key, tensor.shape, tensor.dtype)
    stored = self.stored[key]
    if stored.layers is None:
      return jax_checkpoint.load_host_array(
          self.path, jax_checkpoint.param_key(key), stored.shape, stored.dtype)
    return np.stack([
        jax_checkpoint.load_host_array(
            self.path, jax_checkpoint.param_key(jax_checkpoint.layer_key(key, i)),
            stored.shape[1:], stored.dtype)
        for i in range(stored.layers)])

  def stream(self) -> Iterator[tuple[str, np.ndarray]]:
    for key in self.specs:
      yield key, self.get(key)


class ExportView:
  """A vidlada-jax checkpoint seen as the PyTorch checkpoint it exports to in `layout`."""

  kind = 'vidlada-jax checkpoint (as exported)'

  def __init__(self, path: Path, layout: str):
    self.plan = ExportPlan(path, layout=layout)
    self.specs = {s.name: (s.dtype, s.shape) for s in self.plan.specs}

  def stream(self) -> Iterator[tuple[str, np.ndarray]]:
    return self.plan.tensors()


def open_view(path) -> HFView | JaxView:
  path = Path(path)
  if jax_checkpoint.is_checkpoint(path):
    return JaxView(path)
  if (path / 'config.json').is_file():
    return HFView(path)
  raise ValueError(f'{path} is neither a PyTorch checkpoint directory nor a vidlada-jax checkpoint')


def print_tree(view) -> None:
  rows = sorted(view.specs.items(), key=lambda kv: natural_sort_key(kv[0]))
  width = max((len(n) for n, _ in rows), default=10)
  total_bytes = total_params = 0
  for name, (dtype, shape) in rows:
    count = int(np.prod(shape))
    nbytes = count * numpy_dtype(dtype).itemsize
    total_params += count
    total_bytes += nbytes
    print(f'{name:<{width}}  {dtype:<5} {str(list(shape)):<24} {nbytes / 1e6:>10.2f} MB')
  print(f'{view.kind}: {len(rows)} tensors, {total_params:,} values, {total_bytes / 1e9:.3f} GB')


def compare(a, b, *, values: bool = False) -> list[str]:
  """Differences between two views (names, dtypes, shapes, and bytes with `values`)."""
  if isinstance(a, JaxView) and isinstance(b, HFView):
    a = ExportView(a.path, b.layout)
  if isinstance(a, HFView) and isinstance(b, JaxView):
    b = ExportView(b.path, a.layout)
  diffs = []
  only_a = sorted(set(a.specs) - set(b.specs), key=natural_sort_key)
  only_b = sorted(set(b.specs) - set(a.specs), key=natural_sort_key)
  diffs += [f'only in A: {n} {a.specs[n][0]}{list(a.specs[n][1])}' for n in only_a]
  diffs += [f'only in B: {n} {b.specs[n][0]}{list(b.specs[n][1])}' for n in only_b]
  common = [n for n in a.specs if n in b.specs]
  for name in common:
    if a.specs[name] != b.specs[name]:
      (da, sa), (db, sb) = a.specs[name], b.specs[name]
      diffs.append(f'differs: {name}: A {da}{list(sa)}, B {db}{list(sb)}')
  if values:
    comparable = {n for n in common if a.specs[n] == b.specs[n]}
    streamed, other = (a, b) if not hasattr(a, 'get') or hasattr(b, 'get') else (b, a)
    if not hasattr(other, 'get'):
      raise ValueError('comparing values needs at least one side readable by name')
    for name, value in streamed.stream():
      if name in comparable:
        theirs = other.get(name)
        if np.ascontiguousarray(value).tobytes() != np.ascontiguousarray(theirs).tobytes():
          diffs.append(f'values differ: {name}')
  return diffs


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vidlada_jax.convert.inspect', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('path', help='checkpoint directory (PyTorch or vidlada-jax)')
  parser.add_argument('--against', help='a second checkpoint to compare with')
  parser.add_argument('--values', action='store_true', help='with --against: compare tensor bytes')
  args = parser.parse_args(argv)
  try:
    view = open_view(args.path)
    if not args.against:
      print_tree(view)
      return 0
    diffs = compare(view, open_view(args.against), values=args.values)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for line in diffs:
    print(line)
  what = 'names, dtypes, shapes' + (' and values' if args.values else '')
  print(f'{len(diffs)} difference(s) in {what}' if diffs else f'identical {what}')
  return 1 if diffs else 0


if __name__ == '__main__':
  sys.exit(main())
