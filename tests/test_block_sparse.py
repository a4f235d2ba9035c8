"""The shared suite of the block-sparse frame-window attention op: every implementation against
one reference.

Each implementation in `block_sparse.IMPLEMENTATIONS` runs (with `interpret=True`, so the Pallas
kernels run on CPU through their interpreters) over the same layouts: all tokens global, window
0, 1 and wider than the video, frames that do not align with blocks, text in the middle and at
the end, key padding (a whole key block too), query blocks that see no key, GQA and MHA, batch 2,
lengths that are not multiples of the blocks, with and without `GlobalKV`. Outputs are compared
with `reference_attention` and log-sum-exps with the `xla_dense` partial. Then the pieces under
the op: the block table (never misses a visible pair), `merge`, and the dense reference against
a float64 numpy formula. Last, the Pallas GPU specifics: tile checks, the `_gpu_api` adapter and
lowering for CUDA through Triton without a GPU.

float32 runs with `jax_default_matmul_precision='highest'` (conftest), so implementations differ
only by float32 summation order: 1e-5. bfloat16 is compared with the float32 reference on the
same (bf16-valued) inputs; its bound is derived in `bf16_tolerance`.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from tests.jaxpr_flops import dot_flops
from vidlada_jax.attention_backends import _gpu_api
from vidlada_jax.attention_backends import block_sparse
from vidlada_jax.attention_backends import gpu
from vidlada_jax.attention_backends import xla_gather
from vidlada_jax.attention_backends.block_sparse import GLOBAL, PAD

G = GLOBAL
F32_TOL = 1e-5
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # 8 significant bits: round to nearest is within 2^-8 relative


def layout(*runs) -> np.ndarray:
  """Frame ids from (frame id, token count) runs."""
  return np.concatenate([np.full(count, frame, np.int32) for frame, count in runs])


def video(frames, tokens_per_frame: int) -> list[tuple[int, int]]:
  return [(frame, tokens_per_frame) for frame in frames]


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  q_runs: tuple
  k_runs: tuple
  window: int
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  batch: int = 2
  block_q: int = 16
  block_k: int = 16
  key_padding: str = 'none'  # 'none' | 'random' | 'block_and_frames'
  anchors: bool = False  # with a GlobalKV

  @property
  def mask(self) -> block_sparse.FrameWindowMask:
    return block_sparse.FrameWindowMask(layout(*self.q_runs), layout(*self.k_runs), self.window)


CASES = [
    Case('all_global', ((G, 40),), ((G, 56),), window=0, num_heads=2, num_kv_heads=2,
         key_padding='random'),
    Case('window0', (*video(range(12), 7), (G, 5)), (*video(range(12), 7), (G, 5)), window=0),
    Case('window1_text_middle_and_end', (*video(range(6), 7), (G, 4), *video(range(6, 12), 7),
                                         (G, 6)),
         (*video(range(6), 7), (G, 4), *video(range(6, 12), 7), (G, 6)), window=1,
         key_padding='block_and_frames'),
    Case('window_beyond_video', tuple(video(range(5), 7)), tuple(video(range(5), 7)), window=9,
         num_heads=2, num_kv_heads=2),
    # Frame 30 is nobody's neighbour and there is no global key: the first query block sees
    # nothing.
    Case('no_visible_keys', ((30, 20), *video(range(8), 9)), tuple(video(range(10), 7)), window=1,
         num_heads=2, num_kv_heads=1, key_padding='block_and_frames'),
    Case('refresh_last_frames', tuple(video(range(7, 12), 7)), (*video(range(12), 7), (G, 9)),
         window=1, block_q=16, block_k=32, key_padding='random'),
    Case('anchors', (*video(range(5), 7), (G, 4), *video(range(5, 10), 7)),
         (*video(range(10), 7), (G, 5)), window=1, key_padding='random', anchors=True),
    Case('frames_210_blocks_128', tuple(video(range(5), 210)), (*video(range(5), 210), (G, 30)),
         window=1, num_heads=2, num_kv_heads=1, batch=1, block_q=128, block_k=128),
    Case('head_dim_128', (*video(range(10), 7), (G, 3)), (*video(range(10), 7), (G, 3)), window=0,
         num_heads=2, num_kv_heads=1, head_dim=128, batch=1, anchors=True),
]
BF16_CASES = ('window1_text_middle_and_end', 'anchors', 'head_dim_128')
IMPLEMENTATIONS = tuple(block_sparse.IMPLEMENTATIONS)


def make_inputs(case: Case, dtype, seed: int = 0) -> dict:
  """Random q, k, v (bf16-representable, so both dtypes see the same values), key_mask and,
  for `anchors` cases, a GlobalKV."""
  rng = np.random.default_rng(seed)
  q_len, k_len = len(case.mask.q_frame), len(case.mask.k_frame)

  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.bfloat16).astype(dtype)

  inputs = dict(
      q=normal(case.batch, q_len, case.num_heads, case.head_dim),
      k=normal(case.batch, k_len, case.num_kv_heads, case.head_dim),
      v=normal(case.batch, k_len, case.num_kv_heads, case.head_dim),
      key_mask=None, global_kv=None)
  if case.key_padding == 'random':
    inputs['key_mask'] = jnp.asarray(rng.random((case.batch, k_len)) > 0.25)
  elif case.key_padding == 'block_and_frames':
    # Batch row 0 hides a whole key block; the last row hides frames 0 and 1 entirely.
    key_mask = np.ones((case.batch, k_len), bool)
    key_mask[0, case.block_k:2 * case.block_k] = False
    key_mask[-1, np.isin(case.mask.k_frame, (0, 1))] = False
    inputs['key_mask'] = jnp.asarray(key_mask)
  if case.anchors:
    # Frames 0 and 2 lie in many queries' windows (the dedup rule decides), 40 in none, GLOBAL
    # is always shown already; the last anchor is invalid in row 0, the first in the last row.
    frame = np.array([0, 2, 40, 3, G, 1], np.int32)
    valid = np.ones((case.batch, len(frame)), bool)
    valid[0, -1] = valid[-1, 0] = False
    inputs['global_kv'] = block_sparse.GlobalKV(
        k=normal(case.batch, len(frame), case.num_kv_heads, case.head_dim),
        v=normal(case.batch, len(frame), case.num_kv_heads, case.head_dim),
        frame=jnp.asarray(np.broadcast_to(frame, (case.batch, len(frame)))),
        valid=jnp.asarray(valid))
  return inputs


def to_float32(inputs: dict) -> dict:
  return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, inputs)


def bf16_tolerance(inputs: dict) -> float:
  """Bound on |bf16 output - float32 reference| for bf16 inputs.

  Scores are exact products of bf16 values accumulated in float32, so the bf16 rounding that
  matters is of values no larger than max|v|: the probabilities cast to bf16 before P @ V
  (sum_k p_k |v_k| u <= u max|v|), the partial output, and with a GlobalKV the second partial
  output and the merged output: at most 4 roundings of u max|v|.
  """
  values = [inputs['v']] + ([inputs['global_kv'].v] if inputs['global_kv'] is not None else [])
  max_value = max(float(jnp.abs(x.astype(jnp.float32)).max()) for x in values)
  roundings = 4 if inputs['global_kv'] is not None else 2
  return roundings * BF16_UNIT_ROUNDOFF * max_value + F32_TOL


def run_reference(case: Case, inputs: dict) -> jax.Array:
  fn = jax.jit(functools.partial(block_sparse.reference_attention, mask=case.mask))
  return fn(inputs['q'], inputs['k'], inputs['v'], key_mask=inputs['key_mask'],
            global_kv=inputs['global_kv'])


def run_op(name: str, case: Case, inputs: dict) -> jax.Array:
  fn = jax.jit(functools.partial(
      block_sparse.block_sparse_attention, mask=case.mask, implementation=name,
      block_q=case.block_q, block_k=case.block_k, interpret=True))
  return fn(inputs['q'], inputs['k'], inputs['v'], key_mask=inputs['key_mask'],
            global_kv=inputs['global_kv'])


def run_partial(name: str, case: Case, inputs: dict) -> block_sparse.Partial:
  """The implementation's own partial on padded inputs, the way `block_sparse_attention` calls
  it, cut back to the real rows."""
  q, k, v = inputs['q'], inputs['k'], inputs['v']
  batch, q_len, k_len = q.shape[0], q.shape[1], k.shape[1]
  key_mask = inputs['key_mask']
  if key_mask is None:
    key_mask = jnp.ones((batch, k_len), bool)
  q_frame = np.pad(case.mask.q_frame, (0, -q_len % case.block_q), constant_values=PAD)
  k_frame = np.pad(case.mask.k_frame, (0, -k_len % case.block_k), constant_values=PAD)
  table = block_sparse.block_table(block_sparse.FrameWindowMask(q_frame, k_frame, case.window),
                                   case.block_q, case.block_k)
  impl = block_sparse.get_implementation(name)
  pad = block_sparse.pad_to_blocks
  partial = jax.jit(lambda q, k, v, key_mask: impl.attention_partial(
      pad(q, case.block_q), pad(k, case.block_k), pad(v, case.block_k), table=table,
      q_frame=jnp.asarray(q_frame), k_frame=jnp.asarray(k_frame),
      key_mask=pad(key_mask, case.block_k, value=False), frame_window=case.window, interpret=True))(
          q, k, v, key_mask)
  return block_sparse.Partial(partial.out[:, :q_len], partial.lse[:, :, :q_len])


# --- Every implementation against the reference --------------------------------------------------


@pytest.mark.parametrize('name', IMPLEMENTATIONS)
@pytest.mark.parametrize('case', CASES, ids=lambda case: case.name)
def test_float32_matches_reference(name, case):
  inputs = make_inputs(case, jnp.float32)
  out = run_op(name, case, inputs)
  expected = run_reference(case, inputs)
  assert out.dtype == jnp.float32 and out.shape == inputs['q'].shape
  np.testing.assert_allclose(out, expected, atol=F32_TOL, rtol=F32_TOL)


@pytest.mark.parametrize('name', IMPLEMENTATIONS)
@pytest.mark.parametrize('case', [c for c in CASES if c.name in BF16_CASES],
                         ids=lambda case: case.name)
def test_bfloat16_matches_float32_reference(name, case):
  inputs = make_inputs(case, jnp.bfloat16)
  out = run_op(name, case, inputs)
  expected = run_reference(case, to_float32(inputs))
  assert out.dtype == jnp.bfloat16
  error = float(jnp.abs(out.astype(jnp.float32) - expected).max())
  assert error <= bf16_tolerance(inputs)
  # And within twice the error of the dense reference itself run in bf16 (it rounds at the same
  # places, an implementation may round in a different order).
  dense_error = float(jnp.abs(run_reference(case, inputs).astype(jnp.float32) - expected).max())
  assert error <= 2 * dense_error + F32_TOL


@pytest.mark.parametrize('name', IMPLEMENTATIONS)
@pytest.mark.parametrize('case', [c for c in CASES if c.name in
                                  ('window1_text_middle_and_end', 'no_visible_keys',
                                   'refresh_last_frames')], ids=lambda case: case.name)
def test_partial_lse_matches_dense(name, case):
  """The log-sum-exp the merge relies on: equal to the dense partial's, -inf exactly where a
  query sees no key (and there the output is 0, not NaN)."""
  inputs = make_inputs(case, jnp.float32)
  partial = run_partial(name, case, inputs)
  dense = run_partial('xla_dense', case, inputs)
  assert partial.lse.dtype == jnp.float32
  np.testing.assert_array_equal(np.isfinite(partial.lse), np.isfinite(dense.lse))
  np.testing.assert_allclose(partial.lse, dense.lse, atol=F32_TOL, rtol=F32_TOL)
  unseen = ~np.isfinite(np.asarray(dense.lse)).transpose(0, 2, 1)  # [B, Lq, H]
  assert not np.isnan(np.asarray(partial.out)).any()
  np.testing.assert_array_equal(np.asarray(partial.out)[unseen], 0.0)
  if case.name == 'no_visible_keys':
    assert unseen[:, :16].all()  # a whole query block without a visible key


# --- xla_gather specifics ------------------------------------------------------------------------


def test_xla_gather_work_scales_with_visits():
  """Its matmul FLOPs follow the visited blocks (text query blocks visit everything, visual ones
  a few), within the bucketing's factor of 2, far below dense."""
  mask = block_sparse.FrameWindowMask(layout(*video(range(24), 21), (G, 20)),
                                      layout(*video(range(24), 21), (G, 20)), 1)
  block = 16
  q_frame = np.pad(mask.q_frame, (0, -len(mask.q_frame) % block), constant_values=PAD)
  table = block_sparse.block_table(block_sparse.FrameWindowMask(q_frame, q_frame, 1), block, block)
  length, heads, head_dim = len(q_frame), 2, 16
  x = jnp.zeros((1, length, heads, head_dim))

  def flops(impl):
    jaxpr = jax.make_jaxpr(lambda x: impl.attention_partial(
        x, x, x, table=table, q_frame=jnp.asarray(q_frame), k_frame=jnp.asarray(q_frame),
        key_mask=jnp.ones((1, length), bool), frame_window=1))(x)
    return dot_flops(jaxpr.jaxpr)

  visited = 2 * 2 * block * block * head_dim * heads * int(table.counts.sum())
  gathered, dense = flops(xla_gather), flops(block_sparse)
  assert dense == 2 * 2 * length * length * head_dim * heads
  assert visited <= gathered <= 2 * visited
  assert table.density < 0.35 and gathered < 0.7 * dense


