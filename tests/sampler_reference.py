"""SPEC 4 written out step by step in Python/numpy (float64), one prompt at a time.

Deliberately plain: Python loops over blocks and steps, numpy for everything else. The model is
an oracle `logits_fn(embeddings [L, E]) -> logits [L, V]`, and the random numbers come from the
sampler's documented stream (`vidlada_jax.sampling.step_keys`), so both sides draw the same noise.
"""

from __future__ import annotations

import jax
import numpy as np

from vidlada_jax.sampling import step_keys


def reference_generate(logits_fn, embed_fn, prompt: np.ndarray, mask_embedding: np.ndarray, *,
                       gen_length: int, steps: int, block_length: int, temperature: float = 0.0,
                       remasking: str = 'low_confidence', cfg_scale: float = 0.0,
                       stop_ids=(), row_key=None, mask_id: int, suppressed_ids,
                       threshold: float | None = None):
  """Returns (final canvas [G], {(block, step): canvas after that step})."""
  canvas = np.full(gen_length, mask_id, np.int64)
  still_masked = np.ones(gen_length, bool)
  num_blocks = gen_length // block_length
  steps_per_block = steps // num_blocks
  history = {}

  def first_stop():
    for i in range(gen_length):
      if not still_masked[i] and canvas[i] in stop_ids:
        return i
    return gen_length

  def logits_of(prompt_embeddings):
    sequence = np.concatenate([prompt_embeddings, embed_fn(canvas)], axis=0)
    return np.asarray(logits_fn(sequence), np.float64)

  for block in range(num_blocks):
    stop = first_stop()
    if not still_masked[:stop].any():
      break  # everything before the stop is revealed: later blocks are skipped
    lo, hi = block * block_length, (block + 1) * block_length
    n = int(still_masked[lo:hi].sum())
    base, extra = divmod(n, steps_per_block)
    max_steps = block_length if threshold is not None else steps_per_block
    for step in range(max_steps):
      stop = first_stop()
      fillable = np.zeros(gen_length, bool)
      fillable[lo:hi] = still_masked[lo:hi]
      fillable[stop:] = False
      if not fillable.any():
        break

      logits = logits_of(prompt)[len(prompt) + lo:len(prompt) + hi]
      if cfg_scale > 0:
        unconditional = logits_of(np.broadcast_to(mask_embedding, prompt.shape))
        unconditional = unconditional[len(prompt) + lo:len(prompt) + hi]
        logits = unconditional + (cfg_scale + 1) * (logits - unconditional)
      for j in range(block_length):
        if still_masked[lo + j]:
          logits[j, list(suppressed_ids)] = -np.inf

      gumbel_key, uniform_key = step_keys(row_key[None], block, step)
      if temperature > 0:
        noise = np.asarray(jax.random.gumbel(gumbel_key[0], logits.shape), np.float64)
        proposals = np.argmax(logits / temperature + noise, axis=-1)
      else:
        proposals = np.argmax(logits, axis=-1)
      if remasking == 'low_confidence':
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        confidence = probs[np.arange(block_length), proposals]
      else:
        confidence = np.asarray(jax.random.uniform(uniform_key[0], (block_length,)), np.float64)

      scores = np.full(gen_length, -np.inf)
      scores[lo:hi] = confidence
      scores[~fillable] = -np.inf
      order = np.argsort(-scores, kind='stable')
      if threshold is None:
        k = min(base + (1 if step < extra else 0), int(fillable.sum()))
        chosen = order[:k]
      else:
        chosen = [i for i in range(gen_length) if fillable[i] and scores[i] > threshold]
        chosen = sorted(set(chosen) | {int(order[0])})
      for i in chosen:
        canvas[i] = proposals[i - lo]
        still_masked[i] = False
      history[(block, step)] = canvas.copy()
  return canvas, history
