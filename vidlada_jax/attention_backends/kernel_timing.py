"""Timing the block-sparse attention implementations on MARS-Cache's refresh layout.

The layout: N frames of 210 visual query tokens attend, with frame window 1, to the same frames
plus ~100 text and 64 response tokens at the end of the keys (global: every query sees them).
H=8, D=128; float32 on CPU, bfloat16 on accelerators. What runs is chosen from
`jax.default_backend()`: xla_dense (the reference every error is measured against) and
xla_gather everywhere, plus pallas_gpu and cuDNN's fused attention (on the equivalent dense
boolean mask, and with no mask) on GPU, plus pallas_tpu on TPU. Used by
`vidlada_jax.launch.bench_kernels` and `.bench_device`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vidlada_jax.attention_backends import block_sparse
from vidlada_jax.benchmarking import time_interleaved

FRAME_TOKENS = 210
TEXT_TOKENS = 100
RESPONSE_TOKENS = 64
WINDOW = 1
NUM_HEADS = 8
HEAD_DIM = 128
# cudnn_unmasked: cuDNN's fused attention with no mask at all, over the same queries and keys:
# what a dense kernel costs when it need not materialise a mask (a bound for any dense path).
IMPLEMENTATIONS_BY_BACKEND = {
    'cpu': ('xla_dense', 'xla_gather'),
    'gpu': ('xla_dense', 'xla_gather', 'pallas_gpu', 'cudnn', 'cudnn_unmasked'),
    'tpu': ('xla_dense', 'xla_gather', 'pallas_tpu'),
}
DENSE = ('xla_dense', 'cudnn', 'cudnn_unmasked')  # compute every (query, key) pair
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
  if name in DENSE:
    return 1.0
  impl = block_sparse.get_implementation(name)
  q_frame = np.pad(mask.q_frame, (0, -len(mask.q_frame) % impl.BLOCK_Q),
                   constant_values=block_sparse.PAD)
  k_frame = np.pad(mask.k_frame, (0, -len(mask.k_frame) % impl.BLOCK_K),
                   constant_values=block_sparse.PAD)
  padded = block_sparse.FrameWindowMask(q_frame, k_frame, mask.frame_window)
  return block_sparse.block_table(padded, impl.BLOCK_Q, impl.BLOCK_K).density


def attention_fn(name: str, mask: block_sparse.FrameWindowMask):
  """A jitted (q, k, v) -> out for implementation `name`, compiled for the current platform."""
  if name == 'cudnn':
    allowed = jnp.asarray(mask.dense())[None, None]  # [1, 1, Lq, Lk]
    return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, mask=allowed, implementation='cudnn'))
  if name == 'cudnn_unmasked':
    return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='cudnn'))
  return jax.jit(lambda q, k, v: block_sparse.block_sparse_attention(
      q, k, v, mask=mask, implementation=name))


def run(num_frames: int, iters: int) -> list[dict]:
  """One row per implementation this platform runs: median ms over `iters` calls (the
  implementations take turns), fraction of block pairs visited, max |out - xla_dense|."""
  backend = jax.default_backend()
  dtype = jnp.float32 if backend == 'cpu' else jnp.bfloat16
  mask = mars_layout(num_frames)
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (1, len(mask.q_frame), NUM_HEADS, HEAD_DIM), dtype)
  k, v = (jax.random.normal(key, (1, len(mask.k_frame), NUM_HEADS, HEAD_DIM), dtype)
          for key in keys[1:])
  rows, calls = [], {}
  for name in IMPLEMENTATIONS_BY_BACKEND.get(backend, ('xla_dense', 'xla_gather')):
    fn = attention_fn(name, mask)
    row = {'implementation': name, 'backend': backend, 'dtype': jnp.dtype(dtype).name,
           'frames': num_frames, 'q_len': len(mask.q_frame), 'k_len': len(mask.k_frame),
           'visited': visited_fraction(name, mask)}
    rows.append(row)
    try:
      jax.block_until_ready(fn(q, k, v))  # compiles, or says it cannot run here
    except Exception as error:  # an implementation that cannot run here is reported, not fatal
      row['error'] = f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
      continue
    calls[name] = functools.partial(fn, q, k, v)
  timings = time_interleaved(calls, iters)
  reference = np.asarray(timings['xla_dense'].output, np.float32)
  for row in rows:
    if row['implementation'] in timings:
      timing = timings[row['implementation']]
      row['ms'] = 1e3 * timing.median_s
      # The unmasked kernel computes another function: its error says nothing.
      row['max_abs_err'] = (
          None if row['implementation'] == 'cudnn_unmasked'
          else float(np.abs(np.asarray(timing.output, np.float32) - reference).max()))
  return rows