def test_xla_gather_buckets_cover_every_row_once():
  counts = np.array([1, 9, 16, 3, 4, 0, 17, 2])
  buckets = xla_gather._buckets(counts)
  rows = np.concatenate([rows for rows, _ in buckets])
  np.testing.assert_array_equal(np.sort(rows), np.arange(len(counts)))
  for rows, width in buckets:
    assert counts[rows].max() <= width < 2 * max(1, counts[rows].min()) or width == 1


# --- The block table -----------------------------------------------------------------------------


def random_frames(rng, length: int, contiguous: bool) -> np.ndarray:
  """Frames of random sizes, global tokens sprinkled in runs, padding at the end; `contiguous`
  keeps frame ids increasing by one (video), else they jump around."""
  frames, frame = [], 0
  while len(frames) < length:
    if rng.random() < 0.2:
      frames += [GLOBAL] * int(rng.integers(1, 6))
    else:
      frames += [frame] * int(rng.integers(1, 30))
      frame = frame + 1 if contiguous else int(rng.integers(0, 12))
  frames = np.array(frames[:length], np.int32)
  frames[length - int(rng.integers(0, 10)):] = PAD
  return frames


@pytest.mark.parametrize('contiguous', [True, False])
def test_block_table_never_misses_a_visible_pair(contiguous):
  rng = np.random.default_rng(1 if contiguous else 2)
  for _ in range(40):
    block_q, block_k = (int(b) for b in rng.choice([4, 8, 16, 32], 2))
    q_frame = random_frames(rng, block_q * int(rng.integers(1, 8)), contiguous)
    k_frame = random_frames(rng, block_k * int(rng.integers(1, 8)), contiguous)
    mask = block_sparse.FrameWindowMask(q_frame, k_frame, int(rng.integers(0, 4)))
    table = block_sparse.block_table(mask, block_q, block_k)
    visited = np.zeros((len(table.counts), table.num_k_blocks), bool)
    for i, count in enumerate(table.counts):
      visited[i, table.indices[i, :count]] = True
    dense = mask.dense()
    needed = dense.reshape(len(table.counts), block_q, table.num_k_blocks, block_k).any((1, 3))
    assert not (needed & ~visited).any(), 'a visible pair lies in a block pair not visited'
    if contiguous:  # video layouts: the table is exact, no block visited in vain
      np.testing.assert_array_equal(visited, needed)


