"""Measuring what a cache policy changes: its logits against plain decoding's, step by step.

Once a cached decode reveals one different token, the two decodes see different canvases and
their logits are no longer comparable. `compare_along` therefore replays one trajectory (the
canvases plain decoding went through, from `generate(..., trace=True)`) through two policies side
by side, each with its own cache, and reports per step how far the policy's block logits are
from the reference's and how often their top-1 proposals agree on the still-masked positions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from vidlada_jax import sampling
from vidlada_jax.sampling import CachePolicy, DecodeState, SamplerConfig


@struct.dataclass
class StepComparison:
  max_abs_error: np.ndarray  # [T]: max |policy - reference| over the block's logits
  max_abs_reference: np.ndarray  # [T]: max |reference| (for relative errors)
  top1_agreement: np.ndarray  # [T]: fraction of still-masked positions with the same argmax

  @property
  def max_relative_error(self) -> float:
    return float(np.max(self.max_abs_error / self.max_abs_reference))


def trajectory(history: np.ndarray, mask_id: int):
  """(canvas before each step [T, B, G], block [T], step within block [T]) from a traced decode's
  `history` [blocks, max_steps, B, G] (-1 where no step ran)."""
  history = np.asarray(history)
  canvas = np.full(history.shape[2:], mask_id, np.int32)
  before, blocks, steps = [], [], []
  for block in range(history.shape[0]):
    for step in range(history.shape[1]):
      if history[block, step, 0, 0] < 0:
        continue
      before.append(canvas)
      blocks.append(block)
      steps.append(step)
      canvas = history[block, step]
  return np.stack(before), np.asarray(blocks, np.int32), np.asarray(steps, np.int32)


def compare_along(model, input_ids, pixel_values, history, *, config: SamplerConfig,
                  policies: dict[str, CachePolicy],
                  reference: CachePolicy = sampling.FullRecompute()) -> dict[str, StepComparison]:
  """Replays the canvases of `history` through `reference` and every policy in one pass (the
  reference runs once); see the module doc."""
  ids, valid = sampling.pad_prompts(input_ids, model.config.tokens.eos)
  canvases, blocks, steps = trajectory(history, model.config.tokens.mask)
  graphdef, params = nnx.split(model)
  results = _compare(
      graphdef, params, jnp.asarray(ids), jnp.asarray(valid), pixel_values, jnp.asarray(canvases),
      jnp.asarray(blocks), jnp.asarray(steps), config=config, policies=tuple(policies.values()),
      reference=reference)
  return {name: jax.tree.map(np.asarray, result) for name, result in zip(policies, results)}


@functools.partial(jax.jit, static_argnames=('graphdef', 'config', 'policies', 'reference'))
def _compare(graphdef, params, ids, valid, pixel_values, canvases, blocks, steps, *, config,
             policies, reference):
  model = nnx.merge(graphdef, params)
  prompt = sampling.prepare_prompt(model, ids, valid, pixel_values, config)

  def step(caches, xs):
    canvas, block, block_step, index = xs
    state = DecodeState(canvas=canvas, masked=canvas == config.tokens.mask, block=block,
                        step=block_step, block_masked=jnp.zeros(canvas.shape[0], jnp.int32),
                        forwards=index, history=jnp.zeros(0, jnp.int32), cache=None)
    masked = sampling.block_slice(state.masked, block, config.block_length)
    ref_logits, ref_cache = sampling.block_logits(
        model, reference, prompt, state.replace(cache=caches[0]), config)
    new_caches, results = [ref_cache], []
    for policy, cache in zip(policies, caches[1:]):
      logits, cache = sampling.block_logits(model, policy, prompt, state.replace(cache=cache),
                                            config)
      same = jnp.argmax(logits, -1) == jnp.argmax(ref_logits, -1)
      results.append(StepComparison(
          max_abs_error=jnp.max(jnp.abs(logits - ref_logits)),
          max_abs_reference=jnp.max(jnp.abs(ref_logits)),
          top1_agreement=jnp.sum(same & masked) / jnp.maximum(masked.sum(), 1)))
      new_caches.append(cache)
    return tuple(new_caches), tuple(results)

  caches = tuple(p.init(model, prompt, config) for p in (reference, *policies))
  _, results = jax.lax.scan(
      step, caches, (canvases, blocks, steps, jnp.arange(len(steps), dtype=jnp.int32)))
  return results
