"""The Pallas TPU block-sparse kernel and its API adapter: the TPU interpreter against the dense
reference on CPU, and the Mosaic lowering for TPU (no TPU needed: `jax.export` runs it).

The broad random coverage of every implementation is `tests/test_block_sparse.py`; these are the
cases particular to this kernel: its lane-replicated layouts at the compiled block size (128), a
query block with no visit, grouped-query heads, the log-sum-exp it returns, bfloat16.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from vidlada_jax.attention_backends import _tpu_api, block_sparse, tpu
from vidlada_jax.attention_backends.block_sparse import GLOBAL, PAD, FrameWindowMask


def mars_frames(num_frames: int, frame_len: int, text_len: int) -> np.ndarray:
  """MARS-Cache's layout: video frames of `frame_len` tokens, then the text (global)."""
  return np.concatenate([np.repeat(np.arange(num_frames), frame_len), np.full(text_len, GLOBAL)])


def qkv(batch, q_len, k_len, heads, kv_heads, head_dim, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, k_len, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, k_len, kv_heads, head_dim), dtype)
  return q, k, v


def left_padding(batch_pads, length):
  """key_mask of left-padded prompts: row b hides its first batch_pads[b] keys."""
  return jnp.asarray(np.arange(length)[None, :] >= np.asarray(batch_pads)[:, None])


def partials(q, k, v, frames_q, frames_k, window, key_mask, block_q, block_k):
  """The kernel's Partial and the reference's, on inputs already padded to whole blocks."""
  table = block_sparse.block_table(FrameWindowMask(frames_q, frames_k, window), block_q, block_k)
  args = dict(table=table, q_frame=jnp.asarray(frames_q), k_frame=jnp.asarray(frames_k),
              key_mask=key_mask, frame_window=window)
  return (tpu.attention_partial(q, k, v, interpret=True, **args),
          block_sparse.attention_partial(q, k, v, **args), table)


# --- The kernel against the reference (TPU interpreter) -----------------------------------------


@pytest.mark.parametrize('block_q, block_k, head_dim', [(128, 128, 128), (32, 64, 32)])
def test_kernel_matches_reference_with_gqa_and_left_padding(block_q, block_k, head_dim):
  frames = mars_frames(3, 70, 40)  # 250 tokens: frames straddle blocks, text at the end
  q, k, v = qkv(2, len(frames), len(frames), 4, 2, head_dim)
  key_mask = left_padding([0, 37], len(frames))
  out = block_sparse.block_sparse_attention(
      q, k, v, mask=FrameWindowMask(frames, frames, 1), key_mask=key_mask,
      implementation='pallas_tpu', block_q=block_q, block_k=block_k, interpret=True)
  expected = block_sparse.reference_attention(
      q, k, v, mask=FrameWindowMask(frames, frames, 1), key_mask=key_mask)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_kernel_log_sum_exp_matches_reference():
  frames = np.pad(mars_frames(2, 100, 40), (0, 16), constant_values=PAD)  # 256: padded rows
  q, k, v = qkv(1, 256, 256, 2, 1, 128, seed=1)
  key_mask = left_padding([5], 256) & jnp.asarray(frames != PAD)[None]
  got, want, _ = partials(q, k, v, frames, frames, 0, key_mask, 128, 128)
  np.testing.assert_allclose(got.out, want.out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.lse, want.lse, rtol=1e-5, atol=1e-5)
  assert np.isneginf(got.lse[..., -16:]).all()  # padding rows see nothing: lse -inf, output 0
  assert not np.asarray(got.out[:, -16:]).any()


def test_query_block_with_no_visit_gives_zero_and_minus_infinity():
  # Query block 0 is frame 9, whose window holds no key; block 1 (frame 0) sees key block 0.
  q_frames = np.repeat(np.array([9, 0], np.int32), 32)
  k_frames = np.repeat(np.array([0, 1], np.int32), 32)
  q, k, v = qkv(1, 64, 64, 2, 1, 32, seed=2)
  got, want, table = partials(q, k, v, q_frames, k_frames, 0, jnp.ones((1, 64), bool), 32, 32)
  assert table.counts.tolist() == [0, 1]
  assert not np.isnan(np.asarray(got.out)).any()
  assert not np.asarray(got.out[:, :32]).any() and np.isneginf(got.lse[..., :32]).all()
  np.testing.assert_allclose(got.out, want.out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.lse, want.lse, rtol=1e-5, atol=1e-5)