def test_block_table_rows_sorted_counted_and_padded_by_repetition():
  rng = np.random.default_rng(3)
  frames = random_frames(rng, 16 * 12, contiguous=True)
  table = block_sparse.block_table(block_sparse.FrameWindowMask(frames, frames, 1), 16, 16)
  assert table.indices.dtype == np.int32 and table.indices.shape[1] == table.counts.max()
  for row, count in zip(table.indices, table.counts):
    assert (np.diff(row[:count]) > 0).all()
    if count:
      np.testing.assert_array_equal(row[count:], row[count - 1])


def test_block_table_counts_and_density_of_a_known_layout():
  # Four 8-token frames, blocks of 8: window 0 visits the diagonal, window 1 the tridiagonal.
  frames = layout(*video(range(4), 8))
  for window, counts, first_rows in [(0, [1, 1, 1, 1], [[0], [1], [2], [3]]),
                                     (1, [2, 3, 3, 2], [[0, 1, 1], [0, 1, 2], [1, 2, 3],
                                                        [2, 3, 3]])]:
    table = block_sparse.block_table(block_sparse.FrameWindowMask(frames, frames, window), 8, 8)
    np.testing.assert_array_equal(table.counts, counts)
    np.testing.assert_array_equal(table.indices, first_rows)
    assert table.density == sum(counts) / 16
  # A global query block visits every real key block; an all-padding key block is never visited,
  # and a query block that sees nothing has count 0 (its row is still a valid index).
  q_frame = layout((G, 8), (9, 8), (PAD, 8))
  k_frame = layout(*video(range(3), 8), (PAD, 8))
  table = block_sparse.block_table(block_sparse.FrameWindowMask(q_frame, k_frame, 1), 8, 8)
  np.testing.assert_array_equal(table.counts, [3, 0, 0])
  np.testing.assert_array_equal(table.indices[0], [0, 1, 2])
  assert table.density == 3 / 12
  assert (table.indices >= 0).all() and (table.indices < table.num_k_blocks).all()


