"""`pallas_gpu`: block-sparse frame-window attention as a Pallas kernel lowered with Triton.

One program per (query block, batch, head). It loops over only the key blocks its row of the
block table lists (a dynamic trip count: `counts[i]`, so the tail the table pads by repetition is
never visited), applies the exact element mask inside each block, and keeps an online softmax
(running max, running sum and a float32 accumulator) as in FlashAttention. The block table and
the key metadata go in as ordinary int32 arrays: the Triton backend has no scalar prefetch, and a
scalar load per visited block costs nothing next to a [block_q, block_k] tile.

The key frame ids and the key padding mask travel as one int32 array per batch row (`PAD` where
a key is masked): the frame-window rule already hides PAD keys, so one load serves both.

Triton tiles must have power-of-two sizes and `tl.dot` needs every side >= 16, so block sizes and
the head dimension are checked up front (the LM's head_dim is 128). `interpret=True` runs the
same kernel through Pallas' interpreter on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from vidlada_jax.attention_backends import _gpu_api
from vidlada_jax.attention_backends import block_sparse

BLOCK_Q = 128
BLOCK_K = 128
MIN_TILE = 16  # tl.dot's smallest side


def _check_tile(name: str, size: int) -> None:
  if size < MIN_TILE or size & (size - 1):
    raise ValueError(f'pallas_gpu needs {name} to be a power of two >= {MIN_TILE} (a Triton tile '
                     f'constraint), got {size}')


def _attention_kernel(indices_ref, counts_ref, q_frame_ref, k_code_ref, q_ref, k_ref, v_ref,
                      out_ref, lse_ref, *, block_k: int, frame_window: int):
  """One query block of one head: online softmax over the key blocks its table row lists."""
  block_q, head_dim = q_ref.shape
  q = q_ref[...]
  q_frame = q_frame_ref[...]

  def visit(j, carry):
    acc, row_max, row_sum = carry
    start = pl.multiple_of(indices_ref[j] * block_k, block_k)
    keys = pl.ds(start, block_k)
    scores = jnp.dot(q, k_ref[keys, :].T, preferred_element_type=jnp.float32)
    scores = scores * (head_dim ** -0.5)
    allowed = block_sparse.visible(q_frame[:, None], k_code_ref[keys][None, :], frame_window)
    scores = jnp.where(allowed, scores, -jnp.inf)
    new_max = jnp.maximum(row_max, scores.max(axis=-1))
    # A row that has seen no visible key yet keeps max -inf; shifting by 0 instead keeps
    # exp(-inf - shift) at 0 rather than NaN.
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
    correction = jnp.exp(row_max - shift)
    probs = jnp.exp(scores - shift[:, None])
    values = v_ref[keys, :]
    acc = acc * correction[:, None] + jnp.dot(probs.astype(values.dtype), values,
                                              preferred_element_type=jnp.float32)
    return acc, new_max, row_sum * correction + probs.sum(axis=-1)

  init = (jnp.zeros((block_q, head_dim), jnp.float32),
          jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  acc, row_max, row_sum = lax.fori_loop(0, counts_ref[0], visit, init)
  seen = row_sum > 0
  out_ref[...] = (acc / jnp.where(seen, row_sum, 1.0)[:, None]).astype(out_ref.dtype)
  lse_ref[...] = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), -jnp.inf)


def attention_partial(q, k, v, *, table: block_sparse.BlockTable, q_frame, k_frame, key_mask,
                      frame_window: int, interpret: bool = False) -> block_sparse.Partial:
  """Block-sparse attention of q [B, Lq, H, D] over k/v [B, Lk, Hkv, D] (lengths multiples of
  the table's blocks) -> Partial(out [B, Lq, H, D], lse [B, H, Lq])."""
  batch, q_len, num_heads, head_dim = q.shape
  k_len, num_kv_heads = k.shape[1], k.shape[2]
  block_q, block_k = table.block_q, table.block_k
  _check_tile('block_q', block_q)
  _check_tile('block_k', block_k)
  _check_tile('head_dim', head_dim)
  if k.shape[-1] != head_dim or v.shape[-1] != head_dim:
    raise ValueError(f'pallas_gpu needs one head dimension for q, k and v, got {q.shape}, '
                     f'{k.shape}, {v.shape}')
  groups = num_heads // num_kv_heads
  num_q_blocks, max_visits = table.indices.shape
  if num_q_blocks * block_q != q_len or table.num_k_blocks * block_k != k_len:
    raise ValueError(f'block table ({num_q_blocks} x {block_q}, {table.num_k_blocks} x '
                     f'{block_k}) does not cover the lengths ({q_len}, {k_len})')
  k_code = jnp.where(key_mask, k_frame[None, :], block_sparse.PAD).astype(jnp.int32)

  kernel = functools.partial(_attention_kernel, block_k=block_k, frame_window=frame_window)
  whole_keys = pl.BlockSpec((None, k_len, None, head_dim), lambda i, b, h: (b, 0, h // groups, 0))
  query_block = pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0))
  out, lse = pl.pallas_call(
      kernel,
      grid=(num_q_blocks, batch, num_heads),
      in_specs=[
          pl.BlockSpec((None, max_visits), lambda i, b, h: (i, 0)),  # table row
          pl.BlockSpec((1,), lambda i, b, h: (i,)),  # visit count
          pl.BlockSpec((block_q,), lambda i, b, h: (i,)),  # query frame ids
          pl.BlockSpec((None, k_len), lambda i, b, h: (b, 0)),  # key frame ids, PAD if masked
          query_block,
          whole_keys,
          whole_keys,
      ],
      out_specs=[query_block,
                 pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, q_len), jnp.float32)],
      compiler_params=_gpu_api.compiler_params(num_warps=4 if head_dim <= 64 else 8,
                                               num_stages=2),
      interpret=interpret,
      name='block_sparse_frame_attention',
  )(jnp.asarray(table.indices, jnp.int32), jnp.asarray(table.counts, jnp.int32),
    q_frame.astype(jnp.int32), k_code, q, k, v)
  return block_sparse.Partial(out, lse)
