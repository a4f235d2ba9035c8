"""One optimizer step of the masked-diffusion objective, as a pure function of arrays.

    state, metrics = train_step(state, frozen, batch)

`state` holds what changes (the trainable parameters as a {path: array} dict, optimizer state,
step, base RNG key); `frozen` the parameters that do not (a frozen vision tower); `batch` one
global batch split into `accumulation` micro-batches ([accumulation, micro_batch, ...]), whose
gradients are averaged in a `lax.scan` before one update, so the global batch need not fit at
once. `make_train_step` returns the function jitted with explicit in/out shardings and the
state donated, so parameters and optimizer state are updated in place.

The objective is VidLaDA's masked-diffusion loss (`MaskedDiffusion`), or for pretraining a vision
tower on a synthetic world, per-cell colour presence (`CellColourPretraining`); each also reports
one count per step (masked tokens, wrong labels).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import linen, nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vidlada_jax import sharding as sharding_lib
from vidlada_jax.objective import masked_diffusion_loss
from vidlada_jax.params import map_params
from vidlada_jax.preprocess import normalize_frames
from vidlada_jax.tower_pretraining import CellColours

BATCH_AXES = {'input_ids': ('batch', None), 'labels': ('batch', None),
              'frames': ('batch', None, None, None, None)}


@struct.dataclass
class TrainState:
  params: dict[str, jax.Array]  # the trainable parameters, by path
  opt_state: Any
  step: jax.Array  # int32 []: optimizer steps taken
  rng: jax.Array  # uint32 [2]: the base key; step s draws from fold_in(rng, s)


class Objective(Protocol):
  """A training loss over one micro-batch, and the name of the count it reports with it."""

  count_name: str

  def __call__(self, model, micro: dict[str, jax.Array], key: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """(mean loss, count) of the micro-batch."""


@dataclasses.dataclass(frozen=True)
class MaskedDiffusion:
  """VidLaDA's objective (SPEC 3); counts the masked tokens."""

  chunk: int = 1024  # masked positions per chunk of the vocabulary projection
  count_name = 'masked_tokens'

  def __call__(self, model, micro, key):
    pixels = normalize_frames(micro['frames']) if 'frames' in micro else None
    loss, aux = masked_diffusion_loss(model, micro['input_ids'], micro['labels'], key, pixels,
                                      chunk=self.chunk)
    return loss, aux.masked.sum()


@dataclasses.dataclass(frozen=True)
class CellColourPretraining:
  """Stage 0 of the demo: the tower and projector learn per-cell colour presence from the
  batch's frames (`vidlada_jax.tower_pretraining`); the texts are not used. Counts wrong labels."""

  objective: CellColours
  count_name = 'label_errors'

  def __call__(self, model, micro, key):
    del key  # deterministic
    return self.objective.loss(model, micro['frames'])


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  """What the trainer needs of a model to train it."""

  graphdef: nnx.GraphDef
  abstract_state: nnx.State  # the model's Variables (ShapeDtypeStructs), for merging values in
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  objective: Objective = MaskedDiffusion()

  def model(self, values: dict[str, jax.Array]):
    return nnx.merge(self.graphdef, map_params(lambda p, v: v.replace(values[p]),
                                               self.abstract_state))

  @property
  def metric_names(self) -> tuple[str, ...]:
    return ('loss', 'grad_norm', 'learning_rate', self.objective.count_name, 'params_finite')


def _loss(functions: StepFunctions, trainable, frozen, micro, key):
  return functions.objective(functions.model({**trainable, **frozen}), micro, key)


def train_step(functions: StepFunctions, state: TrainState, frozen: dict[str, jax.Array],
               batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  step_key = jax.random.fold_in(state.rng, state.step)
  accumulation = jax.tree.leaves(batch)[0].shape[0]
  grad_fn = jax.value_and_grad(lambda p, m, k: _loss(functions, p, frozen, m, k), has_aux=True)

  def accumulate(carry, micro_and_index):
    grads, loss, count = carry
    micro, index = micro_and_index
    (micro_loss, micro_count), micro_grads = grad_fn(
        state.params, micro, jax.random.fold_in(step_key, index))
    grads = jax.tree.map(lambda g, m: g + m.astype(jnp.float32), grads, micro_grads)
    return (grads, loss + micro_loss, count + micro_count.astype(jnp.int32)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  carry = (zeros, jnp.float32(0), jnp.int32(0))
  if accumulation == 1:
    # The same sums without a loop: XLA:CPU runs a one-trip `scan` body about 2x slower than
    # the same computation outside a loop.
    (grads, loss, count), _ = accumulate(
        carry, (jax.tree.map(lambda x: x[0], batch), jnp.int32(0)))
  else:
    (grads, loss, count), _ = jax.lax.scan(
        accumulate, carry, (batch, jnp.arange(accumulation, dtype=jnp.int32)))
  # The loss is a mean over samples and micro-batches are equal in size: averaging the
  # micro-batch means gives the global batch's mean and its gradient.
  grads = jax.tree.map(lambda g: g / accumulation, grads)
  loss = loss / accumulation
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = functions.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
             'learning_rate': functions.lr_schedule(state.step),
             functions.objective.count_name: count,
             # A finite loss can still give non-finite weights (an overflowing update): the
             # trainer checks this before every save.
             'params_finite': jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                                 for p in jax.tree.leaves(params)]))}
  return TrainState(params=params, opt_state=opt_state, step=state.step + 1, rng=state.rng), metrics


def batch_shardings(mesh: Mesh, rules) -> dict[str, NamedSharding]:
  """[accumulation, batch, ...] arrays: the micro-batch dimension over the `batch` rule."""
  return {k: NamedSharding(mesh, PartitionSpec(None, *sharding_lib.partition_spec(axes, rules)))
          for k, axes in BATCH_AXES.items()}


def state_shardings(functions: StepFunctions, abstract_params: dict, param_shardings: dict,
                    mesh: Mesh) -> TrainState:
  """The sharding of every array of the train state: optimizer moments follow their
  parameters; counters and the key are replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(functions.tx.init, abstract_params)
  masked = optax.transforms.MaskedNode  # where a per-module group holds no state
  opt = optax.tree_map_params(
      functions.tx, lambda leaf, sharding: leaf if isinstance(leaf, masked) else sharding,
      abstract_opt, param_shardings, transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, (NamedSharding, masked)))
  return TrainState(params=param_shardings, opt_state=opt, step=replicated, rng=replicated)


def make_train_step(functions: StepFunctions, mesh: Mesh, rules, shardings: TrainState,
                    frozen_shardings: dict) -> Callable:
  """`train_step` jitted for `mesh`: explicit shardings, the state donated, activations
  constrained by the logical rules (flax's `logical_axis_rules`)."""
  replicated = NamedSharding(mesh, PartitionSpec())

  def step(state, frozen, batch):
    with linen.logical_axis_rules(rules):
      return train_step(functions, state, frozen, batch)

  jitted = jax.jit(
      step,
      in_shardings=(shardings, frozen_shardings, batch_shardings(mesh, rules)),
      out_shardings=(shardings, {k: replicated for k in functions.metric_names}),
      donate_argnums=(0,))

  def run(state, frozen, batch):
    with jax.set_mesh(mesh):
      return jitted(state, frozen, batch)

  run.jitted = jitted
  return run
