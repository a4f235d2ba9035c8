"""One attention op with pluggable backends.

Every attention layer of the model (LLaDA and SigLIP) calls an `AttentionFn` that was chosen once,
when the model was built, from `ModelConfig.attention`; layers never look at the platform. Backends
take the same arguments and compute the same function:

    q [B, Lq, H, D], k/v [B, Lk, Hkv, D], key_mask [B, Lk] bool or None  ->  [B, Lq, H, D]

with softmax in float32 and scale 1/sqrt(D). `Hkv` may divide `H` (grouped-query attention).
`key_mask` hides keys (padding in batched sampling); the reference itself never masks.

Block-sparse backends (MARS-Cache) register here with the same signature plus their sparsity
metadata, so the model code does not change when they arrive.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp


class AttentionFn(Protocol):

  def __call__(
      self, q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None
  ) -> jax.Array:
    ...


def dense_xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None
) -> jax.Array:
  """Reference attention: full score matrix, float32 softmax, probabilities cast to v's dtype."""
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  q = q.reshape(batch, q_len, num_kv_heads, groups, head_dim)
  scores = jnp.einsum('bqhgd,bkhd->bhgqk', q, k, preferred_element_type=jnp.float32)
  scores = scores * (head_dim ** -0.5)
  if key_mask is not None:
    scores = jnp.where(key_mask[:, None, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bhgqk,bkhd->bqhgd', probs, v)
  return out.reshape(batch, q_len, num_heads, head_dim)


_BACKENDS: dict[str, AttentionFn] = {
    'xla': dense_xla_attention,
}


def register_backend(name: str, fn: AttentionFn) -> None:
  """Makes `fn` selectable as `ModelConfig(attention=name)`."""
  _BACKENDS[name] = fn


def get_backend(name: str) -> AttentionFn:
  try:
    return _BACKENDS[name]
  except KeyError:
    raise ValueError(
        f'unknown attention backend {name!r}; available: {", ".join(sorted(_BACKENDS))}'
    ) from None


def available_backends() -> tuple[str, ...]:
  return tuple(sorted(_BACKENDS))

