"""The cache seam, MARS-Cache and Fast-dLLM's dual cache.

Exactness: with every knob off, MARS-Cache decodes exactly as plain decoding (tokens equal, logits
equal up to float summation order). Each mechanism does what it claims, checked directly: rows a
schedule does not refresh are counted as not recomputed and keep their cached values bit for bit,
chunk attention hides what lies outside a visual query's window, anchors are the most attended
visual keys. One compiled program; sharded and bfloat16 runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vidlada_jax as vj
from vidlada_jax.attention_backends.block_sparse import GLOBAL
from tests.random_models import random_model
from vidlada_jax import policy_comparison, sampling
from vidlada_jax.cache import AnchorSearch, Recompute, RowWindow
from vidlada_jax.mars import R, RT, RTV
from vidlada_jax.policies import CACHE_POLICIES

FRAMES = 3
GEN = dict(gen_length=16, block_length=8, steps=16)


@pytest.fixture(scope='module')
def model():
  return random_model('tiny', seed=1, lm=dict(num_layers=4))


@pytest.fixture(scope='module')
def video_prompt():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 126000, size=(2, 14)).astype(np.int32)
  ids[:, 4] = vj.TokenIds().image
  ragged = [ids[0], ids[1, 3:]]  # rows of different lengths: left padding
  pixels = rng.uniform(-1, 1, size=(2, FRAMES, 384, 384, 3)).astype(np.float32)
  return ragged, pixels


def decode(model, prompt, pixels, policy, **kwargs):
  return vj.generate(model, prompt, pixels, cache=policy, stop_ids=(), **{**GEN, **kwargs})


# --- Exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize('temperature', [0.0, 0.9])
def test_exact_mode_decodes_like_plain(model, video_prompt, temperature):
  prompt, pixels = video_prompt
  settings = dict(temperature=temperature, rng=jax.random.key(5))
  plain = decode(model, prompt, pixels, vj.FullRecompute(), trace=True, **settings)
  exact = decode(model, prompt, pixels, vj.MarsCache.exact(), **settings)
  np.testing.assert_array_equal(np.asarray(exact.tokens), np.asarray(plain.tokens))
  assert len(set(np.asarray(plain.tokens).ravel().tolist())) > 4  # a varied decode, not a constant

  config = sampling.SamplerConfig(**GEN, stop_ids=())
  comparison = policy_comparison.compare_along(model, prompt, pixels, plain.history, config=config,
                                    policies={'exact': vj.MarsCache.exact()})['exact']
  print(f'exact MARS-Cache vs plain, max relative logit error: {comparison.max_relative_error:.1e}')
  assert comparison.max_relative_error < 1e-5  # float32 summation order only
  assert comparison.top1_agreement.min() == 1.0


def test_policies_by_name(model, video_prompt):
  prompt, pixels = video_prompt
  for name, policy in CACHE_POLICIES.items():
    assert sampling._policy_of(name) == policy  # pylint: disable=protected-access
  assert sampling._policy_of(None) == vj.FullRecompute()  # pylint: disable=protected-access
  by_name = decode(model, prompt, pixels, 'dual', gen_length=8, steps=8, block_length=8)
  by_object = decode(model, prompt, pixels, vj.DualCache(), gen_length=8, steps=8, block_length=8)
  np.testing.assert_array_equal(np.asarray(by_name.tokens), np.asarray(by_object.tokens))
  with pytest.raises(ValueError, match="unknown cache policy 'marss'; expected one of none, mars"):
    decode(model, prompt, pixels, 'marss')
  with pytest.raises(TypeError, match='cache must be a cache policy .* got dict'):
    decode(model, prompt, pixels, {'policy': 'mars'})


def test_exact_mode_with_text_prompts_and_guidance(model):
  prompts = [np.arange(3, 12, dtype=np.int32), np.arange(40, 46, dtype=np.int32)]
  for settings in (dict(), dict(cfg_scale=0.5)):
    plain = vj.generate(model, prompts, stop_ids=(), **GEN, **settings)
    exact = vj.generate(model, prompts, stop_ids=(), cache=vj.MarsCache.exact(), **GEN,
                        **settings)
    np.testing.assert_array_equal(np.asarray(exact.tokens), np.asarray(plain.tokens))


def test_dual_cache_refresh_steps_are_exact(model, video_prompt):
  prompt, pixels = video_prompt
  plain = decode(model, prompt, pixels, vj.FullRecompute(), trace=True)
  config = sampling.SamplerConfig(**GEN, stop_ids=())
  comparison = policy_comparison.compare_along(model, prompt, pixels, plain.history, config=config,
                                    policies={'dual': vj.DualCache()})['dual']
  _, _, block_steps = policy_comparison.trajectory(plain.history, model.config.tokens.mask)
  relative = comparison.max_abs_error / comparison.max_abs_reference
  assert relative[block_steps == 0].max() < 1e-5  # block starts recompute everything
  assert relative[block_steps > 0].max() > 1e-3  # in between, the prefix and suffix are stale


# --- The seam -----------------------------------------------------------------------------------


def test_cached_pass_over_every_row_equals_the_plain_forward(model):
  x = model.lm.embed(jnp.asarray(np.random.default_rng(1).integers(0, 126000, size=(2, 50))))
  positions = jnp.broadcast_to(jnp.arange(50), (2, 50))
  key_mask = jnp.ones((2, 50), bool).at[1, :7].set(False)
  expected = model.lm(x, positions, key_mask)
  num_layers = model.config.lm.num_layers
  full = Recompute(windows=(RowWindow(0, 50),), layer_window=jnp.zeros(num_layers, jnp.int32),
                   input_start=0, output_start=0, output_size=50)
  hidden, cache = model.lm(x, cache=model.lm.init_cache(x, positions, key_mask), plan=full)
  np.testing.assert_allclose(hidden, expected, rtol=1e-5, atol=1e-5)

  # Recomputing only the last 10 rows from an up-to-date cache gives those rows again.
  tail = Recompute(windows=(RowWindow(40, 10),), layer_window=jnp.zeros(num_layers, jnp.int32),
                   input_start=40, output_start=40, output_size=10)
  hidden, cache = model.lm(x[:, 40:], cache=cache, plan=tail)
  np.testing.assert_allclose(hidden, expected[:, 40:], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cache.rows_computed, [60] * num_layers)


def test_cached_pass_needs_a_plan_and_no_new_positions(model):
  x = jnp.zeros((1, 4, model.config.lm.hidden_size))
  with pytest.raises(ValueError, match='needs a plan'):
    model.lm(x, cache=model.lm.init_cache(x))
  plan = Recompute(windows=(RowWindow(0, 4),), layer_window=jnp.zeros(4, jnp.int32),
                   input_start=0, output_start=0, output_size=4)
  with pytest.raises(ValueError, match='from the cache'):
    model.lm(x, jnp.zeros((1, 4), jnp.int32), cache=model.lm.init_cache(x), plan=plan)


def test_update_canvas_is_a_pure_step():
  config = sampling.SamplerConfig(gen_length=4, block_length=4, steps=2, stop_ids=())
  state = sampling.DecodeState(
      canvas=jnp.full((1, 4), config.tokens.mask, jnp.int32), masked=jnp.ones((1, 4), bool),
      block=jnp.int32(0), step=jnp.int32(0), block_masked=jnp.array([4], jnp.int32),
      forwards=jnp.int32(0), history=jnp.zeros(0, jnp.int32), cache=())
  logits = jnp.full((1, 4, 16), -5.0).at[0, jnp.arange(4), jnp.array([3, 7, 9, 2])].set(
      jnp.array([1.0, 4.0, 2.0, 0.5]))
  new = sampling.update_canvas(state, logits, jax.random.split(jax.random.key(0), 1), config)
  # 4 masked positions over 2 steps: reveal the 2 most confident proposals (positions 1 and 2).
  np.testing.assert_array_equal(new.canvas[0], [config.tokens.mask, 7, 9, config.tokens.mask])
  np.testing.assert_array_equal(new.masked[0], [True, False, False, True])
  assert int(new.step) == 1 and int(new.forwards) == 1


# --- What each mechanism does -------------------------------------------------------------------


def test_pyramid_schedule():
  policy = vj.MarsCache(pyramid=(8, 2), visual_ratio=2)
  text, visual = policy.intervals(4)
  np.testing.assert_array_equal(text, [8, 6, 4, 2])  # deeper layers refresh more often
  np.testing.assert_array_equal(visual, [16, 12, 8, 4])
  levels = np.stack([np.asarray(policy.layer_windows(step, 4)) for step in range(17)])
  assert (levels[0] == RTV).all()  # the first step: everything
  np.testing.assert_array_equal(levels[:, 3], [RTV, R, RT, R] * 4 + [RTV])  # tau_t 2, tau_v 4
  np.testing.assert_array_equal(levels[:, 1],  # tau_t 6, tau_v 12
                                [RTV] + [R] * 5 + [RT] + [R] * 5 + [RTV] + [R] * 4)
  explicit = vj.MarsCache(text_intervals=(1, 2, 3, 4), visual_ratio=1)
  np.testing.assert_array_equal(explicit.intervals(4)[1], [1, 2, 3, 4])
  with pytest.raises(ValueError, match='lists 4 layers; the model has 5'):
    explicit.intervals(5)


@pytest.mark.parametrize('bad, message', [
    (dict(visual_ratio=0), 'visual_ratio'), (dict(pyramid=(0, 2)), 'intervals must be >= 1'),
    (dict(frame_window=None), 'anchors extend chunk attention'), (dict(num_anchors=-1), 'anchors')])
def test_invalid_mars_settings_are_explained(bad, message):
  with pytest.raises(ValueError, match=message):
    vj.MarsCache(**bad)


def run_policy(model, prompt, pixels, policy, steps, fresh_canvas=False):
  """The policy's cache after `steps` steps on the all-mask canvas, and after each step. With
  `fresh_canvas`, each step's canvas holds new random tokens instead, as if every token had just
  been unmasked: then any row a step recomputes gets new values (its queries see new keys)."""
  config = sampling.SamplerConfig(**GEN, stop_ids=())
  ids, valid = sampling.pad_prompts(prompt, model.config.tokens.eos)
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params):
    model = nnx.merge(graphdef, params)
    prompt = sampling.prepare_prompt(model, jnp.asarray(ids), jnp.asarray(valid), pixels, config)
    tokens = jnp.full((len(ids), config.gen_length), config.tokens.mask)
    state, caches = policy.init(model, prompt, config), []
    for step in range(steps):
      if fresh_canvas:
        tokens = jax.random.randint(jax.random.key(step), tokens.shape, 0,
                                    model.config.lm.vocab_size)
      _, state = policy.block_hidden(model, prompt, state, model.lm.embed(tokens),
                                     block=step // 8, block_step=step % 8, step=step,
                                     config=config)
      caches.append(state)
    return prompt.length, caches

  return run(params)


def test_rows_not_scheduled_are_not_recomputed(model, video_prompt):
  """Each step's canvas is new, so the rows a layer's window holds must change and every other
  row must keep its cached values bit for bit: a layer that recomputed more (or other) rows than
  scheduled, or dropped what it computed, would show. The schedule is worked out by hand."""
  prompt, pixels = video_prompt
  policy = vj.MarsCache(pyramid=(4, 2), visual_ratio=2, num_anchors=8)
  prompt_length, caches = run_policy(model, prompt, pixels, policy, steps=5, fresh_canvas=True)
  num_visual = FRAMES * model.config.tokens_per_frame
  length = prompt_length + GEN['gen_length']
  rows = {R: GEN['gen_length'], RT: length - num_visual, RTV: length}
  first_row = {R: prompt_length, RT: num_visual, RTV: 0}  # segment-major: visual, text, canvas
  # tau_t = [4, 3, 3, 2], tau_v = [8, 6, 6, 4]: step 0 refreshes everything; then layer 3
  # refreshes the text at step 2, layers 1-2 at step 3, layer 0 at step 4, when layer 3
  # refreshes everything.
  schedule = np.full((5, 4), R)
  schedule[0] = RTV
  schedule[2, 3] = schedule[3, 1:3] = schedule[4, 0] = RT
  schedule[4, 3] = RTV
  changed = lambda new, old, axis: np.asarray(new != old).any(axis=axis)
  expected = np.zeros(4, int)
  for step, cache in enumerate(caches):
    levels = np.asarray(policy.layer_windows(step, 4))
    np.testing.assert_array_equal(levels, schedule[step], err_msg=f'step {step}')
    expected += [rows[int(level)] for level in levels]
    np.testing.assert_array_equal(cache.rows_computed, expected, err_msg=f'step {step}')
    if not step:
      continue
    before = caches[step - 1]
    for layer, level in enumerate(levels):
      stays, recomputed = slice(0, first_row[level]), slice(first_row[level], length)
      np.testing.assert_array_equal(cache.hidden[layer + 1][:, stays],  # bit for bit: the
                                    before.hidden[layer + 1][:, stays])  # rows were not touched
      for field in ('keys', 'values'):  # [layers, B, Hkv, L, D]
        np.testing.assert_array_equal(getattr(cache, field)[layer][:, :, stays],
                                      getattr(before, field)[layer][:, :, stays])
      # Every scheduled row of every prompt (the visual rows too where the level is RTV): its
      # output, and for the canvas rows (whose inputs are new at every layer) its keys and values.
      assert changed(cache.hidden[layer + 1][:, recomputed],
                     before.hidden[layer + 1][:, recomputed], -1).all(), (step, layer)
      for field in ('keys', 'values'):
        canvas_rows = getattr(cache, field)[layer][:, :, prompt_length:]
        assert changed(canvas_rows, getattr(before, field)[layer][:, :, prompt_length:],
                       (1, 3)).all(), (step, layer, field)
  assert expected.tolist() == [rows[RTV] + rows[RT] + 3 * rows[R]] * 3 + [
      2 * rows[RTV] + rows[RT] + 2 * rows[R]]


def test_dual_cache_recomputes_the_block_between_refreshes(model, video_prompt):
  prompt, pixels = video_prompt
  prompt_length, caches = run_policy(model, prompt, pixels, vj.DualCache(), steps=9)
  length = prompt_length + GEN['gen_length']
  # Steps 0 and 8 start a block (everything), the 7 steps between recompute the 8 block rows.
  np.testing.assert_array_equal(caches[-1].rows_computed, [2 * length + 7 * 8] * 4)


def test_chunk_attention_hides_frames_outside_the_window(model, video_prompt):
  prompt, pixels = video_prompt
  batch = len(prompt)
  ids, valid = sampling.pad_prompts(prompt, model.config.tokens.eos)
  config = sampling.SamplerConfig(**GEN, stop_ids=())
  per_frame = model.config.tokens_per_frame
  policy = vj.MarsCache(frame_window=0, num_anchors=0)

  def first_layer_outputs(pixel_values):
    prompt = sampling.prepare_prompt(model, jnp.asarray(ids), jnp.asarray(valid), pixel_values,
                                     config)
    state = policy.init(model, prompt, config)
    canvas = model.lm.embed(jnp.full((batch, config.gen_length), config.tokens.mask))
    _, state = policy.block_hidden(model, prompt, state, canvas, block=0, block_step=0, step=0,
                                   config=config)
    return state.hidden[1]  # layer 0's outputs, segment-major: frames 0, 1, 2, then text

  changed = pixels.copy()
  changed[:, 2] = -changed[:, 2]  # a different last frame
  before, after = first_layer_outputs(pixels), first_layer_outputs(changed)
  # With w = 0, frame 0's queries see frame 0 and the text only: bit for bit unchanged.
  np.testing.assert_array_equal(before[:, :per_frame], after[:, :per_frame])
  assert not np.allclose(before[:, 3 * per_frame:], after[:, 3 * per_frame:])  # text sees all


def test_anchors_are_the_most_attended_visual_keys():
  rng = np.random.default_rng(0)
  frame_ids = np.concatenate([np.repeat(np.arange(4), 10), np.full(6, GLOBAL)])
  q = jnp.asarray(rng.normal(size=(1, 46, 2, 8)), jnp.float32)
  keys = jnp.asarray(rng.normal(size=(1, 46, 1, 8)), jnp.float32)
  key_mask = jnp.ones((1, 46), bool).at[0, 3].set(False)
  rows = AnchorSearch(queries=5, count=4).search(q, 0, keys, key_mask, frame_ids)
  # Independently: 5 queries at equal stride over the 40 visual rows, softmax over visible
  # visual keys, mean over heads and queries, the 4 largest.
  picks = np.linspace(0, 39, 5).round().astype(int)
  scores = np.einsum('qhd,kd->hqk', np.asarray(q[0, picks], np.float64),
                     np.asarray(keys[0, :40, 0], np.float64)) / np.sqrt(8)
  scores[..., 3] = -np.inf
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  expected = np.argsort(-probs.mean(axis=(0, 1)))[:4]
  assert sorted(np.asarray(rows[0]).tolist()) == sorted(expected.tolist())
  assert 3 not in np.asarray(rows[0])  # a padding key is never an anchor


@pytest.mark.parametrize('policy', [vj.FullRecompute(), vj.MarsCache(pyramid=(4, 2)),
                                    vj.DualCache()], ids=['plain', 'mars', 'dual'])
def test_padding_prompts_to_a_multiple_changes_no_token(model, video_prompt, policy):
  prompt, pixels = video_prompt
  settings = dict(temperature=0.9, rng=jax.random.key(3))
  expected = np.asarray(decode(model, prompt, pixels, policy, **settings).tokens)
  # Rows of 14 and 11 tokens, left-padded by 10 and 13 instead of 0 and 3.
  padded = decode(model, prompt, pixels, policy, pad_to_multiple_of=24, **settings)
  np.testing.assert_array_equal(np.asarray(padded.tokens), expected)


def test_prompts_within_one_multiple_share_a_program(model, video_prompt):
  prompt, pixels = video_prompt
  before = sampling._sample_program._cache_size()
  for length in (14, 12, 10):  # all pad to 16 (each keeps the <image> placeholder)
    decode(model, [prompt[0][-length:]], pixels[:1], vj.FullRecompute(), pad_to_multiple_of=16)
  assert sampling._sample_program._cache_size() == before + 1
  decode(model, [prompt[0]], pixels[:1], vj.FullRecompute(), pad_to_multiple_of=7)  # pads to 21
  assert sampling._sample_program._cache_size() == before + 2


def test_pad_prompts_left_pads_to_a_multiple():
  ids, valid = sampling.pad_prompts([np.arange(1, 6), np.arange(1, 3)], pad_id=0, multiple_of=4)
  np.testing.assert_array_equal(ids, [[0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 1, 2]])
  np.testing.assert_array_equal(valid, ids > 0)
  ids, valid = sampling.pad_prompts(np.ones((2, 3), np.int32), pad_id=0, multiple_of=4)
  np.testing.assert_array_equal(ids, [[0, 1, 1, 1]] * 2)
  assert sampling.pad_prompts(np.ones((2, 3), np.int32), pad_id=0)[1].all()
  with pytest.raises(ValueError, match='pad_to_multiple_of must be at least 1'):
    sampling.pad_prompts([np.arange(3)], pad_id=0, multiple_of=0)


# --- Programs, shardings, dtypes ----------------------------------------------------------------


def test_one_compiled_program_per_shape(model, video_prompt):
  prompt, pixels = video_prompt
  policy = vj.MarsCache(pyramid=(4, 2))
  before = sampling._sample_program._cache_size()
  decode(model, prompt, pixels, policy)
  shifted = [np.where(p == vj.TokenIds().image, p, p + 1) for p in prompt]
  decode(model, shifted, pixels * 0.5, policy)  # new values, same shapes
  assert sampling._sample_program._cache_size() == before + 1

  ids, valid = sampling.pad_prompts(prompt, 0)
  graphdef, params = nnx.split(model)
  jaxpr = str(jax.make_jaxpr(lambda p: sampling._sample_program(
      graphdef, p, ids, valid, pixels, jax.random.split(jax.random.key(0), 2),
      config=sampling.SamplerConfig(**GEN), policy=policy, trace=False))(params))
  # Blocks and steps are loops; the layer scan picks each layer's window with loops of 0 or 1
  # trips (the schedule is data read at run time, not a retrace per step).
  assert 'scan[' in jaxpr and jaxpr.count('while[') >= 2 + 3
  assert 'callback' not in jaxpr


@pytest.mark.parametrize('policy', [vj.MarsCache.exact(), vj.MarsCache(pyramid=(4, 2)),
                                    vj.DualCache()], ids=['exact', 'default', 'dual'])
def test_sharded_decode_equals_one_device(model, video_prompt, policy):
  from vidlada_jax import sharding

  prompt, pixels = video_prompt
  mesh, rules = sharding.mesh_from_spec('fsdp_tp:tensor=2')
  sharded = sharding.place(model, mesh, rules)
  sharded_policy = type(policy)(**{**vars(policy), 'rules': sharding.RULE_SETS['fsdp_tp']})
  expected = decode(model, prompt, pixels, policy)
  out = decode(sharded, prompt, pixels, sharded_policy)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))


def test_cache_shardings_follow_the_rules():
  from vidlada_jax import sharding

  mesh, _ = sharding.mesh_from_spec('fsdp_tp:tensor=2')  # data 1, fsdp 4, tensor 2
  model = vj.init_model(vj.model_config('tiny-lm'))
  cache = jax.eval_shape(lambda: model.lm.init_cache(jnp.zeros((4, 10, 64))))
  specs = sharding.cache_shardings(cache, mesh, sharding.RULE_SETS['fsdp_tp'])
  assert tuple(specs.keys.spec) == (None, ('data', 'fsdp'), 'tensor', None, None)
  assert tuple(specs.hidden.spec) == (None, ('data', 'fsdp'), None, None)
  odd = jax.eval_shape(lambda: model.lm.init_cache(jnp.zeros((3, 10, 64))))
  assert sharding.cache_shardings(odd, mesh, sharding.RULE_SETS['fsdp_tp']).keys.spec[1] is None


def test_bfloat16_cache(video_prompt):
  prompt, pixels = video_prompt
  f32 = random_model('tiny', seed=1, lm=dict(num_layers=4))
  bf16 = random_model('tiny', seed=1, lm=dict(num_layers=4), dtype='bfloat16',
                      param_dtype='bfloat16')  # the same weights, rounded
  _, caches = run_policy(bf16, prompt, pixels, vj.MarsCache(), steps=1)
  assert caches[0].keys.dtype == jnp.bfloat16 and caches[0].hidden.dtype == jnp.bfloat16

  # bfloat16 noise of this model: its logits against the float32 model's on the first prompt.
  ids = np.asarray(prompt[0])[None]
  reference = np.asarray(f32(ids, pixels[:1]))
  noise = np.abs(np.asarray(bf16(ids, pixels[:1]), np.float32) - reference).max() / np.abs(
      reference).max()
  plain = decode(bf16, prompt, pixels, vj.FullRecompute(), trace=True)
  config = sampling.SamplerConfig(**GEN, stop_ids=())
  exact = policy_comparison.compare_along(bf16, prompt, pixels, plain.history, config=config,
                               policies={'exact': vj.MarsCache.exact()})['exact']
  print(f'bfloat16: exact MARS-Cache vs plain {exact.max_relative_error:.3f}, '
        f'plain vs float32 {noise:.3f}')
  assert exact.max_relative_error <= 2 * noise  # reordering rows costs no more than bf16 itself
  mars = decode(bf16, prompt, pixels, vj.MarsCache(pyramid=(4, 2)))
  assert (np.asarray(mars.tokens) != bf16.config.tokens.mask).all()
