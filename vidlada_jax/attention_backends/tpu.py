"""`pallas_tpu`: block-sparse frame-window attention as a Pallas Mosaic (TPU) kernel.

The grid is (batch, head, step), one step per (query block, visited key block) pair of the block
table, listed query block by query block (a query block with no visit gets one idle step, to write
its empty result). The list is scalar-prefetched into SMEM and read by the BlockSpec index maps,
so the pipeline fetches only the visited key/value blocks and keeps a query block and its output
resident across its steps; unlike a (query block, visit) grid padded to the longest row, no step
is spent on padding, which matters for MARS-Cache: text query blocks visit every key block, frame
query blocks only their frame window's few. Across a query block's steps an online softmax
accumulates in VMEM scratch (running max, sum, unnormalised output), reset at its first step and
normalised at its last; the exact element mask (`block_sparse.visible` and key_mask) applies
inside each block, so the result is the reference's.

Layouts follow splash attention's: head-major [B, H, L, D] inside; query frame ids replicated
across the 128 lanes ([Lq, 128]) and key frame ids across 8 sublanes ([B, 8, Lk]), so every block
obeys Mosaic's rule (last two block dims multiples of (8, 128) or the full dims); per-row running
statistics are lane-replicated [block_q, 128] tiles. key_mask is folded into the key frame ids
(a hidden key becomes padding, which nothing sees), one input fewer.

Grouped-query attention: query head h reads kv head h // (H // Hkv) in the index map, so K/V are
never repeated in memory (each query head still fetches its kv blocks itself).

Compiled on TPU: block_k a multiple of 128, block_q of 8 (128 is the default and what the
lowering test checks). Under `interpret=True` (the TPU interpreter, on CPU) any block sizes work.
Forward only (no VJP): MARS-Cache attention is a sampling-time policy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from vidlada_jax.attention_backends import _tpu_api as api
from vidlada_jax.attention_backends.block_sparse import PAD, BlockTable, Partial, visible

BLOCK_Q = BLOCK_K = 128

_QK_DIMS = (((1,), (1,)), ((), ()))  # [bq, D] x [bk, D] -> [bq, bk]
_PV_DIMS = (((1,), (0,)), ((), ()))  # [bq, bk] x [bk, D] -> [bq, D]


def attention_partial(q, k, v, *, table: BlockTable, q_frame, k_frame, key_mask, frame_window,
                      interpret=False) -> Partial:
  """Frame-window attention over the blocks `table` lists -> Partial(out [B, Lq, H, D], lse)."""
  batch, q_len, num_heads, head_dim = q.shape
  k_len, num_kv_heads = k.shape[1], k.shape[2]
  block_q, block_k = table.block_q, table.block_k
  if q_len != len(table.counts) * block_q or k_len != table.num_k_blocks * block_k:
    raise ValueError(f'lengths ({q_len}, {k_len}) do not match the block table '
                     f'({len(table.counts)} x {block_q}, {table.num_k_blocks} x {block_k})')
  if not interpret and (block_k % api.LANES or block_q % api.SUBLANES):
    raise ValueError(f'the compiled TPU kernel needs block_k a multiple of {api.LANES} and '
                     f'block_q of {api.SUBLANES}, got ({block_q}, {block_k})')
  # Lane-replicated rows are `lanes` wide: a whole vector register, or one key block when the
  # interpreter runs blocks narrower than that.
  lanes = api.LANES if block_k % api.LANES == 0 else block_k
  groups = num_heads // num_kv_heads
  q_blocks, k_blocks, visits = visit_list(table)

  q_frame_lanes = jnp.broadcast_to(q_frame.astype(jnp.int32)[:, None], (q_len, lanes))
  k_frame_rows = jnp.where(key_mask, k_frame.astype(jnp.int32)[None, :], PAD)  # [B, Lk]
  k_frame_rows = jnp.broadcast_to(k_frame_rows[:, None, :], (batch, api.SUBLANES, k_len))

  # Index maps get the grid indices, then the scalar-prefetched step list.
  def q_map(b, h, s, q_blocks, k_blocks, visits, counts):
    return b, h, q_blocks[s], 0

  def kv_map(b, h, s, q_blocks, k_blocks, visits, counts):
    return b, lax.div(h, groups), k_blocks[s], 0

  def q_frame_map(b, h, s, q_blocks, k_blocks, visits, counts):
    return q_blocks[s], 0

  def k_frame_map(b, h, s, q_blocks, k_blocks, visits, counts):
    return b, 0, k_blocks[s]

  kernel = functools.partial(
      _kernel, frame_window=frame_window, scale=head_dim ** -0.5,
      precision=lax.Precision.HIGHEST if q.dtype == jnp.float32 else None)
  out, lse = pl.pallas_call(
      kernel,
      grid_spec=api.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(batch, num_heads, len(q_blocks)),
          in_specs=[
              pl.BlockSpec((None, None, block_q, head_dim), q_map),
              pl.BlockSpec((None, None, block_k, head_dim), kv_map),
              pl.BlockSpec((None, None, block_k, head_dim), kv_map),
              pl.BlockSpec((block_q, lanes), q_frame_map),
              pl.BlockSpec((None, api.SUBLANES, block_k), k_frame_map),
          ],
          out_specs=[
              pl.BlockSpec((None, None, block_q, head_dim), q_map),
              pl.BlockSpec((None, None, block_q, lanes), q_map),
          ],
          scratch_shapes=[
              api.vmem((block_q, lanes), jnp.float32),  # running max of the scores
              api.vmem((block_q, lanes), jnp.float32),  # running sum of exp(score - max)
              api.vmem((block_q, head_dim), jnp.float32),  # unnormalised output
          ],
      ),
      out_shape=[
          jax.ShapeDtypeStruct((batch, num_heads, q_len, head_dim), v.dtype),
          jax.ShapeDtypeStruct((batch, num_heads, q_len, lanes), jnp.float32),
      ],
      # A query block's steps carry the softmax state, so the step axis runs in order.
      compiler_params=api.compiler_params((api.PARALLEL, api.PARALLEL, api.ARBITRARY)),
      interpret=api.interpret_mode(interpret),
      name='block_sparse_frame_attention',
  )(
      jnp.asarray(q_blocks), jnp.asarray(k_blocks), jnp.asarray(visits),
      jnp.asarray(table.counts, jnp.int32),
      q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
      q_frame_lanes, k_frame_rows)
  return Partial(out.transpose(0, 2, 1, 3), lse[..., 0])


def visit_list(table: BlockTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The grid's steps: (query block, key block, visit number within the query block), int32.

  Query block i takes max(counts[i], 1) consecutive steps; with no visit, its one step computes
  nothing (visit 0 is not < counts[i] = 0) and only writes the empty result.
  """
  steps = np.maximum(table.counts, 1)
  q_blocks = np.repeat(np.arange(len(steps)), steps)
  visits = np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)
  k_blocks = table.indices[q_blocks, visits]
  return q_blocks.astype(np.int32), k_blocks.astype(np.int32), visits.astype(np.int32)


