"""Conversion benchmark: peak memory and throughput of both directions on a synthetic checkpoint.

    python -m convert.bench                 3.1 GB checkpoint: real names and 8B shapes, 2 LM layers
    python -m convert.bench --lm-layers 6   4.8 GB: peak memory should not move
    python -m convert.bench --quick         1.1 GB (vocabulary cut to 32k, 1 LM layer), < 2 minutes
    python -m convert.bench --json          one JSON object instead of the table

Each direction runs in a fresh process that reports its own peak RSS (getrusage) and the RSS it
had before converting (the Python + JAX runtime); the memory claim is that peak - runtime stays
a small multiple of the largest tensor, far below the checkpoint size. The export is then checked
to be byte-identical to the source.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

QUICK = dict(lm_layers=1, vision_layers=1, vocab_size=32768)
FULL = dict(lm_layers=2, vision_layers=2, vocab_size=126464)


def _worker(direction: str, src: str, dst: str) -> None:
  """Runs one conversion in this process and prints its measurements as JSON."""
  import jax  # noqa: F401  (the runtime is part of the baseline)

  from convert import hf_to_jax, jax_to_hf

  runtime_rss = psutil.Process().memory_info().rss
  start = time.perf_counter()
  if direction == 'hf_to_jax':
    hf_to_jax.convert(src, dst, progress=False)
  else:
    jax_to_hf.export(src, dst, progress=False, max_shard_size='2GB')
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
  print(json.dumps(dict(seconds=seconds, peak_rss_bytes=peak, runtime_rss_bytes=runtime_rss)))


def _run_worker(direction: str, src: Path, dst: Path) -> dict:
  out = subprocess.run(
      [sys.executable, '-m', 'convert.bench', '--worker', direction, str(src), str(dst)],
      check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool, workdir: Path, lm_layers: int | None = None) -> dict:
  from convert import inspect
  from convert.synthetic import write_synthetic_checkpoint

  shape = dict(QUICK if quick else FULL)
  if lm_layers:
    shape['lm_layers'] = lm_layers
  start = time.perf_counter()
  facts = write_synthetic_checkpoint(workdir / 'hf', **shape)
  generated = time.perf_counter() - start
  result = dict(mode='quick' if quick else 'full', shape=shape,
                checkpoint_bytes=facts['checkpoint_bytes'],
                largest_tensor_bytes=facts['largest_tensor_bytes'],
                generate_seconds=generated)
  for direction, src, dst in (('hf_to_jax', workdir / 'hf', workdir / 'jax'),
                              ('jax_to_hf', workdir / 'jax', workdir / 'back')):
    m = _run_worker(direction, src, dst)
    m['gb_per_s'] = facts['checkpoint_bytes'] / 1e9 / m['seconds']
    m['peak_over_runtime_in_largest_tensors'] = (
        (m['peak_rss_bytes'] - m['runtime_rss_bytes']) / facts['largest_tensor_bytes'])
    result[direction] = m
  diffs = inspect.compare(inspect.open_view(workdir / 'hf'), inspect.open_view(workdir / 'back'),
                          values=True)
  result['round_trip_bit_exact'] = not diffs
  return result


def print_table(r: dict) -> None:
  gb = 1e9
  print(f'synthetic VidLaDA checkpoint ({r["mode"]}: {r["shape"]}): '
        f'{r["checkpoint_bytes"] / gb:.2f} GB, largest tensor {r["largest_tensor_bytes"] / gb:.2f} GB')
  print(f'{"direction":<10} {"seconds":>8} {"GB/s":>6} {"peak RSS GB":>12} {"runtime RSS GB":>15} '
        f'{"(peak-runtime)/largest":>23}')
  for direction in ('hf_to_jax', 'jax_to_hf'):
    m = r[direction]
    print(f'{direction:<10} {m["seconds"]:>8.1f} {m["gb_per_s"]:>6.2f} '
          f'{m["peak_rss_bytes"] / gb:>12.2f} {m["runtime_rss_bytes"] / gb:>15.2f} '
          f'{m["peak_over_runtime_in_largest_tensors"]:>23.2f}')
  print(f'round trip bit-exact: {r["round_trip_bit_exact"]}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m convert.bench', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='1 GB checkpoint, under two minutes')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  parser.add_argument('--lm-layers', type=int, help='LM layers of the synthetic checkpoint')
  parser.add_argument('--workdir', help='where to write the checkpoints (default: a temp dir)')
  parser.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    _worker(*args.worker)
    return 0
  with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
    result = run(args.quick, Path(workdir), args.lm_layers)
  if args.json:
    print(json.dumps(result))
  else:
    print_table(result)
  return 0 if result['round_trip_bit_exact'] else 1


if __name__ == '__main__':
  sys.exit(main())
