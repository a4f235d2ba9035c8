"""Building blocks shared by the vision tower and the language model."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx, struct


# Flax's own partitioning metadata: `out_sharding` holds logical axis names, which
# `nnx.get_partition_spec` maps to mesh axes under `flax.linen.logical_axis_rules`. Eager sharding
# is off because the modules never see a mesh: `vidlada_jax.sharding` places every parameter.
PARTITIONING = dict(eager_sharding=False)

# Logical axes of the activations between layers ([batch or frames, positions, width]): split
# over the batch devices under the trainer's rules.
ACTIVATION_AXES = ('batch', None, 'activation_embed')


def logical(init: Callable, *names: str | None) -> Callable:
  """Wraps a flax initializer so the parameter it creates carries logical axis names.

  The names (`embed`, `heads`, `mlp`, ...) are mapped to mesh axes by a rule set (see
  `vidlada_jax.sharding.RULE_SETS`).
  """
  return nnx.with_partitioning(init, tuple(names), **PARTITIONING)


class RMSNorm(nnx.Module):
  """Llama/LLaDA RMSNorm: normalise in float32, cast back to the input dtype, then scale."""

  def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=('norm',),
                           **PARTITIONING)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


def rope_inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
  """theta^(-2i/d) for i < d/2, rounded once from float64 to the float32 the reference uses."""
  exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
  return (1.0 / theta**exponents).astype(np.float32)


@struct.dataclass
class RotaryTable:
  """cos and sin of the RoPE angles of every position, computed once per forward pass and shared
  by the queries and keys of every layer. float32 [B, L, 1, D], "rotate half" layout."""

  cos: jax.Array
  sin: jax.Array

  @classmethod
  def of(cls, positions: jax.Array, head_dim: int, theta: float) -> 'RotaryTable':
    inv_freq = jnp.asarray(rope_inverse_frequencies(head_dim, theta))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, L, 1, D]
    return cls(jnp.cos(angles), jnp.sin(angles))

  def rows(self, start, size: int) -> 'RotaryTable':
    """The table of rows [start, start + size) (start may be traced)."""
    take = lambda t: jax.lax.dynamic_slice_in_dim(t, start, size, axis=1)
    return RotaryTable(take(self.cos), take(self.sin))


def apply_rope(x: jax.Array, rope: RotaryTable) -> jax.Array:
  """Rotary embedding of x [B, L, H, D], "rotate half" convention (first/second half of the head
  dim, not pairs). cos and sin are cast to x's dtype before the rotation, as the reference does."""
  cos, sin = rope.cos.astype(x.dtype), rope.sin.astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return x * cos + rotated * sin


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs):
  """`num_layers` independent copies of a layer, parameters stacked on a leading `layers` axis.

  The stack is one module whose parameters have shape [num_layers, ...]; `scan_layers` runs it
  with `lax.scan`, so compile time does not grow with depth.
  """
  keys = jax.random.split(rngs.params(), num_layers)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_layer(nnx.Rngs(0))))
  states = jax.vmap(lambda key: nnx.state(make_layer(nnx.Rngs(params=key))))(keys)
  states = jax.tree.map(
      lambda v: v.replace(out_sharding=('layers',) + tuple(v.get_metadata()['out_sharding'])),
      states,
      is_leaf=lambda x: isinstance(x, nnx.Variable),
  )
  return nnx.merge(graphdef, states)


def scan_layers(layers: nnx.Module, x: jax.Array, *args, remat_policy=None,
                carry_axes: tuple[str | None, ...] | None = None) -> jax.Array:
  """Applies a `stacked` module layer after layer: x <- layer_i(x, *args); with a
  `remat_policy` (a `jax.checkpoint_policies` member) each layer is rematerialised under it.
  `carry_axes` names x's logical axes: under flax's `logical_axis_rules` (the trainer sets
  them) every layer's output is constrained to that sharding; without rules it is a no-op."""
  graphdef, state = nnx.split(layers)

  def apply_layer(carry, layer_state):
    out = nnx.merge(graphdef, layer_state)(carry, *args)
    return linen.with_logical_constraint(out, carry_axes), None

  if remat_policy is not None:
    apply_layer = jax.checkpoint(apply_layer, policy=remat_policy)
  return jax.lax.scan(apply_layer, x, state)[0]
