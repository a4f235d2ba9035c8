"""Dense attention fast paths: vendor kernels behind the model's dense attention signature.

Each adapter computes `vidlada_jax.nn.attention.dense_xla_attention`'s function,

    fn(q [B, Lq, H, D], k/v [B, Lk, Hkv, D], *, key_mask [B, Lk] bool or None) -> [B, Lq, H, D]

(softmax in float32, scale 1/sqrt(D), Hkv dividing H, key_mask hiding padding keys anywhere in
the sequence: prompts are left-padded), so either can be registered as an attention backend.

  cudnn_attention   cuDNN flash attention through `jax.nn.dot_product_attention` (NVIDIA GPUs).
                    float16/bfloat16 only; head_dim a multiple of 8, at most 256 (128 before
                    Hopper). key_mask becomes a [B, 1, Lq, Lk] boolean mask, which cuDNN takes
                    as an additive bias (materialised: 2 bytes per batch row and query-key pair),
                    since its sequence-length padding covers right padding only. It does not
                    lower without a CUDA jaxlib (cuDNN is probed while tracing), so CPU tests run
                    the same adapter code with `implementation='xla'`.
  splash_attention  TPU splash attention (a Pallas Mosaic kernel), vmapped over the batch.
                    key_mask becomes splash segment ids (real keys 1, padding 0, every query 1),
                    which mask element-wise, so left padding is exact. Any dtype and head_dim
                    (128 and SigLIP's 72 are tested, interpreted and lowered for TPU; the compiled
                    speed under 128 is unmeasured). Lengths are padded to multiples of 128 inside
                    (padded keys get segment 0); blocks are the largest of 512/256/128 dividing
                    the padded lengths. q is scaled by 1/sqrt(D) before the kernel (splash does
                    not scale), rounded once to q's dtype, and splash multiplies float32
                    probabilities with v in float32 where the reference first casts them to v's
                    dtype: differences within bf16 rounding. A query whose keys are all hidden
                    averages v over the padded keys too (the reference: over Lk only); no real
                    prompt is all padding. `interpret=True` runs it in Pallas' interpreter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vidlada_jax.attention_backends import _tpu_api

CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)
CUDNN_MAX_HEAD_DIM = 256  # Hopper and later; cuDNN itself refuses more than 128 on older GPUs


def cudnn_attention(q, k, v, *, key_mask=None, implementation: str = 'cudnn') -> jax.Array:
  """Dense attention through `jax.nn.dot_product_attention(implementation=...)`.

  `implementation='cudnn'` (the default) runs cuDNN's fused kernel and checks its limits first,
  with an error naming the one an input breaks; 'xla' runs the same call on any platform.
  """
  batch, q_len, _, head_dim = q.shape
  if implementation == 'cudnn':
    _check_cudnn_inputs(q, k, v)
  mask = None
  if key_mask is not None:
    # cuDNN needs the query axis spelled out (its bias must be [.., Lq, Lk]); heads broadcast.
    mask = jnp.broadcast_to(key_mask[:, None, None, :], (batch, 1, q_len, k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim ** -0.5,
                                      implementation=implementation)


def _check_cudnn_inputs(q, k, v) -> None:
  dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
  if len(dtypes) != 1 or dtypes.pop() not in map(jnp.dtype, CUDNN_DTYPES):
    raise ValueError(f'cuDNN attention takes float16 or bfloat16 q, k, v of one dtype, got '
                     f'{q.dtype}, {k.dtype}, {v.dtype}; use the xla backend for float32')
  head_dim = q.shape[-1]
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    raise ValueError(f'cuDNN attention needs head_dim a multiple of 8 and at most '
                     f'{CUDNN_MAX_HEAD_DIM} (128 before Hopper), got {head_dim}')


SPLASH_PAD = 128  # splash blocks are multiples of 128 (a TPU vector register's lanes)


def splash_attention(q, k, v, *, key_mask=None, interpret=False) -> jax.Array:
  """Dense attention with TPU splash attention; `interpret=True` for the CPU interpreter."""
  batch, q_len, num_heads, head_dim = q.shape
  k_len = k.shape[1]
  if key_mask is None:
    key_mask = jnp.ones((batch, k_len), bool)
  q_pad, k_pad = -q_len % SPLASH_PAD, -k_len % SPLASH_PAD
  q = jnp.pad(q, ((0, 0), (0, q_pad), (0, 0), (0, 0)))
  k = jnp.pad(k, ((0, 0), (0, k_pad), (0, 0), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, k_pad), (0, 0), (0, 0)))
  kv_segment = jnp.pad(key_mask, ((0, 0), (0, k_pad))).astype(jnp.int32)  # padding: segment 0
  q_segment = jnp.ones((batch, q_len + q_pad), jnp.int32)
  scaled_q = (q.astype(jnp.float32) * head_dim ** -0.5).astype(q.dtype)
  attend = _tpu_api.splash_mha(
      num_heads, q_len + q_pad, k_len + k_pad, _splash_block(q_len + q_pad),
      _splash_block(k_len + k_pad), interpret)
  head_major = lambda x: x.transpose(0, 2, 1, 3)
  out = jax.vmap(attend)(head_major(scaled_q), head_major(k), head_major(v), q_segment,
                         kv_segment)
  return head_major(out)[:, :q_len].astype(v.dtype)


def _splash_block(length: int) -> int:
  return next(b for b in (512, 256, SPLASH_PAD) if length % b == 0)

