"""The attention op: every backend computes the dense reference's function, plain or with a
frame-window mask, and towers choose their backends separately."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vidlada_jax as vj
from vidlada_jax.attention_backends import block_sparse
from vidlada_jax.nn import attention

BACKENDS = [name for name in attention.available_backends() if name != 'auto']


def inputs(q_len, k_len, heads, kv_heads, seed=0, head_dim=16, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (2, q_len, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (2, k_len, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (2, k_len, kv_heads, head_dim), dtype)
  key_mask = jax.random.uniform(keys[3], (2, k_len)) > 0.3
  return q, k, v, key_mask


def test_dense_matches_a_direct_formula():
  q, k, v, key_mask = inputs(5, 7, 4, 2)
  out = attention.dense_xla_attention(q, k, v, key_mask=key_mask)
  q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
  # kv head h serves q heads 2h, 2h+1
  k64, v64 = np.repeat(k64, 2, axis=2), np.repeat(v64, 2, axis=2)
  scores = np.einsum('bqhd,bkhd->bhqk', q64, k64) / 4.0
  scores = np.where(np.asarray(key_mask)[:, None, None, :], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum('bhqk,bkhd->bqhd', probs, v64), rtol=1e-5, atol=1e-5)


def backend(name):
  return attention.get_backend(name, interpret=True)


SHAPES = [(300, 4, 4, False), (513, 4, 2, True), (64, 2, 1, True)]
INTERPRETED = ('pallas_gpu', 'pallas_tpu', 'splash')  # slow on CPU: the two smaller shapes


@pytest.mark.parametrize('name, q_len, heads, kv_heads, masked', [
    (name, *shape) for name in BACKENDS for shape in SHAPES
    if name not in INTERPRETED or shape[0] < 500])
def test_backend_matches_dense(name, q_len, heads, kv_heads, masked):
  if name == 'cudnn':  # cuDNN's adapter takes half precision only
    dtype, tolerance = jnp.bfloat16, 2e-2
  else:
    dtype, tolerance = jnp.float32, 1e-5
  q, k, v, key_mask = inputs(q_len, q_len + 11, heads, kv_heads, seed=q_len, dtype=dtype)
  key_mask = key_mask if masked else None
  expected = attention.dense_xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                           key_mask=key_mask)
  out = jax.jit(backend(name))(q, k, v, key_mask=key_mask)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=tolerance,
                             atol=tolerance)


@pytest.mark.parametrize('name', ['xla', 'xla_chunked', 'pallas_gpu', 'pallas_tpu'])
def test_frame_window_calls_match_the_reference(name):
  # 3 frames of 21 tokens, then 10 text tokens: visual queries run through the block table,
  # text queries densely; anchors join the softmax.
  frames = np.concatenate([np.repeat(np.arange(3), 21), np.full(10, block_sparse.GLOBAL)])
  mask = block_sparse.FrameWindowMask(frames, frames, frame_window=0)
  q, k, v, key_mask = inputs(len(frames), len(frames), 2, 2, seed=3)
  anchors = jnp.asarray([[5, 50], [30, 40]])
  global_kv = block_sparse.GlobalKV(
      k=jnp.take_along_axis(k, anchors[:, :, None, None], 1),
      v=jnp.take_along_axis(v, anchors[:, :, None, None], 1),
      frame=jnp.asarray(frames)[anchors], valid=jnp.ones((2, 2), bool))
  expected = block_sparse.reference_attention(q, k, v, mask=mask, key_mask=key_mask,
                                              global_kv=global_kv)
  out = backend(name)(q, k, v, key_mask=key_mask, mask=mask, global_kv=global_kv)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_named():
  with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
    attention.get_backend('flash')


@pytest.mark.parametrize('platform, dtype, lm, vision', [
    ('cpu', jnp.float32, 'xla_chunked', 'xla_chunked'),
    ('cpu', jnp.bfloat16, 'xla_chunked', 'xla_chunked'),
    ('gpu', jnp.bfloat16, 'cudnn', 'xla_chunked'),  # cuDNN refuses 729-token sequences
    ('gpu', jnp.float32, 'xla_chunked', 'xla_chunked'),
    ('cuda', jnp.bfloat16, 'cudnn', 'xla_chunked'),
    ('rocm', jnp.bfloat16, 'xla_chunked', 'xla_chunked'),  # cuDNN is NVIDIA's
    ('tpu', jnp.bfloat16, 'splash', 'xla_chunked'),
])
def test_auto_is_resolved_from_platform_and_dtype(platform, dtype, lm, vision):
  assert attention.get_backend('auto', platform=platform, dtype=dtype).name == lm
  vision_backend = attention.get_backend('auto', platform=platform, dtype=dtype, tower='vision')
  assert vision_backend.name == vision


def test_current_platform_tells_gpus_apart(monkeypatch):
  assert attention.current_platform() == jax.default_backend()  # 'cpu' here

  class Client:
    platform_version = 'rocm 6.2.0'

  class Device:
    client = Client()

  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(jax, 'devices', lambda: [Device()])
  assert attention.current_platform() == 'rocm'
  Client.platform_version = 'PJRT C API\ncuda 12080'
  assert attention.current_platform() == 'cuda'


def test_towers_choose_their_backends_separately():
  config = vj.model_config('tiny', attention='pallas_tpu', interpret_kernels=True)
  model = vj.init_model(config)
  assert model.lm.layers.self_attn.attend.name == 'pallas_tpu'
  assert model.vision_tower.layers.self_attn.attend.name == 'xla_chunked'  # auto on CPU


@pytest.mark.parametrize('name', ['pallas_gpu', 'pallas_tpu', 'xla'])
def test_model_runs_on_every_lm_backend(name):
  reference = vj.init_model(vj.model_config('tiny-lm'), seed=1)
  model = vj.init_model(vj.model_config('tiny-lm', attention=name, interpret_kernels=True), seed=1)
  ids = np.random.default_rng(0).integers(0, 126000, size=(1, 40))
  np.testing.assert_allclose(model.lm_logits(ids), reference.lm_logits(ids), rtol=1e-5, atol=1e-5)
