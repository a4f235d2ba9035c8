"""The analytic FLOPs (`vidlada_jax.flops`) against the matrix products the programs really run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vidlada_jax as vj
from tests.jaxpr_flops import dot_flops
from vidlada_jax import flops
from vidlada_jax.cache import Recompute, RowWindow

LENGTH, BLOCK = 96, 16


@pytest.fixture(scope='module')
def lm():
  config = vj.model_config('tiny-lm', attention='xla').replace(
      lm=vj.LMConfig(**{**vars(vj.config.TINY_LM), 'num_kv_heads': 2, 'num_layers': 3}))
  return vj.init_model(config, seed=0).lm


def test_plain_step(lm):
  """A plain step: every layer over every row, then the block's logits."""
  x = jnp.zeros((1, LENGTH, lm.config.hidden_size))
  step = lambda x: lm.logits(lm(x)[:, -BLOCK:])
  counted = dot_flops(jax.make_jaxpr(step)(x).jaxpr)
  assert counted == flops.plain_flops(lm.config, LENGTH, BLOCK)


@pytest.mark.parametrize('window', [RowWindow(LENGTH - BLOCK, BLOCK),  # R: the response
                                    RowWindow(40, LENGTH - 40)],  # RT: text and response
                         ids=['response', 'text_and_response'])
def test_cached_step(lm, window):
  """A cached step recomputing one window at every layer, then the block's logits."""
  x = jnp.zeros((1, LENGTH, lm.config.hidden_size))
  cache = lm.init_cache(x)
  plan = Recompute(windows=(window,), layer_window=np.zeros(lm.config.num_layers, np.int32),
                   input_start=LENGTH - BLOCK, output_start=LENGTH - BLOCK, output_size=BLOCK)
  step = lambda new, cache: lm.logits(lm(new, cache=cache, plan=plan)[0])
  counted = dot_flops(jax.make_jaxpr(step)(x[:, -BLOCK:], cache).jaxpr)
  expected = flops.plan_flops(lm.config, plan, LENGTH)
  assert counted == expected
  # And the saving is real: fewer rows, fewer FLOPs than the plain step.
  assert counted < flops.plain_flops(lm.config, LENGTH, BLOCK)
