"""The dense fast paths (cuDNN, TPU splash) compute `dense_xla_attention`'s function.

No GPU or TPU here: the cuDNN adapter runs its exact code with `implementation='xla'` (cuDNN's own
lowering probes for a CUDA jaxlib, so no CUDA lowering check is possible on this install), splash
runs under the Pallas interpreter and is lowered for TPU with `jax.export`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidlada_jax.attention_backends import dense
from vidlada_jax.nn.attention import dense_xla_attention


def inputs(q_len, k_len, heads, kv_heads, head_dim=128, dtype=jnp.float32, pads=(0, 37), seed=0):
  """q, k, v for two sequences, and the key_mask of prompts left-padded by `pads` tokens."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (2, q_len, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (2, k_len, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (2, k_len, kv_heads, head_dim), dtype)
  key_mask = jnp.asarray(np.arange(k_len)[None, :] >= np.asarray(pads)[:, None])
  return q, k, v, key_mask


def errors(out, q, k, v, key_mask):
  """(error of out, error of the reference in out's dtype), both against float32 inputs."""
  exact = dense_xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)), key_mask=key_mask)
  reference = dense_xla_attention(q, k, v, key_mask=key_mask)
  error = lambda x: float(jnp.abs(x.astype(jnp.float32) - exact).max())
  return error(out), error(reference)


# --- cuDNN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize('masked', [True, False])
@pytest.mark.parametrize('q_len, k_len, heads, kv_heads', [(200, 200, 4, 2), (64, 150, 2, 2)])
def test_cudnn_adapter_matches_dense(q_len, k_len, heads, kv_heads, masked):
  q, k, v, key_mask = inputs(q_len, k_len, heads, kv_heads)
  key_mask = key_mask if masked else None
  out = jax.jit(lambda *a: dense.cudnn_attention(*a, key_mask=key_mask, implementation='xla'))(
      q, k, v)
  np.testing.assert_allclose(out, dense_xla_attention(q, k, v, key_mask=key_mask),
                             rtol=1e-5, atol=1e-5)


def test_cudnn_adapter_bfloat16_error_is_the_references_own():
  q, k, v, key_mask = inputs(200, 200, 4, 2, dtype=jnp.bfloat16)
  out = dense.cudnn_attention(q, k, v, key_mask=key_mask, implementation='xla')
  assert out.dtype == jnp.bfloat16
  error, reference_error = errors(out, q, k, v, key_mask)
  assert error <= 1.5 * reference_error  # jax's XLA path makes the reference's roundings


@pytest.mark.parametrize('dtypes, head_dim, message', [
    ((jnp.float32,) * 3, 128, 'float16 or bfloat16'),
    ((jnp.bfloat16, jnp.bfloat16, jnp.float16), 128, 'one dtype'),
    ((jnp.bfloat16,) * 3, 60, 'multiple of 8'),
    ((jnp.float16,) * 3, 264, 'at most 256'),
])
def test_cudnn_names_the_limit_an_input_breaks(dtypes, head_dim, message):
  q, k, v = (jnp.zeros((1, 16, 2, head_dim), dtype) for dtype in dtypes)
  with pytest.raises(ValueError, match=message):
    dense.cudnn_attention(q, k, v)


# --- Splash --------------------------------------------------------------------------------------


@pytest.mark.parametrize('masked', [True, False])
@pytest.mark.parametrize('q_len, k_len, heads, kv_heads, head_dim', [
    (200, 200, 4, 2, 128), (128, 300, 2, 1, 128), (100, 100, 2, 2, 72)])
def test_splash_matches_dense(q_len, k_len, heads, kv_heads, head_dim, masked):
  q, k, v, key_mask = inputs(q_len, k_len, heads, kv_heads, head_dim)
  key_mask = key_mask if masked else None
  out = dense.splash_attention(q, k, v, key_mask=key_mask, interpret=True)
  np.testing.assert_allclose(out, dense_xla_attention(q, k, v, key_mask=key_mask),
                             rtol=1e-5, atol=1e-5)


def test_splash_bfloat16_error_is_the_references_own():
  q, k, v, key_mask = inputs(200, 200, 4, 2, dtype=jnp.bfloat16)
  out = dense.splash_attention(q, k, v, key_mask=key_mask, interpret=True)
  assert out.dtype == jnp.bfloat16
  error, reference_error = errors(out, q, k, v, key_mask)
  # Splash rounds q * D**-0.5 to bf16 and multiplies float32 probabilities with v; the reference
  # rounds the probabilities to bf16 instead: different roundings of the same size.
  assert error <= 1.5 * reference_error


def test_splash_gradients_match_dense():
  q, k, v, key_mask = inputs(100, 130, 2, 1, pads=(3, 40))
  cotangent = jax.random.normal(jax.random.key(7), q.shape)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, key_mask=key_mask) * cotangent)
  grads = jax.grad(loss(lambda *a, **kw: dense.splash_attention(*a, **kw, interpret=True)),
                   argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(loss(dense_xla_attention), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def tpu_shapes(dtype, length=1000, heads=8, kv_heads=2, head_dim=128):
  q = jax.ShapeDtypeStruct((2, length, heads, head_dim), dtype)
  kv = jax.ShapeDtypeStruct((2, length, kv_heads, head_dim), dtype)
  return q, kv, kv, jax.ShapeDtypeStruct((2, length), jnp.bool_)


@pytest.mark.parametrize('dtype, head_dim', [
    (jnp.bfloat16, 128), (jnp.float32, 128), (jnp.bfloat16, 72)])  # 72: SigLIP's head_dim
def test_splash_lowers_for_tpu(dtype, head_dim):
  attend = lambda q, k, v, key_mask: dense.splash_attention(q, k, v, key_mask=key_mask)
  exported = jax.export.export(jax.jit(attend), platforms=['tpu'])(
      *tpu_shapes(dtype, head_dim=head_dim))
  assert 'tpu_custom_call' in exported.mlir_module()
  assert exported.out_avals[0].shape == (2, 1000, 8, head_dim)


def test_splash_gradient_lowers_for_tpu():
  def loss(q, k, v, key_mask):
    return dense.splash_attention(q, k, v, key_mask=key_mask).astype(jnp.float32).sum()

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  exported = jax.export.export(grad, platforms=['tpu'])(*tpu_shapes(jnp.bfloat16))
  assert exported.mlir_module().count('tpu_custom_call') == 3  # forward, dq and dkv kernels
