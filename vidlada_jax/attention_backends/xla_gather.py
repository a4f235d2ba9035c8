"""`xla_gather`: block-sparse frame-window attention in plain XLA, gathering the visited blocks.

For each query block, the key and value blocks its row of the block table lists are gathered
into one [max_visits * block_k] strip and attention runs over that strip only, with the exact
element mask; `jax.lax.map` walks the query blocks so only one block's scores exist at a time.
The work is proportional to the visits, not to Lk, which is what saves FLOPs where no sparse
kernel exists (CPU) and keeps the memory bounded everywhere.

`max_visits` must be static, and one text or response query block sees every key block: a single
strip width would make the whole op dense again. So query blocks are bucketed by the power of
two their visit count rounds up to, and each bucket runs with its own width; the buckets'
outputs are put back in query order with one static permutation. Visits past a row's count
repeat its last block (the table's padding) and are masked out, so no key is counted twice.

Layout is head-major inside, [B, Hkv, G, block_q, D], so both products are plain batched matmuls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vidlada_jax.attention_backends import block_sparse

# Measured on a 2-core CPU (bench layout, 32 frames): 128 x 64 is ~8% faster than 128 x 128 and
# 20% faster than 64 x 64; narrower key blocks waste fewer keys at frame edges.
BLOCK_Q = 128
BLOCK_K = 64


def _buckets(counts: np.ndarray) -> list[tuple[np.ndarray, int]]:
  """Query block ids grouped by the power of two their visit count rounds up to, each group
  with the largest count in it as its strip width: fewer than twice the visits any row needs,
  and at most log2(num_k_blocks) + 1 groups (each one more program to compile)."""
  octave = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
  buckets = []
  for level in np.unique(octave):
    rows = np.flatnonzero(octave == level)
    buckets.append((rows, max(1, int(counts[rows].max()))))
  return buckets


def _attend_strip(q_block, q_frame, k_blocks, v_blocks, k_code, visits, visit_valid, frame_window):
  """Attention of one query block [B, Hkv, G, bq, D] over the key blocks `visits` [V] of
  k_blocks/v_blocks [B, Hkv, nkb, bk, D] -> out [B, Hkv, G, bq, D], lse [B, Hkv, G, bq].

  Scores are laid out key-major, [B, Hkv, strip, G * bq]: the gathered strip of keys is then the
  left operand with its head dimension minor, as gathered, and only the query block (small) is
  transposed for the product; the query-major layout makes XLA transpose the whole strip.
  """
  batch, num_kv_heads, groups, block_q, head_dim = q_block.shape
  block_k = k_blocks.shape[3]
  strip = len(visits) * block_k
  keys = k_blocks[:, :, visits].reshape(batch, num_kv_heads, strip, head_dim)
  values = v_blocks[:, :, visits].reshape(batch, num_kv_heads, strip, head_dim)
  # A visit past the row's count repeats the last block: its keys count as padding.
  key_frame = jnp.where(visit_valid[:, None], k_code[:, visits], block_sparse.PAD)
  allowed = block_sparse.visible(key_frame.reshape(batch, strip, 1), q_frame[None, None, :],
                                 frame_window)  # [B, strip, bq]
  allowed = jnp.tile(allowed, (1, 1, groups))[:, None]  # [B, 1, strip, G * bq]
  queries = q_block.reshape(batch, num_kv_heads, groups * block_q, head_dim)
  scores = jnp.einsum('bhkd,bhmd->bhkm', keys, queries, preferred_element_type=jnp.float32)
  scores = jnp.where(allowed, scores * (head_dim ** -0.5), -jnp.inf)
  lse = jax.nn.logsumexp(scores, axis=2)  # [B, Hkv, G * bq]
  safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
  probs = jnp.where(allowed, jnp.exp(scores - safe[:, :, None]), 0.0).astype(values.dtype)
  out = jnp.einsum('bhkm,bhkd->bhmd', probs, values)
  return (out.reshape(batch, num_kv_heads, groups, block_q, head_dim),
          lse.reshape(batch, num_kv_heads, groups, block_q))


def attention_partial(q, k, v, *, table: block_sparse.BlockTable, q_frame, k_frame, key_mask,
                      frame_window: int, interpret: bool = False) -> block_sparse.Partial:
  """Block-sparse attention of q [B, Lq, H, D] over k/v [B, Lk, Hkv, D] (lengths multiples of
  the table's blocks) -> Partial(out [B, Lq, H, D], lse [B, H, Lq])."""
  del interpret  # plain XLA: nothing to interpret
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  block_q, block_k, num_k_blocks = table.block_q, table.block_k, table.num_k_blocks
  num_q_blocks = q_len // block_q
  q_blocks = q.reshape(batch, num_q_blocks, block_q, num_kv_heads, groups, head_dim)
  q_blocks = q_blocks.transpose(1, 0, 3, 4, 2, 5)  # [nqb, B, Hkv, G, bq, D]
  q_frames = q_frame.reshape(num_q_blocks, block_q)

  def to_blocks(x):  # [B, Lk, Hkv, D] -> [B, Hkv, nkb, bk, D]
    return x.reshape(batch, num_k_blocks, block_k, num_kv_heads, head_dim).transpose(0, 3, 1, 2, 4)

  k_blocks, v_blocks = to_blocks(k), to_blocks(v)
  # Masked keys carry PAD: the frame-window rule then hides them, one array for both.
  k_code = jnp.where(key_mask, k_frame[None, :], block_sparse.PAD).reshape(batch, num_k_blocks,
                                                                          block_k)
  outs, lses, order = [], [], []
  for rows, width in _buckets(table.counts):
    visit_valid = np.arange(width)[None, :] < table.counts[rows, None]

    def attend(args):
      q_block, frames, visits, valid = args
      return _attend_strip(q_block, frames, k_blocks, v_blocks, k_code, visits, valid, frame_window)

    out, lse = jax.lax.map(attend, (q_blocks[rows], q_frames[rows],
                                    jnp.asarray(table.indices[rows, :width]),
                                    jnp.asarray(visit_valid)))
    outs.append(out)
    lses.append(lse)
    order.append(rows)
  # Back to query-block order: position p of the concatenation holds query block order[p].
  inverse = np.argsort(np.concatenate(order))
  out = jnp.concatenate(outs)[inverse]  # [nqb, B, Hkv, G, bq, D]
  lse = jnp.concatenate(lses)[inverse]  # [nqb, B, Hkv, G, bq]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, q_len, num_heads, head_dim)
  lse = lse.transpose(1, 2, 3, 0, 4).reshape(batch, num_heads, q_len)
  return block_sparse.Partial(out, lse)
