"""Every attention backend computes the dense reference's function."""

import jax
import numpy as np
import pytest

from vidlada_jax.nn import attention


def inputs(q_len, k_len, heads, kv_heads, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (2, q_len, heads, 16))
  k = jax.random.normal(keys[1], (2, k_len, kv_heads, 16))
  v = jax.random.normal(keys[2], (2, k_len, kv_heads, 16))
  key_mask = jax.random.uniform(keys[3], (2, k_len)) > 0.3
  return q, k, v, key_mask


def test_dense_matches_a_direct_formula():
  q, k, v, key_mask = inputs(5, 7, 4, 2)
  out = attention.dense_xla_attention(q, k, v, key_mask=key_mask)
  q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
  k64, v64 = np.repeat(k64, 2, axis=2), np.repeat(v64, 2, axis=2)  # kv head h serves q heads 2h, 2h+1
  scores = np.einsum('bqhd,bkhd->bhqk', q64, k64) / 4.0
  scores = np.where(np.asarray(key_mask)[:, None, None, :], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum('bhqk,bkhd->bqhd', probs, v64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', attention.available_backends())
@pytest.mark.parametrize('q_len, heads, kv_heads, masked', [
    (300, 4, 4, False), (513, 4, 2, True), (64, 2, 1, True)])
def test_backend_matches_dense(name, q_len, heads, kv_heads, masked):
  q, k, v, key_mask = inputs(q_len, q_len + 11, heads, kv_heads, seed=q_len)
  key_mask = key_mask if masked else None
  expected = attention.dense_xla_attention(q, k, v, key_mask=key_mask)
  out = jax.jit(attention.get_backend(name))(q, k, v, key_mask=key_mask)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_named():
  with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
    attention.get_backend('flash')
