"""Block-sparse attention with a frame-window mask: one op, several implementations.

The op computes, for every query row q and every key row k,

    visible(q, k) = key_mask[k] and (frame[q] == -1 or frame[k] == -1
                                     or |frame[q] - frame[k]| <= frame_window)

and softmax attention over the visible keys (float32 softmax, scale 1/sqrt(D), probabilities cast
to v's dtype before the second product). Frame ids are per-token metadata: a visual token carries
the index of its video frame, a text or response token carries -1 (global: it sees and is seen by
everything). This is MARS-Cache's frame-wise chunk attention (a visual query sees the frames
n - w .. n + w, the text and the response); with no -1 anywhere and a huge frame window it is plain
attention.

The keys are visited in blocks: `block_table` turns the metadata into, for each block of queries,
the list of key blocks that hold at least one visible key. Only those are computed; inside a
visited block the exact element mask applies (a frame is 210 tokens and does not align with
blocks), so every implementation computes the same function as the dense reference.

Optionally a small second set of "global" keys/values (`GlobalKV`, e.g. gathered anchor tokens)
joins the same softmax: a global key is visible to a query exactly when the block mask does *not*
already show it (so an anchor inside a query's own frame window is counted once), and the two
partial results are merged through their log-sum-exps.

Layouts follow the model: q [B, Lq, H, D], k/v [B, Lk, Hkv, D] with Hkv dividing H.

Implementations (`implementation=`), each a module with `attention_partial`:

  xla_dense    the reference: the full [Lq, Lk] mask, every score computed
  xla_gather   gathers the visited key blocks and computes only those (saves FLOPs everywhere)
  pallas_gpu   a Pallas kernel lowered with Triton, online softmax over the visited blocks
  pallas_tpu   a Pallas Mosaic kernel, block table scalar-prefetched, online softmax

Every implementation takes `interpret=` so the same tests run on CPU.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

GLOBAL = -1  # frame id of a token outside any frame (text, response): sees and is seen by all
PAD = -2  # frame id of padding rows added to reach whole blocks: sees nothing, is seen by none


# --- Metadata ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FrameWindowMask:
  """Per-token frame ids of the queries and keys (host numpy, static) and the frame window w.

  Static because the block table's shape (how many key blocks a query block visits) depends on
  them; in MARS-Cache they are a fixed function of the prompt layout.
  """

  q_frame: np.ndarray  # [Lq] int32, GLOBAL for text and response rows
  k_frame: np.ndarray  # [Lk] int32
  frame_window: int

  def __post_init__(self):
    object.__setattr__(self, 'q_frame', _frames(self.q_frame, 'q_frame'))
    object.__setattr__(self, 'k_frame', _frames(self.k_frame, 'k_frame'))
    if int(self.frame_window) < 0:
      raise ValueError(f'frame_window must be >= 0, got {self.frame_window}')
    object.__setattr__(self, 'frame_window', int(self.frame_window))

  def dense(self) -> np.ndarray:
    """The [Lq, Lk] boolean mask (without key_mask), for references and tests."""
    return visible(self.q_frame[:, None], self.k_frame[None, :], self.frame_window, xp=np)

  def padded(self, block_q: int, block_k: int) -> 'FrameWindowMask':
    """The mask of queries and keys padded with PAD rows to whole blocks."""
    pad = lambda frames, block: np.pad(frames, (0, -len(frames) % block), constant_values=PAD)
    return FrameWindowMask(pad(self.q_frame, block_q), pad(self.k_frame, block_k),
                           self.frame_window)


def _frames(frames, name: str) -> np.ndarray:
  if isinstance(frames, jax.core.Tracer):
    raise TypeError(f'{name} must be concrete host metadata (numpy), not a traced array: the '
                    'block table is computed from it when the program is built')
  frames = np.asarray(frames)
  if frames.ndim != 1 or not np.issubdtype(frames.dtype, np.integer):
    raise ValueError(f'{name} must be a 1-D integer array, got {frames.dtype} {frames.shape}')
  if frames.size and frames.min() < PAD:
    raise ValueError(f'{name} holds {frames.min()}; frame ids are >= 0, {GLOBAL} (global) or '
                     f'{PAD} (padding)')
  return frames.astype(np.int32)


def visible(q_frame, k_frame, frame_window: int, xp=jnp):
  """Element mask of the frame window (broadcasting q_frame against k_frame)."""
  real = (q_frame != PAD) & (k_frame != PAD)
  near = xp.abs(q_frame - k_frame) <= frame_window
  return real & ((q_frame == GLOBAL) | (k_frame == GLOBAL) | near)


@struct.dataclass
class GlobalKV:
  """A small extra key/value set merged into the same softmax (MARS-Cache's anchors).

  `frame` is each global key's frame id in the main sequence: the key is visible to query q only
  where the frame-window mask does not already show it.
  """

  k: jax.Array  # [B, A, Hkv, D]
  v: jax.Array  # [B, A, Hkv, D]
  frame: jax.Array  # [B, A] int32
  valid: jax.Array  # [B, A] bool


class BlockTable(NamedTuple):
  """For each query block, the key blocks to visit (host numpy).

  indices [num_q_blocks, max_visits]: visited key block ids in increasing order, the tail padded
  by repeating the last one (so a pipelined kernel fetches nothing new); counts [num_q_blocks].
  """

  indices: np.ndarray
  counts: np.ndarray
  block_q: int
  block_k: int
  num_k_blocks: int

  @property
  def density(self) -> float:
    """Fraction of (query block, key block) pairs visited."""
    return float(self.counts.sum()) / max(1, len(self.counts) * self.num_k_blocks)


def _block_summary(frames: np.ndarray, block: int):
  blocks = frames.reshape(-1, block)
  is_frame = blocks >= 0
  has_global = (blocks == GLOBAL).any(axis=1)
  has_frame = is_frame.any(axis=1)
  lo = np.where(is_frame, blocks, np.iinfo(np.int32).max).min(axis=1)
  hi = np.where(is_frame, blocks, np.iinfo(np.int32).min).max(axis=1)
  return has_global, has_frame, lo, hi


def block_table(mask: FrameWindowMask, block_q: int, block_k: int) -> BlockTable:
  """The key blocks each query block must visit to see every visible key.

  Lq and Lk must be multiples of the block sizes (`pad_to_blocks`). A block pair is visited when
  one side holds a global token and the other a real one, or when their frame ranges come within
  the frame window: a superset of the pairs holding a visible element, and for contiguous frames
  (video tokens) exactly those pairs.
  """
  q_frame, k_frame, w = mask.q_frame, mask.k_frame, mask.frame_window
  if len(q_frame) % block_q or len(k_frame) % block_k:
    raise ValueError(f'lengths ({len(q_frame)}, {len(k_frame)}) are not multiples of the blocks '
                     f'({block_q}, {block_k}); pad with pad_to_blocks first')
  q_global, q_has_frame, q_lo, q_hi = _block_summary(q_frame, block_q)
  k_global, k_has_frame, k_lo, k_hi = _block_summary(k_frame, block_k)
  q_real = q_global | q_has_frame
  k_real = k_global | k_has_frame
  visit = (q_global[:, None] & k_real[None, :]) | (q_real[:, None] & k_global[None, :])
  visit |= (q_has_frame[:, None] & k_has_frame[None, :]
            & (k_lo[None, :] <= q_hi[:, None] + w) & (k_hi[None, :] >= q_lo[:, None] - w))
  counts = visit.sum(axis=1).astype(np.int32)
  max_visits = max(1, int(counts.max(initial=0)))
  indices = np.zeros((len(counts), max_visits), np.int32)
  for i, row in enumerate(visit):
    visited = np.flatnonzero(row)
    if len(visited):
      indices[i, :len(visited)] = visited
      indices[i, len(visited):] = visited[-1]
  return BlockTable(indices, counts, block_q, block_k, len(k_global))


# --- Partial results and their merge -------------------------------------------------------------


class Partial(NamedTuple):
  """Attention over a subset of keys: normalised output and the log-sum-exp of its scores.

  out [B, Lq, H, D] (zero where no key was visible); lse [B, H, Lq] float32 (-inf there).
  """

  out: jax.Array
  lse: jax.Array


def merge(a: Partial, b: Partial) -> Partial:
  """The softmax over the union of two disjoint key sets, from the softmax over each."""
  lse = jnp.logaddexp(a.lse, b.lse)
  safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
  wa = jnp.exp(a.lse - safe).transpose(0, 2, 1)[..., None]  # [B, Lq, H, 1]
  wb = jnp.exp(b.lse - safe).transpose(0, 2, 1)[..., None]
  out = a.out.astype(jnp.float32) * wa + b.out.astype(jnp.float32) * wb
  return Partial(out.astype(a.out.dtype), lse)


def _dense_partial(q, k, v, allowed) -> Partial:
  """Softmax attention where `allowed` [B, Lq, Lk] (broadcastable) says which keys are visible."""
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  q = q.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  scores = jnp.einsum('bqhgd,bkhd->bhgqk', q, k, preferred_element_type=jnp.float32)
  scores = scores * (head_dim ** -0.5)
  allowed = allowed[:, None, None]  # [B, 1, 1, Lq, Lk]
  scores = jnp.where(allowed, scores, -jnp.inf)
  lse = jax.nn.logsumexp(scores, axis=-1)  # [B, Hkv, G, Lq]
  safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
  probs = jnp.where(allowed, jnp.exp(scores - safe[..., None]), 0.0).astype(v.dtype)
  out = jnp.einsum('bhgqk,bkhd->bqhgd', probs, v)
  return Partial(out.reshape(batch, q_len, num_heads, head_dim),
                 lse.reshape(batch, num_heads, q_len))


def global_partial(q, q_frame: jax.Array, global_kv: GlobalKV, frame_window: int) -> Partial:
  """Attention of every query to the global keys its frame window does not already show."""
  shown = visible(q_frame[None, :, None], global_kv.frame[:, None, :], frame_window)
  allowed = global_kv.valid[:, None, :] & ~shown & (q_frame != PAD)[None, :, None]  # [B,Lq,A]
  # Many queries, a few keys: queries head-major [B, Hkv, G * Lq, D] as the left operand, so the
  # only transposes are of q's heads (contiguous rows) and of the small global set.
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = global_kv.k.shape[2]
  groups = num_heads // num_kv_heads
  queries = q.reshape(batch, q_len, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  queries = queries.reshape(batch, num_kv_heads, groups * q_len, head_dim)
  keys, values = (x.astype(q.dtype).transpose(0, 2, 1, 3) for x in (global_kv.k, global_kv.v))
  allowed = jnp.tile(allowed, (1, groups, 1))[:, None]  # [B, 1, G * Lq, A]
  scores = jnp.einsum('bhmd,bhad->bhma', queries, keys, preferred_element_type=jnp.float32)
  scores = jnp.where(allowed, scores * (head_dim ** -0.5), -jnp.inf)
  lse = jax.nn.logsumexp(scores, axis=-1)  # [B, Hkv, G * Lq]
  safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
  probs = jnp.where(allowed, jnp.exp(scores - safe[..., None]), 0.0).astype(values.dtype)
  out = jnp.einsum('bhma,bhad->bhmd', probs, values)
  out = out.reshape(batch, num_kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
  return Partial(out.reshape(batch, q_len, num_heads, head_dim),
                 lse.reshape(batch, num_heads, q_len))


# --- The op --------------------------------------------------------------------------------------

# Each implementation module provides
#   attention_partial(q, k, v, *, table, q_frame, k_frame, key_mask, frame_window, interpret)
#     -> Partial
# with q [B, Lq, H, D], k/v [B, Lk, Hkv, D] (lengths multiples of the table's blocks), q_frame
# [Lq] / k_frame [Lk] int32 and key_mask [B, Lk] bool device arrays; and BLOCK_Q, BLOCK_K, the
# block sizes it runs best with.
IMPLEMENTATIONS = {
    'xla_dense': 'vidlada_jax.attention_backends.block_sparse',
    'xla_gather': 'vidlada_jax.attention_backends.xla_gather',
    'pallas_gpu': 'vidlada_jax.attention_backends.gpu',
    'pallas_tpu': 'vidlada_jax.attention_backends.tpu',
}


# Implementations XLA can differentiate. The Pallas kernels have no derivative of their own: their
# backward is the VJP of `xla_gather` over the same block table (the same function, recomputed in
# plain XLA), so the training path can use them.
DIFFERENTIABLE = ('xla_dense', 'xla_gather')


def with_xla_backward(kernel):
  """`kernel.attention_partial` with a `custom_vjp` whose backward is xla_gather's VJP."""
  reference = get_implementation('xla_gather')

  def attention_partial(q, k, v, *, table, q_frame, k_frame, key_mask, frame_window,
                        interpret=False) -> Partial:
    @jax.custom_vjp
    def forward(q, k, v, q_frame, k_frame, key_mask):
      return kernel.attention_partial(q, k, v, table=table, q_frame=q_frame, k_frame=k_frame,
                                      key_mask=key_mask, frame_window=frame_window,
                                      interpret=interpret)

    def forward_with_residuals(*args):
      return forward(*args), args

    def backward(args, cotangent):
      q, k, v, q_frame, k_frame, key_mask = args
      recompute = lambda q, k, v: reference.attention_partial(
          q, k, v, table=table, q_frame=q_frame, k_frame=k_frame, key_mask=key_mask,
          frame_window=frame_window)
      _, vjp = jax.vjp(recompute, q, k, v)
      return (*vjp(cotangent), None, None, None)  # frames and key_mask take no gradient

    forward.defvjp(forward_with_residuals, backward)
    return forward(q, k, v, q_frame, k_frame, key_mask)

  return attention_partial


def get_implementation(name: str):
  """The module of implementation `name` (`attention_partial`, BLOCK_Q, BLOCK_K), imported on
  first use, so no backend needs importing before it is chosen."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f'unknown block-sparse attention implementation {name!r}; available: '
                     f'{", ".join(IMPLEMENTATIONS)}')
  return importlib.import_module(IMPLEMENTATIONS[name])


BLOCK_Q = BLOCK_K = 128


def attention_partial(q, k, v, *, table, q_frame, k_frame, key_mask, frame_window, interpret=False
                      ) -> Partial:
  """`xla_dense`: the reference. Builds the whole mask and ignores the table."""
  del table, interpret
  allowed = key_mask[:, None, :] & visible(q_frame[:, None], k_frame[None, :], frame_window)[None]
  return _dense_partial(q, k, v, allowed)


def pad_to_blocks(x: jax.Array, block: int, axis: int = 1, value=0) -> jax.Array:
  pad = -x.shape[axis] % block
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def block_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: FrameWindowMask,
    key_mask: jax.Array | None = None,
    global_kv: GlobalKV | None = None,
    implementation: str = 'xla_gather',
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool = False,
) -> jax.Array:
  """Frame-frame_window attention of q [B, Lq, H, D] over k/v [B, Lk, Hkv, D] -> [B, Lq, H, D].

  Only the key blocks the table lists are computed; `global_kv` joins the same softmax. Lengths
  need not be multiples of the blocks (rows are padded and the padding masked). Block sizes
  default to the implementation's own.
  """
  impl = get_implementation(implementation)
  block_q = block_q or impl.BLOCK_Q
  block_k = block_k or impl.BLOCK_K
  batch, q_len, num_heads, head_dim = q.shape
  k_len, num_kv_heads = k.shape[1], k.shape[2]
  if mask.q_frame.shape != (q_len,) or mask.k_frame.shape != (k_len,):
    raise ValueError(f'mask metadata ({mask.q_frame.shape}, {mask.k_frame.shape}) does not match '
                     f'the query and key lengths ({q_len}, {k_len})')
  if num_heads % num_kv_heads or k.shape != v.shape or k.shape[0] != batch:
    raise ValueError(f'incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}')
  if key_mask is None:
    key_mask = jnp.ones((batch, k_len), bool)
  padded = mask.padded(block_q, block_k)
  q_frame, k_frame = padded.q_frame, padded.k_frame
  table = block_table(padded, block_q, block_k)
  attention_partial = (impl.attention_partial if implementation in DIFFERENTIABLE
                       else with_xla_backward(impl))
  partial = attention_partial(
      pad_to_blocks(q, block_q), pad_to_blocks(k, block_k), pad_to_blocks(v, block_k),
      table=table, q_frame=jnp.asarray(q_frame), k_frame=jnp.asarray(k_frame),
      key_mask=pad_to_blocks(key_mask, block_k, value=False), frame_window=mask.frame_window,
      interpret=interpret)
  partial = Partial(partial.out[:, :q_len], partial.lse[:, :, :q_len])
  if global_kv is not None:
    partial = merge(partial, global_partial(q, jnp.asarray(mask.q_frame), global_kv,
                                            mask.frame_window))
  return partial.out.astype(q.dtype)


def reference_attention(q, k, v, *, mask: FrameWindowMask, key_mask=None,
                        global_kv: GlobalKV | None = None) -> jax.Array:
  """Independent dense reference: one softmax over [keys ++ visible global keys], no merge."""
  batch = q.shape[0]
  allowed = jnp.asarray(mask.dense())[None]
  if key_mask is not None:
    allowed = allowed & key_mask[:, None, :]
  allowed = jnp.broadcast_to(allowed, (batch,) + allowed.shape[1:])
  if global_kv is not None:
    q_frame = jnp.asarray(mask.q_frame)
    shown = visible(q_frame[None, :, None], global_kv.frame[:, None, :], mask.frame_window)
    allowed = jnp.concatenate([allowed, global_kv.valid[:, None, :] & ~shown], axis=-1)
    k = jnp.concatenate([k, global_kv.k.astype(k.dtype)], axis=1)
    v = jnp.concatenate([v, global_kv.v.astype(v.dtype)], axis=1)
  return _dense_partial(q, k, v, allowed).out.astype(q.dtype)