def _widen(rows, width: int):
  """A lane-replicated [rows, lanes] tile as [rows, width] (tiling, as Mosaic prefers)."""
  lanes = rows.shape[-1]
  return jnp.tile(rows, (1, pl.cdiv(width, lanes)))[:, :width]


def _kernel(q_blocks_ref, k_blocks_ref, visits_ref, counts_ref, q_ref, k_ref, v_ref, q_frame_ref,
            k_frame_ref, out_ref, lse_ref, max_ref, sum_ref, acc_ref, *, frame_window, scale,
            precision):
  step = pl.program_id(2)
  visit, count = visits_ref[step], counts_ref[q_blocks_ref[step]]

  @pl.when(visit == 0)
  def _start():
    max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(visit < count)
  def _visit():
    v = v_ref[...]
    scores = lax.dot_general(q_ref[...], k_ref[...], _QK_DIMS, precision=precision,
                             preferred_element_type=jnp.float32) * scale
    block_k = scores.shape[1]
    allowed = visible(_widen(q_frame_ref[...], block_k), k_frame_ref[:1, :], frame_window)
    scores = jnp.where(allowed, scores, -jnp.inf)
    max_prev = max_ref[...]
    max_next = jnp.maximum(max_prev, scores.max(axis=1)[:, None])
    # A row that has seen no visible key keeps max -inf; shift it by 0 so exp gives 0, not NaN.
    shift = jnp.where(max_next == -jnp.inf, 0.0, max_next)
    probs = jnp.exp(scores - _widen(shift, block_k))
    rescale = jnp.exp(max_prev - shift)
    max_ref[...] = max_next
    sum_ref[...] = rescale * sum_ref[...] + probs.sum(axis=1)[:, None]
    update = lax.dot_general(probs.astype(v.dtype), v, _PV_DIMS, precision=precision,
                             preferred_element_type=jnp.float32)
    acc_ref[...] = acc_ref[...] * _widen(rescale, acc_ref.shape[1]) + update

  @pl.when(visit == jnp.maximum(count, 1) - 1)
  def _finish():
    total = sum_ref[...]
    seen = total > 0.0  # false for rows with no visible key: output 0, lse -inf
    inverse = jnp.where(seen, 1.0 / jnp.where(seen, total, 1.0), 0.0)
    out_ref[...] = (acc_ref[...] * _widen(inverse, acc_ref.shape[1])).astype(out_ref.dtype)
    lse_ref[...] = jnp.where(seen, max_ref[...] + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)
