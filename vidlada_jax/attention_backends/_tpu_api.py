"""The fast-moving Pallas TPU (Mosaic) and splash-attention APIs, in one place.

Pallas TPU renames things between JAX releases (`TPUCompilerParams` became `CompilerParams`,
`TPUInterpretParams` became `InterpretParams`, dimension semantics went from strings to an enum),
and splash attention is an example kernel under `jax.experimental`, not a stable API. The kernels
of this package use only the names below, so a JAX upgrade is fixed here and checked by
`tests/test_pallas_tpu.py`. Checked against JAX 0.10.2 (installed) and 0.11.1 (source).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

LANES = 128  # minor dimension of a TPU vector register: a block's last dim is a multiple of it
SUBLANES = 8  # second-minor dimension of a (32-bit) vector register

PARALLEL = getattr(pltpu, 'PARALLEL', 'parallel')  # grid axis whose steps are independent
ARBITRARY = getattr(pltpu, 'ARBITRARY', 'arbitrary')  # grid axis carrying state across steps

PrefetchScalarGridSpec = pltpu.PrefetchScalarGridSpec
_CompilerParams = getattr(pltpu, 'CompilerParams', None) or pltpu.TPUCompilerParams
_InterpretParams = getattr(pltpu, 'InterpretParams', None) or pltpu.TPUInterpretParams


def compiler_params(dimension_semantics: Sequence) -> object:
  """Mosaic compiler parameters: one of PARALLEL / ARBITRARY per grid axis."""
  return _CompilerParams(dimension_semantics=tuple(dimension_semantics))


def vmem(shape: Sequence[int], dtype) -> object:
  """A kernel scratch buffer in VMEM that lives across the grid steps."""
  return pltpu.VMEM(tuple(shape), dtype)


def interpret_mode(interpret) -> object:
  """The `interpret=` value for `pallas_call`: False (compile with Mosaic), or the TPU interpreter.

  True selects the TPU interpreter (it simulates VMEM/SMEM, DMAs and the grid order of a TPU on
  the CPU, and fills uninitialised scratch with NaN, so a missed initialisation shows up) rather
  than the generic HLO interpreter. An `InterpretParams` instance passes through unchanged.
  """
  if isinstance(interpret, _InterpretParams):
    return interpret
  return _InterpretParams() if interpret else False


# --- Splash attention ----------------------------------------------------------------------------


def splash_mha(num_heads: int, q_len: int, k_len: int, block_q: int, block_kv: int,
               interpret=False) -> Callable:
  """Splash attention of one sequence over all keys (no static mask), forward and backward.

  Returns fn(q [H, Lq, D], k/v [Hkv, Lk, D], q_segment [Lq], kv_segment [Lk]) -> [H, Lq, D]: a
  query attends to the keys with the same segment id, without scaling the scores (callers scale
  q). Query head h reads kv head h // (H // Hkv). Lengths must be multiples of the blocks, the
  blocks multiples of 128. Call it while tracing, once per trace: the kernel holds its block
  metadata as device arrays, which jax.export cannot take when closed over from an earlier trace
  (splash caches the host-side mask processing itself). `interpret=True` runs Pallas' generic
  interpreter, not the TPU one, which cannot run a vmapped kernel (in JAX 0.10.2 and 0.11.1 it
  zips the grid, one axis longer after vmap, with the dimension semantics and fails).
  """
  mask = splash_mask.MultiHeadMask([splash_mask.FullMask((q_len, k_len))] * num_heads)
  block_sizes = splash.BlockSizes(
      block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
      block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
      block_q_dq=block_q, block_kv_dq=block_kv)
  kernel = splash.make_splash_mha(
      mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1,
      interpret=bool(interpret))

  def attend(q, k, v, q_segment, kv_segment):
    segment_ids = splash.SegmentIds(q=q_segment.astype(jnp.int32), kv=kv_segment.astype(jnp.int32))
    return kernel(q, k, v, segment_ids)

  return attend