def test_bfloat16_error_is_the_references_own():
  frames = mars_frames(2, 100, 56)
  mask = FrameWindowMask(frames, frames, 1)
  q, k, v = qkv(1, 256, 256, 2, 2, 128, jnp.bfloat16, seed=3)
  exact = block_sparse.reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask=mask)
  reference = block_sparse.reference_attention(q, k, v, mask=mask)
  out = block_sparse.block_sparse_attention(q, k, v, mask=mask, implementation='pallas_tpu',
                                            interpret=True)
  assert out.dtype == jnp.bfloat16
  reference_error = float(jnp.abs(reference.astype(jnp.float32) - exact).max())
  # Online softmax casts unnormalised probabilities to bf16 where the reference casts normalised
  # ones: the same rounding, at other values. Allowed: twice the reference's own error.
  assert float(jnp.abs(out.astype(jnp.float32) - exact).max()) <= 2 * reference_error


def test_compiled_kernel_rejects_blocks_mosaic_cannot_tile():
  frames = np.zeros(128, np.int32)
  q, k, v = qkv(1, 128, 128, 1, 1, 128)
  table = block_sparse.block_table(FrameWindowMask(frames, frames, 0), 128, 64)
  with pytest.raises(ValueError, match='block_k a multiple of 128'):
    tpu.attention_partial(q, k, v, table=table, q_frame=jnp.asarray(frames),
                          k_frame=jnp.asarray(frames), key_mask=jnp.ones((1, 128), bool),
                          frame_window=0, interpret=False)


def test_visit_list_has_one_step_per_visit_and_one_per_empty_query_block():
  table = block_sparse.BlockTable(
      indices=np.array([[0, 0, 0], [1, 3, 3], [0, 2, 4]], np.int32),
      counts=np.array([0, 2, 3], np.int32), block_q=8, block_k=8, num_k_blocks=5)
  q_blocks, k_blocks, visits = tpu.visit_list(table)
  assert q_blocks.tolist() == [0, 1, 1, 2, 2, 2]
  assert k_blocks.tolist() == [0, 1, 3, 0, 2, 4]
  assert visits.tolist() == [0, 0, 1, 0, 1, 2]


def test_mars_grid_has_no_padding_steps():
  # Text query blocks visit every key block, frame blocks a few: a grid padded to the longest
  # row would spend most of its steps idle.
  frames = mars_frames(16, 210, 200)
  frames = np.pad(frames, (0, -len(frames) % 128), constant_values=PAD)
  table = block_sparse.block_table(FrameWindowMask(frames, frames, 1), 128, 128)
  steps = len(tpu.visit_list(table)[0])
  assert steps == table.counts.sum() < table.indices.size / 2


# --- Lowering for TPU ----------------------------------------------------------------------------


@pytest.mark.parametrize('dtype, head_dim', [
    (jnp.bfloat16, 128), (jnp.float32, 128), (jnp.bfloat16, 72)])  # 72: SigLIP's head_dim
def test_kernel_lowers_for_tpu(dtype, head_dim):
  frames = mars_frames(4, 210, 60)  # 900 tokens, padded to 1024 inside the op
  mask = FrameWindowMask(frames, frames, 1)
  batch, heads, kv_heads = 2, 8, 2

  def attend(q, k, v, key_mask):
    return block_sparse.block_sparse_attention(q, k, v, mask=mask, key_mask=key_mask,
                                               implementation='pallas_tpu')

  q = jax.ShapeDtypeStruct((batch, len(frames), heads, head_dim), dtype)
  kv = jax.ShapeDtypeStruct((batch, len(frames), kv_heads, head_dim), dtype)
  key_mask = jax.ShapeDtypeStruct((batch, len(frames)), jnp.bool_)
  exported = jax.export.export(jax.jit(attend), platforms=['tpu'])(q, kv, kv, key_mask)
  module = exported.mlir_module()
  assert 'tpu_custom_call' in module and 'block_sparse_frame_attention' in module
  assert exported.out_avals[0].shape == q.shape and exported.out_avals[0].dtype == dtype


# --- The API adapter -----------------------------------------------------------------------------


