"""One attention op with pluggable backends.

Every attention layer of the model (LLaDA and SigLIP) calls an `AttentionFn` that was chosen once,
when the model was built, from `ModelConfig.attention`; layers never look at the platform. Backends
take the same arguments and compute the same function:

    q [B, Lq, H, D], k/v [B, Lk, Hkv, D], key_mask [B, Lk] bool or None  ->  [B, Lq, H, D]

with softmax in float32 and scale 1/sqrt(D). `Hkv` may divide `H` (grouped-query attention).
`key_mask` hides keys (padding in batched sampling); the reference itself never masks.

  xla          the dense reference: the full [Lq, Lk] score matrix
  xla_chunked  the same math a block of queries at a time (the default: bounded memory, faster
               on CPUs)

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


def chunked_xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None,
    query_chunk: int = 256,
) -> jax.Array:
  """The same computation as `dense_xla_attention`, `query_chunk` queries at a time.

  Each chunk's scores [B, H, chunk, Lk] are a slice of the dense ones, computed and normalised
  the same way (so the results agree to float rounding of the matmuls), but the full [Lq, Lk]
  matrix never exists: memory is bounded for long video sequences on accelerators, and on CPUs
  the working set stays in cache (about 3x faster than dense at 2k tokens). Head-major layout
  makes both products plain batched matmuls.
  """
  batch, q_len, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  groups = num_heads // num_kv_heads
  if q_len <= query_chunk:
    return dense_xla_attention(q, k, v, key_mask=key_mask)
  pad = -q_len % query_chunk
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  q = q.reshape(batch, -1, query_chunk, num_kv_heads, groups, head_dim).transpose(1, 0, 3, 4, 2, 5)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Hkv, Lk, D]

  def attend_chunk(q_chunk):  # [B, Hkv, G, chunk, D]
    scores = jnp.einsum('bhgqd,bhkd->bhgqk', q_chunk, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim ** -0.5)
    if key_mask is not None:
      scores = jnp.where(key_mask[:, None, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum('bhgqk,bhkd->bhgqd', probs, v)

  out = jax.lax.map(attend_chunk, q)  # [chunks, B, Hkv, G, chunk, D]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, -1, num_heads, head_dim)
  return out[:, :q_len]


_BACKENDS: dict[str, AttentionFn] = {
    'xla': dense_xla_attention,
    'xla_chunked': chunked_xla_attention,
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

