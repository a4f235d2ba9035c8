"""Times every block-sparse attention implementation this platform runs, on a MARS-like layout.

    python -m vidlada_jax.launch.bench_kernels [--json] [--frames N] [--iters N]

The layout is MARS-Cache's refresh of the visual tokens: N frames of 210 visual query tokens
attend, with window 1, to the same frames plus ~100 text and 64 response tokens at the end of
the keys (global: every query sees them). H=8, D=128; float32 on CPU, bfloat16 on accelerators.

What runs is chosen from `jax.default_backend()`, so the same command works unchanged on any
machine: xla_dense (the reference every error is measured against) and xla_gather everywhere,
plus pallas_gpu and cuDNN's fused attention on the equivalent dense boolean mask on GPU, plus
pallas_tpu on TPU. Each row reports the median time over `--iters` calls after one compiling
call, the fraction of (query block, key block) pairs it computes, and the largest absolute
difference of its output from xla_dense's (none for cudnn_unmasked, which attends to every key:
it bounds what a dense kernel costs when no mask is materialised).
"""

from __future__ import annotations

import argparse
import json

import jax

from vidlada_jax.attention_backends.kernel_timing import (DEFAULT_FRAMES, DEFAULT_ITERS,
                                                          FRAME_TOKENS, HEAD_DIM, NUM_HEADS,
                                                          WINDOW, run)


def format_table(rows: list[dict]) -> str:
  first = rows[0]
  lines = [f"{first['backend']} {first['dtype']}: {first['frames']} frames x {FRAME_TOKENS} "
           f"queries, {first['k_len']} keys, window {WINDOW}, H={NUM_HEADS}, D={HEAD_DIM}",
           f"{'implementation':<16}{'ms':>10}{'visited':>10}{'max abs err':>14}"]
  for row in rows:
    if 'error' in row:
      lines.append(f"{row['implementation']:<16}  failed: {row['error']}")
    else:
      error = '-' if row['max_abs_err'] is None else f"{row['max_abs_err']:.3g}"
      lines.append(f"{row['implementation']:<16}{row['ms']:>10.2f}{row['visited']:>10.3f}"
                   f"{error:>14}")
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--frames', type=int, default=None,
                      help='video frames (default 16 on CPU, 64 on accelerators)')
  parser.add_argument('--iters', type=int, default=None,
                      help='timed calls (default 3 on CPU, 20 on accelerators)')
  parser.add_argument('--json', action='store_true', help='print one JSON object per row')
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  rows = run(args.frames or DEFAULT_FRAMES.get(backend, 64),
             args.iters or DEFAULT_ITERS.get(backend, 20))
  if args.json:
    for row in rows:
      print(json.dumps(row))
  else:
    print(format_table(rows))


if __name__ == '__main__':
  main()
