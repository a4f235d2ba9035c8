"""LLaDA-8B: the bidirectional masked-diffusion language model (SPEC 2.1).

A Llama-style decoder without a causal mask: pre-norm blocks of multi-head attention with
rotate-half RoPE and a SwiGLU MLP, RMSNorm, no biases, untied input embedding and output head.
Parameter and module names follow the LLaDA-V checkpoint so the name map stays a table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vidlada_jax.config import LMConfig
from vidlada_jax.nn.attention import AttentionFn
from vidlada_jax.nn.layers import RMSNorm, apply_rope, logical, scan_layers, stacked

_INIT = nnx.initializers.normal(0.02)  # the reference's initializer_range


class LLaDAAttention(nnx.Module):

  def __init__(self, cfg: LMConfig, attend: AttentionFn, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.rope_theta = cfg.rope_theta
    self.attend = attend
    common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q_proj = nnx.LinearGeneral(
        cfg.hidden_size, (heads, head_dim),
        kernel_init=logical(_INIT, 'embed', 'heads', 'head_dim'), **common)
    self.k_proj = nnx.LinearGeneral(
        cfg.hidden_size, (kv_heads, head_dim),
        kernel_init=logical(_INIT, 'embed', 'kv_heads', 'head_dim'), **common)
    self.v_proj = nnx.LinearGeneral(
        cfg.hidden_size, (kv_heads, head_dim),
        kernel_init=logical(_INIT, 'embed', 'kv_heads', 'head_dim'), **common)
    self.o_proj = nnx.LinearGeneral(
        (heads, head_dim), cfg.hidden_size, axis=(-2, -1),
        kernel_init=logical(_INIT, 'heads', 'head_dim', 'embed'), **common)

  def __call__(self, x, positions, key_mask):
    q = apply_rope(self.q_proj(x), positions, self.rope_theta)
    k = apply_rope(self.k_proj(x), positions, self.rope_theta)
    v = self.v_proj(x)
    return self.o_proj(self.attend(q, k, v, key_mask=key_mask))


class LLaDAMLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: LMConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = nnx.Linear(
        cfg.hidden_size, cfg.intermediate_size, kernel_init=logical(_INIT, 'embed', 'mlp'), **common)
    self.up_proj = nnx.Linear(
        cfg.hidden_size, cfg.intermediate_size, kernel_init=logical(_INIT, 'embed', 'mlp'), **common)
    self.down_proj = nnx.Linear(
        cfg.intermediate_size, cfg.hidden_size, kernel_init=logical(_INIT, 'mlp', 'embed'), **common)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDABlock(nnx.Module):

  def __init__(self, cfg: LMConfig, attend: AttentionFn, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
    self.self_attn = LLaDAAttention(cfg, attend, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
    self.mlp = LLaDAMLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, positions, key_mask):
    h = x + self.self_attn(self.input_layernorm(x), positions, key_mask)
    return h + self.mlp(self.post_attention_layernorm(h))


class LLaDA(nnx.Module):
  """The language model. `embed` -> `__call__` (hidden states) -> `logits`, kept apart so that
  visual tokens can be spliced between the first two and the loss can take logits at a few
  positions only."""

  def __init__(
      self, cfg: LMConfig, attend: AttentionFn, *, dtype, param_dtype, remat: bool = False,
      rngs: nnx.Rngs):
    self.config = cfg
    self.remat = remat
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=logical(_INIT, 'vocab', 'embed'), rngs=rngs)
    self.layers = stacked(
        lambda r: LLaDABlock(cfg, attend, dtype=dtype, param_dtype=param_dtype, rngs=r),
        cfg.num_layers, rngs)
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
    self.lm_head = nnx.Linear(
        cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(_INIT, 'embed', 'vocab'), rngs=rngs)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return self.embed_tokens(input_ids)

  def __call__(
      self,
      embeddings: jax.Array,
      positions: jax.Array | None = None,
      key_mask: jax.Array | None = None,
  ) -> jax.Array:
    """Final-normed hidden states [B, L, hidden] of input embeddings [B, L, hidden].

    positions default to 0..L-1 (the reference); key_mask [B, L] hides padding keys.
    """
    batch, length = embeddings.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    x = scan_layers(self.layers, embeddings, positions, key_mask, remat=self.remat)
    return self.norm(x)

  def logits(self, hidden: jax.Array) -> jax.Array:
    return self.lm_head(hidden).astype(jnp.float32)
