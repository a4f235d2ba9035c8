"""LLaDA-8B: the bidirectional masked-diffusion language model (SPEC 2.1).

A Llama-style decoder without a causal mask: pre-norm blocks of multi-head attention with
rotate-half RoPE and a SwiGLU MLP, RMSNorm, no biases, untied input embedding and output head.
Parameter and module names follow the LLaDA-V checkpoint so the name map stays a table.

Attention is split into projections (`queries`, `keys_values`, RoPE applied) and `attend`, so a
cached forward pass (`vidlada_jax.cache`) can recompute the queries of a few rows against keys
that are partly cached. RoPE tables are computed once per forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidlada_jax.attention_backends.block_sparse import FrameWindowMask
from vidlada_jax.cache import AnchorSearch, LMCache, Recompute, RowWindow
from vidlada_jax.config import LMConfig
from vidlada_jax.nn.attention import Attention
from vidlada_jax.nn.layers import (ACTIVATION_AXES, RMSNorm, RotaryTable, apply_rope, logical,
                                   scan_layers, stacked)



class LLaDAAttention(nnx.Module):

  def __init__(self, cfg: LMConfig, attend: Attention, *, dtype, param_dtype, rngs: nnx.Rngs):
    weights = nnx.initializers.normal(cfg.initializer_range)
    self.attend = attend
    common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q_proj = nnx.LinearGeneral(
        cfg.hidden_size, (heads, head_dim),
        kernel_init=logical(weights, 'embed', 'heads', 'head_dim'), **common)
    self.k_proj = nnx.LinearGeneral(
        cfg.hidden_size, (kv_heads, head_dim),
        kernel_init=logical(weights, 'embed', 'kv_heads', 'head_dim'), **common)
    self.v_proj = nnx.LinearGeneral(
        cfg.hidden_size, (kv_heads, head_dim),
        kernel_init=logical(weights, 'embed', 'kv_heads', 'head_dim'), **common)
    self.o_proj = nnx.LinearGeneral(
        (heads, head_dim), cfg.hidden_size, axis=(-2, -1),
        kernel_init=logical(weights, 'heads', 'head_dim', 'embed'), **common)

  def queries(self, x, rope: RotaryTable):
    return apply_rope(self.q_proj(x), rope)

  def keys_values(self, x, rope: RotaryTable):
    return apply_rope(self.k_proj(x), rope), self.v_proj(x)

  def __call__(self, x, rope: RotaryTable, key_mask):
    """Self-attention of every row over every row."""
    k, v = self.keys_values(x, rope)
    return self.o_proj(self.attend(self.queries(x, rope), k, v, key_mask=key_mask))


class LLaDAMLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: LMConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    weights = nnx.initializers.normal(cfg.initializer_range)
    common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size,
                                kernel_init=logical(weights, 'embed', 'mlp'), **common)
    self.up_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size,
                              kernel_init=logical(weights, 'embed', 'mlp'), **common)
    self.down_proj = nnx.Linear(cfg.intermediate_size, cfg.hidden_size,
                                kernel_init=logical(weights, 'mlp', 'embed'), **common)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDABlock(nnx.Module):

  def __init__(self, cfg: LMConfig, attend: Attention, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
    self.self_attn = LLaDAAttention(cfg, attend, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps,
                                            param_dtype=param_dtype)
    self.mlp = LLaDAMLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, rope: RotaryTable, key_mask):
    h = x + self.self_attn(self.input_layernorm(x), rope, key_mask)
    return h + self.mlp(self.post_attention_layernorm(h))

  def recompute(self, cache: LMCache, layer, window: RowWindow,
                frame_ids: np.ndarray | None) -> LMCache:
    """Layer `layer` (this block) over the rows of `window` only, updating the cache in place.

    The rows' inputs come from the cache; their fresh keys and values replace the cached ones, and
    their queries attend to all keys; their outputs become the next layer's cached inputs.
    """
    start, size = window.start, window.size
    batch, _, width = cache.hidden.shape[1:]
    x = jax.lax.dynamic_slice(cache.hidden, (layer, 0, start, 0), (1, batch, size, width))[0]
    h = self.input_layernorm(x)
    rows_rope = cache.rope.rows(start, size)
    q = self.self_attn.queries(h, rows_rope)
    k_rows, v_rows = self.self_attn.keys_values(h, rows_rope)
    write = lambda stack, rows: jax.lax.dynamic_update_slice(
        stack, rows.transpose(0, 2, 1, 3)[None], (layer, 0, 0, start, 0))
    keys, values = write(cache.keys, k_rows), write(cache.values, v_rows)
    # The attention op takes [B, L, Hkv, D]: a transposed view of the head-major cache.
    read = lambda stack: jax.lax.dynamic_index_in_dim(stack, layer, keepdims=False).transpose(
        0, 2, 1, 3)
    k_all, v_all = read(keys), read(values)
    key_mask = cache.key_mask

    mask = global_kv = None
    anchors = cache.anchors
    if window.frame_window is not None:
      mask = FrameWindowMask(frame_ids[start:start + size], frame_ids, window.frame_window)
    if window.anchors is not None:
      rows = window.anchors.search(q, start, k_all, key_mask, frame_ids)
      anchors = jax.lax.dynamic_update_slice(anchors, rows[None], (layer, 0, 0))
      global_kv = AnchorSearch.gather(rows, k_all, v_all, key_mask, frame_ids)
    attended = self.self_attn.attend(q, k_all, v_all, key_mask=key_mask, mask=mask,
                                     global_kv=global_kv)
    h = x + self.self_attn.o_proj(attended)
    out = h + self.mlp(self.post_attention_layernorm(h))
    return cache.replace(
        hidden=jax.lax.dynamic_update_slice(cache.hidden, out[None], (layer + 1, 0, start, 0)),
        keys=keys, values=values, anchors=anchors,
        rows_computed=cache.rows_computed.at[layer].add(size))


class LLaDA(nnx.Module):
  """The language model. `embed` -> `__call__` (hidden states) -> `logits`, kept apart so that
  visual tokens can be spliced between the first two and the loss can take logits at a few
  positions only."""

  def __init__(
      self, cfg: LMConfig, attend: Attention, *, dtype, param_dtype, remat_policy=None,
      rngs: nnx.Rngs):
    weights = nnx.initializers.normal(cfg.initializer_range)
    self.config = cfg
    self.remat_policy = remat_policy
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=logical(weights, 'vocab', 'embed'), rngs=rngs)
    self.layers = stacked(
        lambda r: LLaDABlock(cfg, attend, dtype=dtype, param_dtype=param_dtype, rngs=r),
        cfg.num_layers, rngs)
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
    self.lm_head = nnx.Linear(
        cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(weights, 'embed', 'vocab'), rngs=rngs)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return self.embed_tokens(input_ids)

  def __call__(
      self,
      embeddings: jax.Array,
      positions: jax.Array | None = None,
      key_mask: jax.Array | None = None,
      *,
      cache: LMCache | None = None,
      plan: Recompute | None = None,
  ):
    """Final-normed hidden states of input embeddings [B, L, hidden].

    positions [B, L] default to 0..L-1 (the reference); key_mask [B, L] hides padding keys.

    With a `cache` (see `vidlada_jax.cache`), returns `(hidden, new_cache)` as gemma's sampler
    does: `embeddings` are then the new inputs of rows [plan.input_start, ...) only (positions
    and the key mask of all rows are in the cache), each layer recomputes the rows its plan
    window names, and `hidden` holds the rows [plan.output_start, + plan.output_size).
    """
    if cache is not None:
      return self._cached(embeddings, positions, key_mask, cache, plan)
    batch, length = embeddings.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    rope = RotaryTable.of(positions, self.config.head_dim, self.config.rope_theta)
    x = scan_layers(self.layers, embeddings, rope, key_mask, remat_policy=self.remat_policy,
                    carry_axes=ACTIVATION_AXES)
    return self.norm(x)

  def init_cache(self, embeddings: jax.Array, positions: jax.Array | None = None,
                 key_mask: jax.Array | None = None, *, num_anchors: int = 0) -> LMCache:
    """An empty cache for the sequence embeddings [B, L, hidden] (layer 0's inputs) at
    `positions` [B, L] (default 0..L-1) with padding keys hidden by `key_mask` [B, L]; the first
    pass must recompute every row (as a policy's first step does)."""
    cfg = self.config
    batch, length, width = embeddings.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if key_mask is None:
      key_mask = jnp.ones((batch, length), bool)
    layers, dtype = cfg.num_layers, embeddings.dtype
    kv_shape = (layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
    hidden = jnp.zeros((layers + 1, batch, length, width), dtype).at[0].set(embeddings)
    return LMCache(hidden=hidden, keys=jnp.zeros(kv_shape, dtype),
                   values=jnp.zeros(kv_shape, dtype),
                   rope=RotaryTable.of(positions, cfg.head_dim, cfg.rope_theta),
                   key_mask=key_mask.astype(bool),
                   anchors=jnp.zeros((layers, batch, num_anchors), jnp.int32),
                   rows_computed=jnp.zeros(layers, jnp.int32))

  def _cached(self, x, positions, key_mask, cache: LMCache, plan: Recompute):
    if plan is None:
      raise ValueError('a cached forward pass needs a plan (what each layer recomputes)')
    if positions is not None or key_mask is not None:
      raise ValueError('a cached forward pass takes the positions and key mask of its sequence '
                       'from the cache (init_cache); do not pass them')
    inputs = jax.lax.dynamic_update_slice(cache.hidden, x[None].astype(cache.hidden.dtype),
                                          (0, 0, plan.input_start, 0))
    cache = cache.replace(hidden=inputs)

    def layer_step(carry, xs):
      cache, index = carry
      layer_state, window_index = xs
      layer = nnx.merge(graphdef, layer_state)
      for i, window in enumerate(plan.windows):
        recompute = lambda c, w=window: layer.recompute(c, index, w, plan.frame_ids)
        cache = recompute(cache) if len(plan.windows) == 1 else _run_if(window_index == i,
                                                                        recompute, cache)
      return (cache, index + 1), None

    # The scan's per-layer inputs are the layer's parameters and its recompute decision (data:
    # one program whatever the schedule); the cache rides in the carry, updated in place.
    graphdef, stacked = nnx.split(self.layers)
    (cache, _), _ = jax.lax.scan(layer_step, (cache, jnp.int32(0)),
                                 (stacked, jnp.asarray(plan.layer_window, jnp.int32)))
    batch, width = x.shape[0], x.shape[-1]
    out = jax.lax.dynamic_slice(cache.hidden, (self.config.num_layers, 0, plan.output_start, 0),
                                (1, batch, plan.output_size, width))[0]
    return self.norm(out), cache

  def logits(self, hidden: jax.Array) -> jax.Array:
    return self.lm_head(hidden).astype(jnp.float32)


def _run_if(predicate, fn, operand):
  """fn(operand) if predicate else operand, as a while loop of zero or one trip.

  Not `lax.cond`: XLA copies a conditional's operands, and here the operand is the whole cache
  (about 10 GB for the 8B model at 64 frames), which would cost more than the recompute it skips.
  A while loop updates its carry in place.
  """
  def body(state):
    trips, value = state
    return trips + 1, fn(value)

  return jax.lax.while_loop(lambda state: state[0] < predicate.astype(jnp.int32), body,
                            (jnp.int32(0), operand))[1]
