"""Parameter trees: building models abstractly, naming parameters by path, counting them."""

from __future__ import annotations

from typing import Callable

import jax
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
