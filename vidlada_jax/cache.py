"""The language model's per-layer cache, and the recompute plans a cache policy hands the model.

A cached forward pass does not run every layer over every row. For each layer it recomputes one
window of consecutive rows (a `RowWindow`; which window, layer by layer, is the plan's
`layer_window`): the window's input hidden states are read from the cache, its queries, keys and
values are computed (RoPE at the rows' absolute positions), its keys and values are written into
the layer's cached keys and values, and its queries attend to all of them, fresh and cached. The
window's outputs become the next layer's cached inputs. Rows outside the window keep what an
earlier pass computed.

So the cache holds, for every layer, the input hidden states of every row (`hidden[l]`; the last
entry is the last layer's output) and the keys and values of every row, and for the whole
sequence its RoPE table and key mask (fixed while it is decoded: computed once, not per step).
A policy (MARS-Cache, Fast-dLLM's dual cache) decides *what* to recompute at each step; the
model only computes.

    cache = model.lm.init_cache(embeddings, positions, key_mask)  # the whole sequence
    hidden, cache = model.lm(x, cache=cache, plan=plan)       # x: new inputs of some rows

Every array has logical axis names (`LMCache.logical_axes`), so a cache shards over a mesh like
the parameters do (`vidlada_jax.sharding.cache_shardings`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vidlada_jax.attention_backends.block_sparse import GLOBAL, GlobalKV
from vidlada_jax.nn.layers import RotaryTable


@struct.dataclass
class LMCache:
  hidden: jax.Array  # [layers + 1, B, L, E]: the input of each layer, then the last one's output
  keys: jax.Array  # [layers, B, Hkv, L, D], RoPE applied; head-major, as attention reads them
  values: jax.Array  # [layers, B, Hkv, L, D]
  rope: RotaryTable  # of every row: positions stay fixed while a sequence is decoded
  key_mask: jax.Array  # [B, L] bool: padding keys hidden
  anchors: jax.Array  # [layers, B, A] int32: rows last chosen as anchors (A = 0 without anchors)
  rows_computed: jax.Array  # [layers] int32: rows each layer recomputed since `init_cache`

  def logical_axes(self) -> 'LMCache':
    """The logical axis names of every field (mapped to mesh axes by a rule set)."""
    kv = ('layers', 'batch', 'kv_heads', 'cache_length', 'head_dim')
    rope = ('batch', 'cache_length', None, 'head_dim')
    return LMCache(
        hidden=('layers', 'batch', 'cache_length', 'activation_embed'),
        keys=kv, values=kv, rope=RotaryTable(rope, rope), key_mask=('batch', 'cache_length'),
        anchors=('layers', 'batch', None), rows_computed=('layers',))

  @property
  def length(self) -> int:
    return self.hidden.shape[2]


@dataclasses.dataclass(frozen=True)
class AnchorSearch:
  """Anchor tokens: visual keys every visual query sees, whatever its frame window.

  `queries` visual queries are sampled at equal stride; their attention (a cheap proxy: m rows
  instead of all) over every visual key is averaged over heads and sampled queries, and the
  `count` most attended keys become the anchors.
  """

  queries: int = 128
  count: int = 64

  def __post_init__(self):
    if self.queries < 1 or self.count < 1:
      raise ValueError(f'anchor search needs queries >= 1 and count >= 1, got {self}')

  def search(self, q: jax.Array, q_start: int, keys: jax.Array, key_mask: jax.Array,
             frame_ids: np.ndarray) -> jax.Array:
    """Anchor rows [B, count] from queries q [B, S, H, D] of rows [q_start, q_start + S) and the
    keys [B, L, Hkv, D] of all rows."""
    visual_rows = np.flatnonzero(frame_ids >= 0)
    picks = visual_rows[np.linspace(0, len(visual_rows) - 1, min(self.queries, len(visual_rows)))
                        .round().astype(int)]
    picks = np.unique(picks) - q_start
    if picks.min() < 0 or picks.max() >= q.shape[1]:
      raise ValueError('anchor search samples visual queries, so the window must hold every '
                       'visual row')
    batch, _, num_heads, head_dim = q.shape
    num_kv_heads = keys.shape[2]
    groups = num_heads // num_kv_heads
    sampled = q[:, picks].reshape(batch, len(picks), num_kv_heads, groups, head_dim)
    sampled = sampled.transpose(0, 2, 3, 1, 4).reshape(batch, num_kv_heads, -1, head_dim)
    # Key-major scores [B, Hkv, Nv, G * m], as `few_queries_attention` lays them out: the keys,
    # head-major in the cache, are read without a transpose.
    visual_keys = _rows(keys, visual_rows).transpose(0, 2, 1, 3)
    scores = jnp.einsum('bhkd,bhmd->bhkm', visual_keys, sampled,
                        preferred_element_type=jnp.float32) * head_dim ** -0.5
    valid = _rows(key_mask, visual_rows)[:, None, :, None]
    probs = jax.nn.softmax(jnp.where(valid, scores, -jnp.inf), axis=2)
    attention = jnp.where(valid[:, 0, :, 0], probs.mean(axis=(1, 3)), -1.0)  # [B, Nv]
    count = min(self.count, len(visual_rows))
    top = jax.lax.top_k(attention, count)[1]
    return jnp.asarray(visual_rows, jnp.int32)[top]

  @staticmethod
  def gather(rows: jax.Array, keys: jax.Array, values: jax.Array, key_mask: jax.Array,
             frame_ids: np.ndarray) -> GlobalKV:
    """The anchors' keys and values, with their frame ids, as the attention op's global set."""
    take = lambda x: jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
    return GlobalKV(k=take(keys), v=take(values),
                    frame=jnp.asarray(frame_ids, jnp.int32)[rows],
                    valid=jnp.take_along_axis(key_mask, rows, axis=1))


def _rows(x: jax.Array, rows: np.ndarray) -> jax.Array:
  """x[:, rows] for static rows: a slice when they are consecutive (no gather)."""
  if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
    return x[:, rows[0]:rows[-1] + 1]
  return jnp.take(x, jnp.asarray(rows), axis=1)


@dataclasses.dataclass(frozen=True)
class RowWindow:
  """Rows [start, start + size) that one layer recomputes, and how their queries attend.

  `frame_window` w: frame-wise chunk attention: a visual query of frame n sees the keys of
  frames n - w .. n + w and every global (text, response) key; global queries see everything.
  `anchors`: also search anchors (`AnchorSearch`) and let every visual query see them. Both need
  a static `start` and the plan's `frame_ids`.
  """

  start: int | jax.Array
  size: int
  frame_window: int | None = None
  anchors: AnchorSearch | None = None

  def __post_init__(self):
    if self.anchors is not None and self.frame_window is None:
      raise ValueError('anchors extend chunk attention: set frame_window too')
    if (self.frame_window is not None) and not isinstance(self.start, (int, np.integer)):
      raise ValueError('a window with chunk attention needs a static start (its queries\' frame '
                       'ids decide the block table)')


@dataclasses.dataclass(frozen=True)
class Recompute:
  """What one cached forward pass recomputes (built by a cache policy inside the jitted step).

  windows: the row windows a layer may recompute; layer_window [layers] int32 picks one per layer
  (so the step is one program whatever the schedule says). x, the new input embeddings, replaces
  rows [input_start, input_start + len(x)) of layer 0's input; the final normed hidden states of
  rows [output_start, output_start + output_size) are returned, so those rows must be recomputed
  at every layer. frame_ids [L] (static; GLOBAL for text) is the metadata of chunk attention.
  """

  windows: tuple[RowWindow, ...]
  layer_window: jax.Array
  input_start: int | jax.Array
  output_start: int | jax.Array
  output_size: int
  frame_ids: np.ndarray | None = None

  def __post_init__(self):
    needs_frames = any(w.frame_window is not None for w in self.windows)
    if needs_frames and self.frame_ids is None:
      raise ValueError('chunk attention needs frame_ids')


def frame_ids_of(num_visual: int, tokens_per_frame: int, length: int) -> np.ndarray:
  """Frame ids of a segment-major sequence: `num_visual` visual rows first, the rest global."""
  ids = np.full(length, GLOBAL, np.int32)
  ids[:num_visual] = np.arange(num_visual) // tokens_per_frame
  return ids
