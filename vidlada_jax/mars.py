"""MARS-Cache and Fast-dLLM's dual cache: cache policies for `vj.generate(..., cache=...)`.

Plain diffusion decoding runs every layer over every token at every step, about 13.5k tokens
with 64 frames. MARS-Cache (SPEC 8) recomputes far less, with three mechanisms, each a knob:

1. Modality-asynchronous refresh. Per layer, the cache holds the visual tokens V, the prompt text
   T and the response R (keys, values and layer inputs; `vidlada_jax.cache`). At every step R is
   recomputed; T every `tau_t(layer)` steps; V every `visual_ratio * tau_t(layer)` steps. The
   intervals follow a pyramid (deeper layers, which drift more, refresh more often) or an
   explicit list. The first step of a generation recomputes everything.
2. Frame-wise chunk attention. When V is recomputed, a visual query of frame n sees only the keys
   of frames n - w .. n + w, the anchors, the text and the response; text and response queries
   keep global attention. Computed with the block-sparse op
   (`vidlada_jax.attention_backends.block_sparse`).
3. Anchor tokens. When V is recomputed, `anchor_queries` visual queries sampled at equal stride
   attend (a cheap proxy) to every visual key; the `num_anchors` keys they attend to most,
   averaged over heads and sampled queries, are visible to every visual query.

`MarsCache.exact()` turns every mechanism off and decodes exactly as plain decoding does
(same tokens; logits equal up to float summation order).

So that each recomputed set is one window of consecutive rows, the cache stores the sequence
segment-major: visual rows first (frame after frame), then the prompt text (with any left
padding), then the canvas. Attention is bidirectional and RoPE positions travel with their rows
(they stay absolute), so reordering rows changes nothing but summation order; and the frame ids of
the visual rows become a static function of the frame count, which lets the block table of chunk
attention be built when the program is compiled.

`DualCache` is Fast-dLLM's block-wise dual cache for comparison: at the first step of each block
every row is recomputed; at the other steps only the current block, with the prefix and suffix
keys and values reused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidlada_jax import sharding as sharding_lib
from vidlada_jax.cache import AnchorSearch, LMCache, Recompute, RowWindow, frame_ids_of

R, RT, RTV = 0, 1, 2  # what a layer recomputes: the response; + the text; + the visual tokens


def _new_cache(model, embeddings, positions, key_mask, num_anchors, mesh, rules) -> LMCache:
  cache = model.lm.init_cache(embeddings, positions, key_mask, num_anchors=num_anchors)
  if mesh is not None and rules is not None:
    cache = jax.lax.with_sharding_constraint(
        cache, sharding_lib.cache_shardings(cache, mesh, rules))
  return cache


def _hashable_rules(rules):
  """Rules as nested tuples: a policy is a static argument of the compiled program."""
  return None if rules is None else tuple(tuple(rule) for rule in rules)


def _canvas_start_embeddings(model, prompt, config):
  mask = model.lm.embed(jnp.asarray(config.tokens.mask)).astype(prompt.embeddings.dtype)
  batch, width = prompt.embeddings.shape[0], prompt.embeddings.shape[-1]
  return jnp.broadcast_to(mask, (batch, config.gen_length, width))


@dataclasses.dataclass(frozen=True)
class MarsCache:
  """MARS-Cache, every mechanism a knob (defaults: see the README's measurements).

  pyramid: (tau_t of the first layer, tau_t of the last), interpolated linearly in between and
    rounded; ignored when `text_intervals` lists tau_t for every layer.
  visual_ratio: tau_v = visual_ratio * tau_t (an integer, so V refreshes only when T does).
  frame_window: w of frame-wise chunk attention; None attends globally.
  anchor_queries, num_anchors: the anchor search (m sampled queries, k anchors); 0 anchors: off.
  rules: optional logical-axis rules (`configs/mesh.py`) to lay the cache out over the model's
    mesh; without them XLA propagates shardings from the parameters.
  """

  pyramid: tuple[int, int] = (12, 6)
  text_intervals: tuple[int, ...] | None = None
  visual_ratio: int = 2
  frame_window: int | None = 1
  anchor_queries: int = 128
  num_anchors: int = 64
  rules: Any = None

  def __post_init__(self):
    if self.text_intervals is not None:
      object.__setattr__(self, 'text_intervals', tuple(int(t) for t in self.text_intervals))
    intervals = self.text_intervals or self.pyramid
    if len(self.pyramid) != 2 or min(intervals) < 1:
      raise ValueError(f'refresh intervals must be >= 1 (pyramid is (first, last)), got {self}')
    if not isinstance(self.visual_ratio, int) or self.visual_ratio < 1:
      raise ValueError(f'visual_ratio must be a positive integer, got {self.visual_ratio!r}')
    if self.frame_window is not None and self.frame_window < 0:
      raise ValueError(f'frame_window must be >= 0 or None, got {self.frame_window}')
    if self.num_anchors < 0 or self.anchor_queries < 1:
      raise ValueError(f'num_anchors must be >= 0 and anchor_queries >= 1, got {self}')
    if self.num_anchors and self.frame_window is None:
      raise ValueError('anchors extend chunk attention: set frame_window too (or num_anchors=0)')
    object.__setattr__(self, 'rules', _hashable_rules(self.rules))

  @classmethod
  def exact(cls) -> 'MarsCache':
    """Every mechanism off: every layer recomputes every row at every step, globally."""
    return cls(pyramid=(1, 1), visual_ratio=1, frame_window=None, num_anchors=0)

  def intervals(self, num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """(tau_t, tau_v) per layer."""
    if self.text_intervals is not None:
      if len(self.text_intervals) != num_layers:
        raise ValueError(f'text_intervals lists {len(self.text_intervals)} layers; the model '
                         f'has {num_layers}')
      text = np.asarray(self.text_intervals)
    else:
      text = np.rint(np.linspace(*self.pyramid, num_layers)).astype(int)
    return text, text * self.visual_ratio

  def layer_windows(self, step, num_layers: int) -> jax.Array:
    """What each layer recomputes at global step `step`: R, RT or RTV ([layers] int32)."""
    text, visual = (jnp.asarray(t, jnp.int32) for t in self.intervals(num_layers))
    return jnp.where(step % visual == 0, RTV, jnp.where(step % text == 0, RT, R)).astype(jnp.int32)

  def windows(self, num_visual: int, prompt_length: int, gen_length: int
              ) -> tuple[RowWindow, ...]:
    """The R, RT and RTV row windows of the segment-major sequence."""
    length = prompt_length + gen_length
    frame_window = self.frame_window if num_visual else None
    anchors = (AnchorSearch(self.anchor_queries, self.num_anchors)
               if frame_window is not None and self.num_anchors else None)
    return (RowWindow(prompt_length, gen_length),
            RowWindow(num_visual, length - num_visual),
            RowWindow(0, length, frame_window=frame_window, anchors=anchors))

  # --- CachePolicy ---

  def init(self, model, prompt, config, mesh=None) -> LMCache:
    self.intervals(model.config.lm.num_layers)  # validates an explicit list against the model
    batch, prompt_length = prompt.embeddings.shape[:2]
    if prompt.layout is None:
      order = jnp.broadcast_to(jnp.arange(prompt_length), (batch, prompt_length))
    else:  # visual rows first, then text rows, each in their own order
      order = jnp.argsort(~prompt.layout.is_visual, axis=1, stable=True)
    canvas = jnp.broadcast_to(prompt_length + jnp.arange(config.gen_length),
                              (batch, config.gen_length))
    order = jnp.concatenate([order, canvas], axis=1)
    embeddings = jnp.concatenate([
        jnp.take_along_axis(prompt.embeddings, order[:, :prompt_length, None], axis=1),
        _canvas_start_embeddings(model, prompt, config)], axis=1)
    return _new_cache(model, embeddings, jnp.take_along_axis(prompt.positions, order, axis=1),
                      jnp.take_along_axis(prompt.key_mask, order, axis=1),
                      self.num_anchors if prompt.num_visual else 0, mesh, self.rules)

  def plan(self, *, num_layers: int, prompt_length: int, num_visual: int, tokens_per_frame: int,
           config, step, block, block_step) -> Recompute:
    """What the layers recompute at global `step` (concrete or traced)."""
    del block_step
    return Recompute(
        windows=self.windows(num_visual, prompt_length, config.gen_length),
        layer_window=self.layer_windows(step, num_layers),
        input_start=prompt_length,
        output_start=prompt_length + block * config.block_length,
        output_size=config.block_length,
        frame_ids=frame_ids_of(num_visual, tokens_per_frame, prompt_length + config.gen_length))

  def block_hidden(self, model, prompt, cache: LMCache, canvas, *, block, block_step, step,
                   config):
    return _cached_block_hidden(self, model, prompt, cache, canvas, config, step=step,
                                block=block, block_step=block_step)


def _cached_block_hidden(policy, model, prompt, cache: LMCache, canvas, config, **counters):
  plan = policy.plan(num_layers=model.config.lm.num_layers, prompt_length=prompt.length,
                     num_visual=prompt.num_visual, tokens_per_frame=prompt.tokens_per_frame,
                     config=config, **counters)
  return model.lm(canvas, cache=cache, plan=plan)


@dataclasses.dataclass(frozen=True)
class DualCache:
  """Fast-dLLM's block-wise dual cache: at the first step of each block every row is recomputed;
  at the others only the current block, with the prefix and suffix keys and values reused."""

  rules: Any = None

  def __post_init__(self):
    object.__setattr__(self, 'rules', _hashable_rules(self.rules))

  def init(self, model, prompt, config, mesh=None) -> LMCache:
    embeddings = jnp.concatenate(
        [prompt.embeddings, _canvas_start_embeddings(model, prompt, config)], axis=1)
    return _new_cache(model, embeddings, prompt.positions, prompt.key_mask, 0, mesh, self.rules)

  def plan(self, *, num_layers: int, prompt_length: int, num_visual: int, tokens_per_frame: int,
           config, step, block, block_step) -> Recompute:
    del num_visual, tokens_per_frame, step
    block_start = prompt_length + block * config.block_length
    refresh = jnp.broadcast_to(jnp.asarray(block_step) == 0, (num_layers,))
    return Recompute(
        windows=(RowWindow(block_start, config.block_length),
                 RowWindow(0, prompt_length + config.gen_length)),
        layer_window=refresh.astype(jnp.int32),
        input_start=prompt_length,
        output_start=block_start,
        output_size=config.block_length)

  def block_hidden(self, model, prompt, cache: LMCache, canvas, *, block, block_step, step,
                   config):
    return _cached_block_hidden(self, model, prompt, cache, canvas, config, step=step,
                                block=block, block_step=block_step)


# The name this policy was published under in vidlada-jax 0.1.
MarsCacheConfig = MarsCache
