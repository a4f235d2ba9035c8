"""The jitted block-diffusion sampler against a separately written numpy reference of SPEC 4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend.core import jaxprs_in_params

import vidlada_jax as vj
from tests import torch_reference as ref
from tests.sampler_reference import reference_generate
from vidlada_jax import sampling


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  # Transformers-initialised weights of useful scale: peaked, varied predictions.
  llama = ref.tiny_llama(seed=21)
  directory = ref.write_checkpoint(tmp_path_factory.mktemp('lm'), llama.state_dict(),
                                   llama.config.to_dict())
  return vj.from_pretrained(directory, dtype='float32', progress=False)


@pytest.fixture(scope='module')
def prompts():
  rng = np.random.default_rng(4)
  return [rng.integers(0, 126000, size=n).astype(np.int32) for n in (9, 6)]  # ragged batch


@pytest.fixture(scope='module')
def oracle(model):
  lm_logits = jax.jit(lambda x: model.lm.logits(model.lm(x[None]))[0])
  embed = lambda ids: np.asarray(model.lm.embed(jnp.asarray(ids)))
  return lm_logits, embed


def stop_token_of(model, prompts, **kwargs) -> int:
  """A token the unstopped decode of row 0 reveals mid-canvas: with it as a stop id, the decode
  follows the same trajectory until that token is revealed, so a stop is certain to happen."""
  out = vj.generate(model, prompts, stop_ids=(), **kwargs)
  return int(out.tokens[0, kwargs['gen_length'] // 2])


def check_against_reference(model, oracle, prompts, *, rng=None, **kwargs):
  out = vj.generate(model, prompts, rng=rng, trace=True, **kwargs)
  logits_fn, embed_fn = oracle
  keys = sampling._row_keys(rng if rng is not None else jax.random.key(0), len(prompts))
  tokens = model.config.tokens
  history = np.asarray(out.history)
  for row, prompt in enumerate(prompts):
    expected, steps = reference_generate(
        logits_fn, embed_fn, embed_fn(prompt), embed_fn(np.array(tokens.mask)),
        row_key=keys[row], mask_id=tokens.mask,
        suppressed_ids=(tokens.eos, tokens.bos, tokens.start_header, tokens.end_header),
        **{k: v for k, v in kwargs.items() if k != 'stop_ids'},
        stop_ids=tuple(kwargs.get('stop_ids', ())))
    for (block, step), canvas in steps.items():
      np.testing.assert_array_equal(history[block, step, row], canvas,
                                    err_msg=f'row {row}, block {block}, step {step}')
    np.testing.assert_array_equal(np.asarray(out.tokens[row]), expected, err_msg=f'row {row}')
    stops = [i for i, t in enumerate(expected) if t in kwargs.get('stop_ids', ())]
    assert int(out.lengths[row]) == (stops[0] if stops else kwargs['gen_length'])
  return out


SHAPES = [(2, 2, 2), (16, 16, 16), (16, 4, 8), (12, 4, 6)]


@pytest.mark.parametrize('gen_length, block_length, steps', SHAPES)
@pytest.mark.parametrize('temperature', [0.0, 0.8])
@pytest.mark.parametrize('with_stop', [False, True])
def test_matches_reference(model, oracle, prompts, gen_length, block_length, steps, temperature,
                           with_stop):
  settings = dict(gen_length=gen_length, block_length=block_length, steps=steps,
                  temperature=temperature, rng=jax.random.key(7))
  stop_ids = (stop_token_of(model, prompts, **settings),) if with_stop else ()
  out = check_against_reference(model, oracle, prompts, stop_ids=stop_ids, **settings)
  if with_stop:
    assert int(out.lengths[0]) <= gen_length // 2  # the stop path really ran


def test_random_remasking_matches_reference(model, oracle, prompts):
  check_against_reference(model, oracle, prompts, gen_length=16, block_length=4, steps=8,
                          remasking='random', rng=jax.random.key(3))


def test_classifier_free_guidance_matches_reference(model, oracle, prompts):
  check_against_reference(model, oracle, prompts, gen_length=12, block_length=4, steps=6,
                          cfg_scale=0.5)


def test_threshold_decoding_matches_reference(model, oracle, prompts):
  out = check_against_reference(model, oracle, prompts, gen_length=16, block_length=8, steps=2,
                                threshold=0.01)  # this random model is rarely confident
  assert int(out.forwards) < 16  # parallel: fewer steps than tokens
  assert (np.asarray(out.tokens) != model.config.tokens.mask).all()


def test_stop_skips_later_blocks_and_leaves_them_masked(model, prompts):
  settings = dict(gen_length=16, block_length=4, steps=16)
  stop = stop_token_of(model, prompts, **settings)
  out = vj.generate(model, prompts, stop_ids=(stop,), **settings)
  alone = vj.generate(model, prompts[:1], stop_ids=(stop,), **settings)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  assert lengths[0] <= 8
  for row in range(len(prompts)):
    assert stop not in tokens[row, :lengths[row]]
    if lengths[row] < 16:
      assert tokens[row, lengths[row]] == stop
      next_block = (lengths[row] // 4 + 1) * 4
      assert (tokens[row, next_block:] == model.config.tokens.mask).all()
  assert int(alone.forwards) < 16  # blocks after the stop were not decoded


def test_rows_equal_running_alone(model, prompts):
  keys = jax.random.split(jax.random.key(11), len(prompts))
  batch = vj.generate(model, prompts, gen_length=8, block_length=4, steps=8, temperature=1.0,
                      rng=keys)
  for row, prompt in enumerate(prompts):
    alone = vj.generate(model, [prompt], gen_length=8, block_length=4, steps=8, temperature=1.0,
                        rng=keys[row:row + 1])
    np.testing.assert_array_equal(np.asarray(batch.tokens[row]), np.asarray(alone.tokens[0]))


@pytest.mark.parametrize('mesh_name', ['fsdp', 'fsdp_tp:tensor=2'])
def test_sharded_model_decodes_the_same(model, prompts, mesh_name):
  from vidlada_jax import sharding

  mesh, rules = sharding.mesh_from_spec(mesh_name)
  sharded = sharding.place(model, mesh, rules)
  assert len(sharded.lm.layers.mlp.up_proj.kernel[...].sharding.device_set) == 8
  settings = dict(gen_length=8, block_length=4, steps=8, temperature=0.5, rng=jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(vj.generate(sharded, prompts, **settings).tokens),
                                np.asarray(vj.generate(model, prompts, **settings).tokens))


def test_multimodal_prompt_matches_reference(tmp_path):
  torch_model = ref.TinyVidLaDA(seed=5)
  directory = ref.write_checkpoint(tmp_path, torch_model.state_dict(), torch_model.config())
  model = vj.from_pretrained(directory, dtype='float32', progress=False)
  prompt = np.array([126080, 11, 12, -200, 13, 14], np.int32)
  pixels = np.random.default_rng(8).uniform(-1, 1, size=(1, 1, 384, 384, 3)).astype(np.float32)
  out = vj.generate(model, prompt[None], pixels, gen_length=8, block_length=4, steps=4,
                    trace=True)
  embeds, _ = model.embed_multimodal(jnp.asarray(prompt[None]), jnp.asarray(pixels))
  logits_fn = jax.jit(lambda x: model.lm.logits(model.lm(x[None]))[0])
  embed_fn = lambda ids: np.asarray(model.lm.embed(jnp.asarray(ids)))
  tokens = model.config.tokens
  expected, _ = reference_generate(
      logits_fn, embed_fn, np.asarray(embeds[0]), embed_fn(np.array(tokens.mask)),
      gen_length=8, block_length=4, steps=4, row_key=jax.random.key(0), mask_id=tokens.mask,
      suppressed_ids=(tokens.eos, tokens.bos, tokens.start_header, tokens.end_header))
  np.testing.assert_array_equal(np.asarray(out.tokens[0]), expected)


def test_suppressed_ids_are_never_proposed(model, prompts):
  # Make EOS or BOS the favourite at every position (+c and -c: one of the two logits is large
  # and positive): the sampler must still never write either.
  tokens = model.config.tokens
  biased = nnx.clone(model)
  kernel = biased.lm.lm_head.kernel
  direction = 1000 * kernel[...][:, 0]
  kernel.set_value(kernel[...].at[:, tokens.eos].set(direction).at[:, tokens.bos].set(-direction))
  favourites = np.asarray(biased.lm_logits(prompts[0][None])).argmax(-1)
  assert set(favourites.ravel().tolist()) <= {tokens.eos, tokens.bos}
  out = vj.generate(biased, prompts, gen_length=8, block_length=8, steps=8, stop_ids=())
  assert not np.isin(np.asarray(out.tokens), [tokens.eos, tokens.bos]).any()


def test_one_compiled_program_per_shape(model, prompts):
  before = sampling._sample_program._cache_size()
  kwargs = dict(gen_length=8, block_length=4, steps=4)
  vj.generate(model, prompts, **kwargs)
  vj.generate(model, [p + 1 for p in prompts], **kwargs)  # new values, same shapes
  assert sampling._sample_program._cache_size() == before + 1

  ids, valid = sampling.pad_prompts(prompts, 0)
  graphdef, params = nnx.split(model)
  config = sampling.SamplerConfig(**kwargs)
  jaxpr = jax.make_jaxpr(lambda p: sampling._sample_program(
      graphdef, p, ids, valid, None, jax.random.split(jax.random.key(0), 2), config=config,
      policy=sampling.FullRecompute(), trace=False))(params)
  text = str(jaxpr)
  assert text.count('while[') >= 2  # blocks and steps are lax loops inside the one program
  assert 'callback' not in text  # no host round trips


def test_visual_tokens_are_encoded_once(tmp_path):
  model = vj.init_model(vj.model_config('tiny'))
  ids = np.array([[126080, 5, -200, 6]], np.int32)
  pixels = jnp.zeros((1, 1, 384, 384, 3))
  graphdef, params = nnx.split(model)
  config = sampling.SamplerConfig(gen_length=4, block_length=4, steps=4)
  jaxpr = jax.make_jaxpr(lambda p: sampling._sample_program(
      graphdef, p, ids, np.ones_like(ids, bool), pixels, jax.random.split(jax.random.key(0), 1),
      config=config, policy=sampling.FullRecompute(), trace=False))(params)

  def convolutions_inside_loops(jaxpr, inside=False):
    count = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated' and inside:
        count += 1
      for sub in jaxprs_in_params(eqn.params):
        count += convolutions_inside_loops(sub, inside or eqn.primitive.name == 'while')
    return count

  assert 'conv_general_dilated' in str(jaxpr)
  assert convolutions_inside_loops(jaxpr.jaxpr) == 0


@pytest.mark.parametrize('kwargs, message', [
    (dict(gen_length=10, block_length=4, steps=4), 'multiple of block_length'),
    (dict(gen_length=8, block_length=4, steps=3), 'multiple of the number of blocks'),
    (dict(gen_length=8, block_length=4, steps=16), 'exceed the block length'),
    (dict(gen_length=0, block_length=4, steps=4), 'positive integer'),
    (dict(gen_length=8, block_length=4, steps=4, remasking='top_p'), 'remasking must be'),
    (dict(gen_length=8, block_length=4, steps=4, temperature=0.5), 'need rng'),
])
def test_invalid_settings_are_explained(model, prompts, kwargs, message):
  with pytest.raises(ValueError, match=message):
    vj.generate(model, prompts, **kwargs)


def test_video_placeholder_needs_pixels(model):
  with pytest.raises(ValueError, match='no pixel_values'):
    vj.generate(model, [np.array([1, -200, 2])], gen_length=4, block_length=4, steps=4)