def test_block_table_rejects_unpadded_lengths():
  with pytest.raises(ValueError, match='pad_to_blocks'):
    block_sparse.block_table(block_sparse.FrameWindowMask(np.zeros(10, int), np.zeros(16, int),
                                                          0), 8, 8)


# --- merge and the dense reference ---------------------------------------------------------------


def test_merge_equals_softmax_over_the_union():
  rng = np.random.default_rng(4)
  batch, q_len, k_len, heads, head_dim = 2, 12, 20, 4, 8
  q = jnp.asarray(rng.normal(size=(batch, q_len, heads, head_dim)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(batch, k_len, 2, head_dim)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(batch, k_len, 2, head_dim)), jnp.float32)
  union = rng.random((batch, q_len, k_len)) > 0.3
  in_a = rng.random((batch, q_len, k_len)) > 0.5
  union[:, 0] = False  # no key at all: out 0, lse -inf
  in_a[:, 1] = False  # everything in b
  in_a[:, 2] = True  # everything in a
  a = block_sparse._dense_partial(q, k, v, jnp.asarray(union & in_a))
  b = block_sparse._dense_partial(q, k, v, jnp.asarray(union & ~in_a))
  merged = block_sparse.merge(a, b)
  direct = block_sparse._dense_partial(q, k, v, jnp.asarray(union))
  np.testing.assert_allclose(merged.out, direct.out, atol=F32_TOL, rtol=F32_TOL)
  np.testing.assert_allclose(merged.lse, direct.lse, atol=F32_TOL, rtol=F32_TOL)
  np.testing.assert_array_equal(merged.out[:, 0], 0.0)
  assert np.isneginf(merged.lse[:, :, 0]).all()


