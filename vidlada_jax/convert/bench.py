"""Loading and conversion benchmark: time, throughput and peak memory of every path against the
floor, on a synthetic checkpoint with the real names and 8B shapes.

    python -m vidlada_jax.convert.bench                 3.1 GB checkpoint: real names and 8B shapes,
                                                        2 LM layers
    python -m vidlada_jax.convert.bench --lm-layers 6   4.8 GB: peak memory should not move
    python -m vidlada_jax.convert.bench --quick         1.1 GB (vocabulary cut to 32k, 1 LM layer),
                                                        < 2 minutes
    python -m vidlada_jax.convert.bench --json          one JSON object instead of the table

Rows, each in a fresh process that reports its own peak RSS (getrusage) and the RSS it had
before starting (the Python + JAX runtime), with the checkpoint's files read once beforehand so
that every row reads from the page cache:

  floor                    every tensor of the PyTorch checkpoint read from the page cache once,
                           into memory the process keeps (as a loaded model is kept): what any
                           loader must at least do
  write floor              as many bytes written once to a new file (from one reused buffer, not
                           synced): what a converter must do besides reading; past the kernel's
                           dirty-page limit (a few GB) this is the disk's write speed
  from_pretrained (torch)  `vj.from_pretrained(dir, dtype=bfloat16)` of the PyTorch checkpoint
  hf_to_jax                `vidlada_jax.convert.hf_to_jax` (writes a vidlada-jax checkpoint)
  from_pretrained (jax)    `vj.from_pretrained` of that vidlada-jax checkpoint
  jax_to_hf                `vidlada_jax.convert.jax_to_hf` back to PyTorch, checked byte-identical
                           to the source

`ratio_to_floor` is each path's seconds over the floor's; the converters also get
`ratio_to_conversion_floor`, over the floor plus the write floor. `process_seconds` is the whole
fresh process, start-up and imports included (the floor's starts JAX only, the others also import
vidlada-jax), and `process_ratio_to_floor` its ratio to the floor process's: what a user who
runs one script to load a model waits for. The conversions' memory claim is
that peak - runtime stays a small multiple of the largest tensor; `from_pretrained` holds the
model, so its peak is compared with the checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

QUICK = dict(lm_layers=1, vision_layers=1, vocab_size=32768)
FULL = dict(lm_layers=2, vision_layers=2, vocab_size=126464)


PATHS = ('floor', 'write_floor', 'from_pretrained_torch', 'hf_to_jax', 'from_pretrained_jax',
         'jax_to_hf')
CONVERTERS = ('hf_to_jax', 'jax_to_hf')
LABELS = {'floor': 'floor', 'write_floor': 'write floor',
          'from_pretrained_torch': 'from_pretrained (torch)',
          'hf_to_jax': 'hf_to_jax', 'from_pretrained_jax': 'from_pretrained (jax)',
          'jax_to_hf': 'jax_to_hf'}


def read_floor(directory: str) -> list:
  """Every tensor's bytes read once into memory that is kept (see the module docstring).

  Written from the file format alone (8-byte header length, JSON header, data), independent of
  the loaders it measures; the buffers are huge-page-backed anonymous mappings, the cheapest
  memory this host gives a process to fill.
  """
  kept = []
  for path in sorted(Path(directory).glob('*.safetensors')):
    with open(path, 'rb') as handle:
      length = int.from_bytes(handle.read(8), 'little')
      header = json.loads(handle.read(length))
      for name, info in header.items():
        if name == '__metadata__':
          continue
        begin, end = info['data_offsets']
        buffer = mmap.mmap(-1, max(end - begin, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, 'MADV_HUGEPAGE'):
          buffer.madvise(mmap.MADV_HUGEPAGE)
        view, done = memoryview(buffer)[:end - begin], 0
        while done < len(view):
          done += os.preadv(handle.fileno(), [view[done:]], 8 + length + begin + done)
        view.release()
        kept.append(buffer)
  return kept


def write_floor(src: str, dst: str) -> None:
  """As many bytes as the checkpoint in `src` has, written once into a new file in `dst` from one
  reused buffer (see the module docstring)."""
  remaining = sum(path.stat().st_size for path in Path(src).glob('*.safetensors'))
  block = memoryview(bytearray(64 << 20))
  Path(dst).mkdir(parents=True)
  with open(Path(dst) / 'written', 'wb', buffering=0) as handle:
    while remaining:
      remaining -= handle.write(block[:min(remaining, len(block))])


def _worker(path: str, src: str, dst: str) -> None:
  """Runs one path in this process and prints its measurements as JSON."""
  if path == 'generate':  # `src` is the checkpoint's shape, as JSON
    from vidlada_jax.convert.synthetic import write_synthetic_checkpoint
    print(json.dumps(write_synthetic_checkpoint(dst, **json.loads(src))))
    return
  # Each path imports what it needs only, so that the process's wall time (`process_seconds`,
  # measured by the parent) is what a user's fresh process pays: the floor starts JAX, the others
  # also import the library.
  import jax  # the runtime is part of the baseline
  if path not in ('floor', 'write_floor'):
    import jax.numpy as jnp

    import vidlada_jax as vj
    from vidlada_jax.convert import hf_to_jax, jax_to_hf

  runtime_rss = psutil.Process().memory_info().rss
  start = time.perf_counter()
  if path == 'floor':
    kept = read_floor(src)
  elif path == 'write_floor':
    write_floor(src, dst)
  elif path.startswith('from_pretrained'):
    kept = vj.from_pretrained(src, dtype=jnp.bfloat16, progress=False)
    jax.block_until_ready(jax.tree.leaves(kept))
  elif path == 'hf_to_jax':
    hf_to_jax.convert(src, dst, progress=False)
  else:
    jax_to_hf.export(src, dst, progress=False, max_shard_size='2GB')
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
  print(json.dumps(dict(seconds=seconds, peak_rss_bytes=peak, runtime_rss_bytes=runtime_rss)))


def warm_page_cache(directory: Path) -> None:
  """Reads every file once so that the timed row reads from the page cache (as far as it holds)."""
  for path in sorted(Path(directory).rglob('*')):
    if path.is_file():
      with open(path, 'rb') as handle:
        while handle.read(64 << 20):
          pass


def _run_worker(path: str, src: Path, dst: Path, repeats: int) -> dict:
  """The fastest of `repeats` runs (fresh processes): a host's first touch of memory it has not
  used lately varies by several times from run to run on virtual machines."""
  runs = []
  for _ in range(repeats):
    if dst.exists():
      shutil.rmtree(dst)
    warm_page_cache(src)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, '-m', 'vidlada_jax.convert.bench', '--worker', path, str(src), str(dst)],
        check=True, capture_output=True, text=True)
    process_seconds = time.perf_counter() - start  # start-up, imports, the work, exit
    runs.append(dict(json.loads(out.stdout.strip().splitlines()[-1]),
                     process_seconds=process_seconds))
  best = min(runs, key=lambda m: m['seconds'])
  return dict(best, all_seconds=[m['seconds'] for m in runs],
              process_seconds=min(m['process_seconds'] for m in runs))


def run(quick: bool, workdir: Path, lm_layers: int | None = None, repeats: int = 2) -> dict:
  from vidlada_jax.convert import inspect

  shape = dict(QUICK if quick else FULL)
  if lm_layers:
    shape['lm_layers'] = lm_layers
  start = time.perf_counter()
  # In a child process too: a process's peak RSS starts from its parent's RSS when it was
  # spawned, so the parent must not hold what generating the checkpoint allocated.
  out = subprocess.run([sys.executable, '-m', 'vidlada_jax.convert.bench', '--worker', 'generate',
                        json.dumps(shape), str(workdir / 'hf')],
                       check=True, capture_output=True, text=True)
  facts = json.loads(out.stdout.strip().splitlines()[-1])
  generated = time.perf_counter() - start
  result = dict(mode='quick' if quick else 'full', shape=shape,
                checkpoint_bytes=facts['checkpoint_bytes'],
                largest_tensor_bytes=facts['largest_tensor_bytes'],
                generate_seconds=generated)
  sources = {'floor': (workdir / 'hf', None), 'write_floor': (workdir / 'hf', workdir / 'written'),
             'from_pretrained_torch': (workdir / 'hf', None),
             'hf_to_jax': (workdir / 'hf', workdir / 'jax'),
             'from_pretrained_jax': (workdir / 'jax', None),
             'jax_to_hf': (workdir / 'jax', workdir / 'back')}
  for path in PATHS:
    src, dst = sources[path]
    m = _run_worker(path, src, dst or workdir / 'unused', repeats)
    m['gb_per_s'] = facts['checkpoint_bytes'] / 1e9 / m['seconds']
    m['peak_over_runtime_in_largest_tensors'] = (
        (m['peak_rss_bytes'] - m['runtime_rss_bytes']) / facts['largest_tensor_bytes'])
    m['peak_over_runtime_in_checkpoints'] = (
        (m['peak_rss_bytes'] - m['runtime_rss_bytes']) / facts['checkpoint_bytes'])
    result[path] = m
    m['ratio_to_floor'] = m['seconds'] / result['floor']['seconds']  # the floors come first
    m['process_ratio_to_floor'] = m['process_seconds'] / result['floor']['process_seconds']
    if path in CONVERTERS:
      m['ratio_to_conversion_floor'] = m['seconds'] / (
          result['floor']['seconds'] + result['write_floor']['seconds'])
    # Each row as soon as it is measured: a long run that fails later keeps what it measured.
    runs = ', '.join(f'{t:.2f}' for t in m['all_seconds'])
    print(f'{LABELS[path]}: {m["seconds"]:.2f} s (runs: {runs}), {m["ratio_to_floor"]:.2f}x the '
          f'floor; fresh process {m["process_seconds"]:.2f} s, '
          f'{m["process_ratio_to_floor"]:.2f}x; peak RSS {m["peak_rss_bytes"] / 1e9:.2f} GB',
          file=sys.stderr, flush=True)
  result['floor_seconds'] = result['floor']['seconds']
  result['write_floor_seconds'] = result['write_floor']['seconds']
  shutil.rmtree(workdir / 'written')
  diffs = inspect.compare(inspect.open_view(workdir / 'hf'), inspect.open_view(workdir / 'back'),
                          values=True)
  result['round_trip_bit_exact'] = not diffs
  return result


def print_table(r: dict) -> None:
  gb = 1e9
  print(f'synthetic VidLaDA checkpoint ({r["mode"]}: {r["shape"]}): '
        f'{r["checkpoint_bytes"] / gb:.2f} GB, '
        f'largest tensor {r["largest_tensor_bytes"] / gb:.2f} GB')
  print(f'{"path":<24} {"seconds":>8} {"GB/s":>6} {"x floor":>8} {"x read+write floors":>20} '
        f'{"process s":>10} {"x floor":>8} '
        f'{"peak RSS GB":>12} {"runtime RSS GB":>15} {"(peak-runtime)/largest":>23} '
        f'{"(peak-runtime)/ckpt":>20}')
  for path in PATHS:
    m = r[path]
    conversion = (f'{m["ratio_to_conversion_floor"]:.2f}' if 'ratio_to_conversion_floor' in m
                  else '')
    print(f'{LABELS[path]:<24} {m["seconds"]:>8.2f} {m["gb_per_s"]:>6.2f} '
          f'{m["ratio_to_floor"]:>8.2f} {conversion:>20} {m["process_seconds"]:>10.2f} '
          f'{m["process_ratio_to_floor"]:>8.2f} {m["peak_rss_bytes"] / gb:>12.2f} '
          f'{m["runtime_rss_bytes"] / gb:>15.2f} '
          f'{m["peak_over_runtime_in_largest_tensors"]:>23.2f} '
          f'{m["peak_over_runtime_in_checkpoints"]:>20.2f}')
  print(f'round trip bit-exact: {r["round_trip_bit_exact"]}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vidlada_jax.convert.bench', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='1 GB checkpoint, under two minutes')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  parser.add_argument('--lm-layers', type=int, help='LM layers of the synthetic checkpoint')
  parser.add_argument('--workdir', help='where to write the checkpoints (default: a temp dir)')
  parser.add_argument('--repeats', type=int, default=2,
                      help='runs per path; the fastest is reported (default 2)')
  parser.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    _worker(*args.worker)
    return 0
  with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
    result = run(args.quick, Path(workdir), args.lm_layers, args.repeats)
  if args.json:
    print(json.dumps(result))
  else:
    print_table(result)
  return 0 if result['round_trip_bit_exact'] else 1


if __name__ == '__main__':
  sys.exit(main())