def gather_sum(x, picks, interpret):
  """sum over i of x's row block picks[i] ([8, 128] blocks): every adapter name in one kernel."""

  def kernel(picks_ref, x_ref, out_ref, acc_ref):
    i = pl.program_id(0)

    @pl.when(i == 0)
    def _():
      acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    acc_ref[...] += x_ref[...]

    @pl.when(i == pl.num_programs(0) - 1)
    def _():
      out_ref[...] = acc_ref[...]

  return pl.pallas_call(
      kernel,
      grid_spec=_tpu_api.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(len(picks),),
          in_specs=[pl.BlockSpec((_tpu_api.SUBLANES, _tpu_api.LANES), lambda i, p: (p[i], 0))],
          out_specs=pl.BlockSpec((_tpu_api.SUBLANES, _tpu_api.LANES), lambda i, p: (0, 0)),
          scratch_shapes=[_tpu_api.vmem((_tpu_api.SUBLANES, _tpu_api.LANES), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct((_tpu_api.SUBLANES, _tpu_api.LANES), jnp.float32),
      compiler_params=_tpu_api.compiler_params([_tpu_api.ARBITRARY]),
      interpret=_tpu_api.interpret_mode(interpret),
  )(jnp.asarray(picks, jnp.int32), x)


def test_api_adapter_runs_a_prefetch_kernel_in_the_interpreter():
  x = jax.random.normal(jax.random.key(0), (4 * _tpu_api.SUBLANES, _tpu_api.LANES))
  blocks = np.asarray(x).reshape(4, _tpu_api.SUBLANES, _tpu_api.LANES)
  np.testing.assert_allclose(gather_sum(x, [2, 0, 2], True), blocks[[2, 0, 2]].sum(0), rtol=1e-6)


def test_api_adapter_lowers_for_tpu():
  x = jax.ShapeDtypeStruct((4 * _tpu_api.SUBLANES, _tpu_api.LANES), jnp.float32)
  exported = jax.export.export(jax.jit(lambda x: gather_sum(x, [3, 1], False)),
                               platforms=['tpu'])(x)
  assert 'tpu_custom_call' in exported.mlir_module()


def read_past_the_block(interpret):
  """A kernel whose read (from row 13 of a 16-row block, 8 rows) runs past its input block."""

  def kernel(start_ref, x_ref, out_ref):
    out_ref[...] = x_ref[pl.ds(start_ref[0], _tpu_api.SUBLANES), :]

  shape = (2 * _tpu_api.SUBLANES, _tpu_api.LANES)
  return pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((_tpu_api.SUBLANES, _tpu_api.LANES), jnp.float32),
      in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), pl.BlockSpec(shape, lambda: (0, 0))],
      interpret=interpret)(jnp.asarray([shape[0] - 3], jnp.int32), jnp.ones(shape, jnp.float32))


def read_scratch(interpret):
  """A kernel that returns its VMEM scratch without writing it first."""

  def kernel(out_ref, scratch_ref):
    out_ref[...] = scratch_ref[...]

  shape = (_tpu_api.SUBLANES, _tpu_api.LANES)
  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(shape, jnp.float32),
                        scratch_shapes=[_tpu_api.vmem(shape, jnp.float32)],
                        interpret=interpret)()


def test_interpret_mode_selects_the_tpu_interpreter():
  """True must give the TPU interpreter, not Pallas' generic one (`interpret=True`): only the
  TPU interpreter checks every read against its buffer's bounds, so the read past the block
  fails there and silently reads clamped rows in the generic one. Interpreter settings pass
  through unchanged: the same scratch reads NaN by default, 0 when asked."""
  assert _tpu_api.interpret_mode(False) is False
  np.testing.assert_array_equal(read_past_the_block(True), 1.0)  # the generic interpreter
  with pytest.raises(Exception, match='Out-of-bounds read'):
    jax.block_until_ready(read_past_the_block(_tpu_api.interpret_mode(True)))

  assert np.isnan(read_scratch(_tpu_api.interpret_mode(True))).all()
  zero_filled = pltpu.InterpretParams(uninitialized_memory='zero')
  assert _tpu_api.interpret_mode(zero_filled) is zero_filled
  np.testing.assert_array_equal(read_scratch(_tpu_api.interpret_mode(zero_filled)), 0.0)


def test_splash_adapter_masks_by_segment():
  heads, kv_heads, length, head_dim = 2, 1, 256, 128
  q, k, v = (x[0].transpose(1, 0, 2) for x in qkv(1, length, length, heads, kv_heads, head_dim))
  q_segment = jnp.ones(length, jnp.int32)
  kv_segment = jnp.asarray(np.arange(length) >= 100, jnp.int32)  # the first 100 keys: padding
  attend = _tpu_api.splash_mha(heads, length, length, 128, 128, interpret=True)
  out = attend(q, k, v, q_segment, kv_segment)
  scores = jnp.einsum('hqd,kd->hqk', q, k[0])
  probs = jax.nn.softmax(jnp.where(kv_segment.astype(bool), scores, -jnp.inf), axis=-1)
  np.testing.assert_allclose(out, jnp.einsum('hqk,kd->hqd', probs, v[0]), rtol=1e-5, atol=1e-5)
