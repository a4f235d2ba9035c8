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
difference of its output from xla_dense's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vidlada_jax.attention_backends import block_sparse

FRAME_TOKENS = 210
TEXT_TOKENS = 100
RESPONSE_TOKENS = 64
WINDOW = 1
NUM_HEADS = 8
HEAD_DIM = 128
IMPLEMENTATIONS_BY_BACKEND = {
    'cpu': ('xla_dense', 'xla_gather'),
    'gpu': ('xla_dense', 'xla_gather', 'pallas_gpu', 'cudnn'),
    'tpu': ('xla_dense', 'xla_gather', 'pallas_tpu'),
}
DEFAULT_FRAMES = {'cpu': 16}  # accelerators: 64
DEFAULT_ITERS = {'cpu': 3}  # accelerators: 20


def mars_layout(num_frames: int) -> block_sparse.FrameWindowMask:
  """Visual queries of `num_frames` frames; keys are those frames then the global text and
  response tokens."""
  visual = np.repeat(np.arange(num_frames, dtype=np.int32), FRAME_TOKENS)
  text = np.full(TEXT_TOKENS + RESPONSE_TOKENS, block_sparse.GLOBAL, np.int32)
  return block_sparse.FrameWindowMask(visual, np.concatenate([visual, text]), WINDOW)


def visited_fraction(name: str, mask: block_sparse.FrameWindowMask) -> float:
  """Fraction of block pairs `name` computes, with its own block sizes (1 for dense ones)."""
  if name in ('xla_dense', 'cudnn'):
    return 1.0
  impl = block_sparse.get_implementation(name)
  q_frame = np.pad(mask.q_frame, (0, -len(mask.q_frame) % impl.BLOCK_Q),
                   constant_values=block_sparse.PAD)
  k_frame = np.pad(mask.k_frame, (0, -len(mask.k_frame) % impl.BLOCK_K),
                   constant_values=block_sparse.PAD)
  padded = block_sparse.FrameWindowMask(q_frame, k_frame, mask.window)
  return block_sparse.block_table(padded, impl.BLOCK_Q, impl.BLOCK_K).density


def attention_fn(name: str, mask: block_sparse.FrameWindowMask):
  """A jitted (q, k, v) -> out for implementation `name`, compiled for the current platform."""
  if name == 'cudnn':
    allowed = jnp.asarray(mask.dense())[None, None]  # [1, 1, Lq, Lk]
    return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, mask=allowed, implementation='cudnn'))
  return jax.jit(lambda q, k, v: block_sparse.block_sparse_attention(
      q, k, v, mask=mask, implementation=name))


def time_ms(fn, args, iters: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def run(num_frames: int, iters: int) -> list[dict]:
  backend = jax.default_backend()
  dtype = jnp.float32 if backend == 'cpu' else jnp.bfloat16
  mask = mars_layout(num_frames)
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (1, len(mask.q_frame), NUM_HEADS, HEAD_DIM), dtype)
  k, v = (jax.random.normal(key, (1, len(mask.k_frame), NUM_HEADS, HEAD_DIM), dtype)
          for key in keys[1:])
  rows, reference = [], None
  for name in IMPLEMENTATIONS_BY_BACKEND.get(backend, ('xla_dense', 'xla_gather')):
    fn = attention_fn(name, mask)
    row = {'implementation': name, 'backend': backend, 'dtype': jnp.dtype(dtype).name,
           'frames': num_frames, 'q_len': len(mask.q_frame), 'k_len': len(mask.k_frame),
           'visited': visited_fraction(name, mask)}
    try:
      row['ms'] = time_ms(fn, (q, k, v), iters)
    except Exception as error:  # an implementation that cannot run here is reported, not fatal
      row['error'] = f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
      rows.append(row)
      continue
    out = np.asarray(fn(q, k, v), np.float32)
    if reference is None:
      reference = out  # xla_dense runs first
    row['max_abs_err'] = float(np.abs(out - reference).max())
    rows.append(row)
  return rows


def format_table(rows: list[dict]) -> str:
  first = rows[0]
  lines = [f"{first['backend']} {first['dtype']}: {first['frames']} frames x {FRAME_TOKENS} "
           f"queries, {first['k_len']} keys, window {WINDOW}, H={NUM_HEADS}, D={HEAD_DIM}",
           f"{'implementation':<16}{'ms':>10}{'visited':>10}{'max abs err':>14}"]
  for row in rows:
    if 'error' in row:
      lines.append(f"{row['implementation']:<16}  failed: {row['error']}")
    else:
      lines.append(f"{row['implementation']:<16}{row['ms']:>10.2f}{row['visited']:>10.3f}"
                   f"{row['max_abs_err']:>14.3g}")
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
