"""Parameter trees: building models abstractly, naming parameters by path, counting them."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidlada_jax.config import ModelConfig
from vidlada_jax.vidlada import VidLaDA


def is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def path_name(keypath) -> str:
  """'lm/layers/self_attn/q_proj/kernel' for a pytree key path into an nnx State."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in keypath)


def map_params(fn: Callable[[str, nnx.Variable], object], state):
  """Maps fn(path_name, variable) over the Variables of a State, keeping its structure."""
  return jax.tree_util.tree_map_with_path(
      lambda keypath, v: fn(path_name(keypath), v), state, is_leaf=is_variable)


def flat_params(state) -> dict[str, nnx.Variable]:
  leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=is_variable)
  return {path_name(keypath): v for keypath, v in leaves}


def abstract_model(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, state of ShapeDtypeStructs) of a model: shapes and dtypes, no memory."""
  return nnx.split(nnx.eval_shape(lambda: VidLaDA(config, rngs=nnx.Rngs(0))))


def count_params(config: ModelConfig) -> int:
  """Exact number of parameters of `config`, computed with jax.eval_shape (nothing allocated)."""
  _, state = abstract_model(config)
  return sum(int(np.prod(v.shape)) for v in flat_params(state).values())


def randomise(model: VidLaDA, seed: int = 0) -> VidLaDA:
  """Weights of useful scale for tests and benchmarks of random models.

  `init_model`'s initialiser (normal 0.02) makes a small random model predict almost the same
  token everywhere; these weights give peaked, varied predictions, so a wrong cache shows.
  Redraws every parameter: norms' scales U(0.5, 1.5), biases N(0, 0.1), embeddings N(0, 0.5),
  projection kernels N(0, (2 / sqrt(fan_in))^2)."""
  graphdef, state = nnx.split(model)
  keys = iter(jax.random.split(jax.random.key(seed), len(flat_params(state))))

  def draw(path, variable):
    value, key = variable.get_value(), next(keys)
    shape = value.shape[1:] if '/layers/' in path else value.shape
    if 'norm' in path and path.endswith(('weight', 'scale')):
      new = jax.random.uniform(key, value.shape, jnp.float32) + 0.5
    elif len(shape) == 1:
      new = jax.random.normal(key, value.shape, jnp.float32) * 0.1
    elif path.endswith('embedding'):
      new = jax.random.normal(key, value.shape, jnp.float32) * 0.5
    else:  # kernels: q/k/v map E -> (heads, head_dim); everything else has one output axis
      outputs = 2 if path.endswith(('q_proj/kernel', 'k_proj/kernel', 'v_proj/kernel')) else 1
      fan_in = int(np.prod(shape[:-outputs]))
      new = jax.random.normal(key, value.shape, jnp.float32) * (2.0 / np.sqrt(fan_in))
    return variable.replace(new.astype(value.dtype))

  return nnx.merge(graphdef, map_params(draw, state))