def numpy_attention(q, k, v, q_frame, k_frame, window, key_mask=None, global_kv=None):
  """The op's definition in float64 numpy, loops over heads for clarity."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  batch, q_len, heads, head_dim = q.shape
  allowed = np.broadcast_to(block_sparse.visible(q_frame[:, None], k_frame[None, :], window, xp=np),
                            (batch, q_len, len(k_frame)))
  if key_mask is not None:
    allowed = allowed & np.asarray(key_mask)[:, None, :]
  if global_kv is not None:
    shown = block_sparse.visible(q_frame[None, :, None], np.asarray(global_kv.frame)[:, None, :],
                                 window, xp=np)
    allowed = np.concatenate([allowed, np.asarray(global_kv.valid)[:, None, :] & ~shown], -1)
    k = np.concatenate([k, np.asarray(global_kv.k, np.float64)], 1)
    v = np.concatenate([v, np.asarray(global_kv.v, np.float64)], 1)
  groups = heads // k.shape[2]
  out = np.zeros(q.shape)
  for h in range(heads):
    scores = np.einsum('bqd,bkd->bqk', q[:, :, h], k[:, :, h // groups]) / np.sqrt(head_dim)
    scores = np.where(allowed, scores, -np.inf)
    top = np.max(scores, -1, keepdims=True)
    weights = np.where(allowed, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0)
    total = weights.sum(-1, keepdims=True)
    out[:, :, h] = np.einsum('bqk,bkd->bqd', weights / np.where(total > 0, total, 1),
                             v[:, :, h // groups])
  return out


@pytest.mark.parametrize('case', [c for c in CASES if c.name in
                                  ('no_visible_keys', 'anchors', 'window0')],
                         ids=lambda case: case.name)
def test_reference_matches_float64_formula(case):
  inputs = make_inputs(case, jnp.float32)
  out = block_sparse.reference_attention(inputs['q'], inputs['k'], inputs['v'], mask=case.mask,
                                         key_mask=inputs['key_mask'],
                                         global_kv=inputs['global_kv'])
  expected = numpy_attention(inputs['q'], inputs['k'], inputs['v'], case.mask.q_frame,
                             case.mask.k_frame, case.window, inputs['key_mask'],
                             inputs['global_kv'])
  np.testing.assert_allclose(out, expected, atol=F32_TOL, rtol=F32_TOL)


# --- Pallas GPU (Triton) specifics ---------------------------------------------------------------


# One attribute of an MLIR dictionary: a quoted string (MLIR escapes '"' and '\' inside it) or a
# value running to the next ',' or '}', then that separator.
MLIR_ATTRIBUTE = re.compile(r'\s*(\w+) = ("(?:[^"\\]|\\.)*"|[^,}]*)([,}])')


def triton_calls(module: str) -> list[dict]:
  """The attributes of each `__gpu$xla.gpu.triton` custom call in an exported module's text
  (jaxlib <= 0.10.2's form), as Python values; the kernel's IR blob is left out."""
  calls = []
  for start in re.finditer(r'custom_call @__gpu\$xla\.gpu\.triton\(.*?mhlo\.backend_config = \{',
                           module):
    attributes, position = {}, start.end()
    while True:
      match = MLIR_ATTRIBUTE.match(module, position)
      assert match, module[position:position + 200]
      key, value, end = match.groups()
      if key != 'ir':
        integer = re.fullmatch(r'(-?\d+) : i32', value)
        attributes[key] = (int(integer[1]) if integer else value[1:-1] if value.startswith('"')
                           else {'true': True, 'false': False}[value])
      position = match.end()
      if end == '}':
        break
    calls.append(attributes)
  return calls


def export_for_cuda(fn, *shapes, disabled_checks=()):
  return jax.export.export(jax.jit(fn), platforms=['cuda'],
                           disabled_checks=list(disabled_checks))(*shapes)


@pytest.mark.skipif(not _gpu_api.can_lower_for_cuda(),
                    reason='this jaxlib compiles Triton while lowering and has no CUDA compiler')
@pytest.mark.parametrize('num_warps, num_stages', [(8, 2), (2, 5)])
def test_gpu_api_compiler_params_reach_the_triton_call(num_warps, num_stages):
  """Values given to `compiler_params` come back, each under its own name, from the custom call
  of a kernel lowered for CUDA (a params class that dropped or swapped them lowers with Triton's
  defaults, 4 warps and 3 stages, or the other value). So do the grid and name of the
  `pallas_call`: every attribute of the call but its IR."""
  params = _gpu_api.compiler_params(num_warps=num_warps, num_stages=num_stages)
  assert dataclasses.asdict(params) == {'num_warps': num_warps, 'num_stages': num_stages}

  def add_one(x_ref, out_ref):
    out_ref[...] = x_ref[...] + 1

  def fn(x):
    return pl.pallas_call(add_one, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                          grid=(3, 2), in_specs=[pl.BlockSpec((16, 16), lambda i, j: (i, j))],
                          out_specs=pl.BlockSpec((16, 16), lambda i, j: (i, j)),
                          compiler_params=params, name='add_one')(x)

  exported = export_for_cuda(fn, jax.ShapeDtypeStruct((48, 32), jnp.float32),
                             disabled_checks=_gpu_api.export_safety_exemptions())
  # Triton launches grid (x, y, z) = the pallas grid's axes in order, padded with 1.
  assert triton_calls(exported.mlir_module()) == [dict(
      debug=False, grid_x=3, grid_y=2, grid_z=1, name='add_one', num_stages=num_stages,
      num_warps=num_warps)]


def test_gpu_api_export_exemptions_are_what_serialising_the_kernel_needs():
  """`jax.export` refuses the Triton custom call, which has no stability guarantee, unless it is
  exempted: the exemptions must name the target this jaxlib lowers the kernel to (the export
  fails without them, or with every one but that target's). Where `can_lower_for_cuda` says no,
  lowering must indeed fail."""
  frames = np.zeros(gpu.BLOCK_Q, np.int32)
  table = block_sparse.block_table(block_sparse.FrameWindowMask(frames, frames, 0), gpu.BLOCK_Q,
                                   gpu.BLOCK_K)

  def attend(q, k, v, key_mask):
    return gpu.attention_partial(q, k, v, table=table, q_frame=jnp.asarray(frames),
                                 k_frame=jnp.asarray(frames), key_mask=key_mask, frame_window=0)

  x = jax.ShapeDtypeStruct((1, len(frames), 1, 16), jnp.float32)
  shapes = (x, x, x, jax.ShapeDtypeStruct((1, len(frames)), jnp.bool_))
  exemptions = _gpu_api.export_safety_exemptions()
  if not _gpu_api.can_lower_for_cuda():
    with pytest.raises(Exception):  # whichever error this jaxlib raises
      export_for_cuda(attend, *shapes, disabled_checks=exemptions)
    return

  from jax._src.lib import version as jaxlib_version  # pylint: disable=g-import-not-at-top
  # The target by jaxlib release, as _gpu_api's docstring records it.
  target = '__gpu$xla.gpu.triton' if jaxlib_version <= (0, 10, 2) else 'triton_kernel_call_ffi'
  refused = 'custom calls whose targets have no compatibility guarantees'
  with pytest.raises(ValueError, match=refused) as error:
    export_for_cuda(attend, *shapes)
  assert f'custom_call @{target}(' in str(error.value)
  others = [check for check in exemptions if check.is_custom_call() != target]
  assert len(others) == len(exemptions) - 1
  with pytest.raises(ValueError, match=refused):
    export_for_cuda(attend, *shapes, disabled_checks=others)
  module = export_for_cuda(attend, *shapes, disabled_checks=exemptions).mlir_module()
  assert f'custom_call @{target}(' in module


@pytest.mark.parametrize('block_q, block_k, head_dim', [(8, 16, 16), (16, 48, 16), (16, 16, 96)])
def test_gpu_rejects_tiles_triton_cannot_hold(block_q, block_k, head_dim):
  frames = np.zeros(48, np.int32)
  table = block_sparse.block_table(block_sparse.FrameWindowMask(frames, frames, 0), block_q,
                                   block_k)
  x = jnp.zeros((1, 48, 1, head_dim))
  with pytest.raises(ValueError, match='power of two'):
    gpu.attention_partial(x, x, x, table=table, q_frame=jnp.asarray(frames),
                          k_frame=jnp.asarray(frames), key_mask=jnp.ones((1, 48), bool),
                          frame_window=0, interpret=True)


@pytest.mark.skipif(not _gpu_api.can_lower_for_cuda(),
                    reason='this jaxlib compiles Triton while lowering and has no CUDA compiler')
@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32], ids=lambda d: jnp.dtype(d).name)
def test_gpu_kernel_lowers_to_triton_for_cuda(dtype):
  """Lowers the compiled (not interpreted) kernel for CUDA on this CPU machine: the Triton
  lowering of every op in the kernel runs, and the program holds the Triton custom call."""
  frames = layout(*video(range(4), 100), (G, 112))
  table = block_sparse.block_table(block_sparse.FrameWindowMask(frames, frames, 1),
                                   gpu.BLOCK_Q, gpu.BLOCK_K)
  batch, length, heads, kv_heads, head_dim = 1, len(frames), 4, 2, 128

  def attend(q, k, v, key_mask):
    return gpu.attention_partial(q, k, v, table=table, q_frame=jnp.asarray(frames),
                                 k_frame=jnp.asarray(frames), key_mask=key_mask, frame_window=1)

  shapes = (jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype),
            jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), dtype),
            jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), dtype),
            jax.ShapeDtypeStruct((batch, length), jnp.bool_))
  exported = jax.export.export(jax.jit(attend), platforms=['cuda'],
                               disabled_checks=_gpu_api.export_safety_exemptions())(*shapes)
  module = exported.mlir_module()
  assert any(name in module for name in _gpu_api.TRITON_CUSTOM_CALLS), module[:2000]
  out, lse = exported.out_avals
  assert (out.shape, out.dtype) == ((batch, length, heads, head_dim), dtype)
  assert (lse.shape, lse.dtype) == ((batch, heads, length), jnp.float32)
