"""Attention kernels on a mesh (per shard, under shard_map) and in the training path (gradients).

XLA cannot partition a Pallas (Mosaic, Triton), cuDNN or splash kernel, so those backends run on
each device's shard of the batch and heads. In interpret mode the kernels run through XLA on this
CPU, which lets a sharded decode on 8 simulated devices be compared with one device, and their
gradients (a custom VJP: the Pallas kernels have none of their own) with the dense reference's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vidlada_jax as vj
from tests.random_models import random_model
from vidlada_jax import sharding
from vidlada_jax.attention_backends import block_sparse
from vidlada_jax.attention_backends.block_sparse import GLOBAL, FrameWindowMask
from vidlada_jax.nn.attention import get_backend

GEN = dict(gen_length=4, block_length=4, steps=4)
KERNEL_BACKENDS = ('pallas_gpu', 'pallas_tpu', 'cudnn', 'splash')


@pytest.fixture(scope='module')
def video_prompt():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 126000, size=(2, 12)).astype(np.int32)
  ids[:, 3] = vj.TokenIds().image
  pixels = rng.uniform(-1, 1, size=(2, 1, 384, 384, 3)).astype(np.float32)
  return ids, pixels


@pytest.mark.parametrize('backend', KERNEL_BACKENDS)
def test_sharded_decode_runs_the_kernels_per_shard(backend, video_prompt):
  """fsdp 2 x tensor 2: the batch of 2 and the 2 heads (of 128) split; MARS-Cache's default runs the
  block-sparse kernel and the dense path both."""
  if backend == 'splash':
    pytest.importorskip('jax.experimental.pallas.ops.tpu.splash_attention')
  ids, pixels = video_prompt
  model = random_model('tiny', seed=2, attention=backend, interpret_kernels=True,
                       lm=dict(num_layers=2, hidden_size=256, num_heads=2, num_kv_heads=2,
                               intermediate_size=256))
  policy = vj.MarsCache(pyramid=(2, 1), visual_ratio=1)  # visual rows too, at the first step
  expected = vj.generate(model, ids, pixels, cache=policy, stop_ids=(), **GEN)
  mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=2), jax.devices()[:4])
  sharded = sharding.place(model, mesh, sharding.RULE_SETS['fsdp_tp'])
  sharded_policy = vj.MarsCache(pyramid=(2, 1), visual_ratio=1,
                                rules=sharding.RULE_SETS['fsdp_tp'])
  out = vj.generate(sharded, ids, pixels, cache=sharded_policy, stop_ids=(), **GEN)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
  assert len(set(np.asarray(expected.tokens).ravel().tolist())) > 2  # a varied decode

  # The kernels ran inside shard_map, over the batch and head axes.
  attend = get_backend(backend, interpret=True)
  q = jnp.ones((2, 16, 4, 128))
  k = v = jnp.ones((2, 16, 2, 128))
  with jax.set_mesh(mesh):
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: attend(q, k, v))(q, k, v))
  assert 'shard_map' in jaxpr and "'fsdp'" in jaxpr and "'tensor'" in jaxpr
  assert 'shard_map' not in str(jax.make_jaxpr(lambda q, k, v: attend(q, k, v))(q, k, v))


def test_portable_backends_are_left_to_xla():
  mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=2), jax.devices()[:4])
  q = k = v = jnp.ones((2, 16, 2, 128))
  for backend in ('xla', 'xla_chunked'):
    with jax.set_mesh(mesh):
      jaxpr = str(jax.make_jaxpr(lambda q, k, v: get_backend(backend)(q, k, v))(q, k, v))
    assert 'shard_map' not in jaxpr


@pytest.mark.parametrize('implementation', ['pallas_gpu', 'pallas_tpu', 'xla_gather'])
def test_kernel_gradients_equal_the_dense_reference(implementation):
  """Frame-window attention with anchors: d(loss)/d(q, k, v) through the kernel path equals the
  gradient of the independent dense reference (one softmax, no merge)."""
  rng = np.random.default_rng(3)
  frames = np.repeat(np.arange(4, dtype=np.int32), 40)
  q_frame = np.concatenate([frames, np.full(8, GLOBAL, np.int32)])
  mask = FrameWindowMask(frames, q_frame, 1)  # visual queries over video then text keys
  q = jnp.asarray(rng.normal(size=(2, len(frames), 4, 128)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, len(q_frame), 2, 128)), jnp.float32) for _ in range(2))
  key_mask = jnp.asarray(rng.uniform(size=(2, len(q_frame))) > 0.1)
  weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

  def loss(attend):
    return lambda q, k, v: jnp.sum(weights * attend(q, k, v))

  kernel = lambda q, k, v: block_sparse.block_sparse_attention(
      q, k, v, mask=mask, key_mask=key_mask, implementation=implementation, interpret=True)
  reference = lambda q, k, v: block_sparse.reference_attention(q, k, v, mask=mask,
                                                               key_mask=key_mask)
  ours = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
  theirs = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip('qkv', ours, theirs):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5,
                               err_msg=f'd/d{name}')
    assert float(jnp.abs(b).max()) > 1e-3  # a gradient that is there to match


def test_training_step_differentiates_through_the_kernel():
  """The LM's loss gradient with the Pallas backend (interpreted) equals the XLA backend's."""
  config = vj.model_config('tiny-lm')
  ids = np.random.default_rng(4).integers(0, 126000, size=(2, 24)).astype(np.int32)
  labels = np.where(np.arange(24) >= 12, ids, -100)
  grads = {}
  for backend in ('xla', 'pallas_tpu'):
    model = vj.init_model(config.replace(attention=backend, interpret_kernels=True), seed=0)

    def loss_fn(model):
      return vj.masked_diffusion_loss(model, ids, labels, jax.random.key(0))[0]

    from flax import nnx  # pylint: disable=g-import-not-at-top
    grads[backend] = nnx.grad(loss_fn)(model)
  ours = jax.tree.leaves(nnx.state(grads['pallas_tpu']))
  theirs = jax.tree.leaves(nnx.state(grads['xla']))
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
