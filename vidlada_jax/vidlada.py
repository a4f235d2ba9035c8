"""VidLaDA: vision tower -> projector -> per-frame resampling + row newlines -> splice -> LLaDA.

The data flow of SPEC 1, steps 3-8. Every frame becomes `pooled_side x (pooled_side + 1)` tokens
(14 x 15 = 210 for the reference), frame-major then row-major, each row of the bilinearly resampled
grid followed by the learned `image_newline`. The visual tokens replace the single `<image>`
placeholder (-200) of each prompt; positions then run 0..L-1 over the spliced sequence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from vidlada_jax.config import ModelConfig
from vidlada_jax.llada import LLaDA
from vidlada_jax.nn.attention import get_backend
from vidlada_jax.nn.layers import logical
from vidlada_jax.siglip import SiglipVisionTower


# --- Resampling and the newline grid -------------------------------------------------------------


def bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] interpolation matrix of PyTorch `interpolate(mode="bilinear", align_corners=False)`
  along one axis, without antialiasing: src = max((i + 0.5) * in / out - 0.5, 0).

  Rounded as PyTorch rounds: a float32 scale, then one fused multiply-add for the source index
  (emulated exactly in float64), so the weights equal PyTorch's bit for bit.
  """
  f32 = np.float32
  scale = float(f32(in_size) / f32(out_size))
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    src = f32(max(scale * (i + 0.5) - 0.5, 0.0))
    i0 = int(src)
    i1 = min(i0 + 1, in_size - 1)
    w1 = min(src - f32(i0), f32(1))
    weights[i, i0] += f32(1) - w1
    weights[i, i1] += w1
  return weights


def resize_bilinear(grid: jax.Array, out_height: int, out_width: int) -> jax.Array:
  """Separable bilinear resize of [..., H, W, C] to [..., out_height, out_width, C].

  Width first, then height (PyTorch's order of the two passes), in float32 (what PyTorch uses
  internally for half types too), cast back to the input dtype.
  """
  rows = jnp.asarray(bilinear_weights(grid.shape[-3], out_height))
  cols = jnp.asarray(bilinear_weights(grid.shape[-2], out_width))
  x = grid.astype(jnp.float32)
  x = jnp.einsum('pw,...hwc->...hpc', cols, x, precision=jax.lax.Precision.HIGHEST)
  x = jnp.einsum('oh,...hpc->...opc', rows, x, precision=jax.lax.Precision.HIGHEST)
  return x.astype(grid.dtype)


def append_row_newlines(grid: jax.Array, newline: jax.Array) -> jax.Array:
  """[F, S, S, C] -> [F, S * (S + 1), C]: each row of S tokens followed by `newline`."""
  frames, side = grid.shape[:2]
  newline_column = jnp.broadcast_to(newline.astype(grid.dtype), (frames, side, 1, grid.shape[-1]))
  return jnp.concatenate([grid, newline_column], axis=2).reshape(frames, side * (side + 1), -1)


# --- Splicing visual tokens into the prompt ----------------------------------------------------


@struct.dataclass
class SpliceLayout:
  """Where every position of the spliced sequence comes from ([B, L'] each, L' = L - 1 + V).

  `source_index` indexes the prompt ids for text positions and the visual tokens for visual ones;
  `frame_id` is the frame of a visual token and -1 for text (the metadata chunked attention uses).
  """

  is_visual: jax.Array
  source_index: jax.Array
  frame_id: jax.Array
  image_start: jax.Array  # [B]: position of the first visual token

  @property
  def positions(self) -> jax.Array:
    batch, length = self.is_visual.shape
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def splice_layout(
    input_ids: jax.Array, num_visual: int, tokens_per_frame: int, image_id: int
) -> SpliceLayout:
  """Layout of ids [B, L] (one `image_id` per row) with `num_visual` tokens in its place."""
  length = input_ids.shape[1]
  start = jnp.argmax(input_ids == image_id, axis=1).astype(jnp.int32)[:, None]  # [B, 1]
  j = jnp.arange(length - 1 + num_visual, dtype=jnp.int32)[None, :]
  is_visual = (j >= start) & (j < start + num_visual)
  text_index = jnp.where(j < start, j, j - num_visual + 1)
  visual_index = j - start
  return SpliceLayout(
      is_visual=is_visual,
      source_index=jnp.where(is_visual, visual_index, text_index),
      frame_id=jnp.where(is_visual, visual_index // tokens_per_frame, -1),
      image_start=start[:, 0],
  )


def splice(text_embeds: jax.Array, visual_embeds: jax.Array, layout: SpliceLayout) -> jax.Array:
  """text_embeds [B, L, E] and visual_embeds [B, V, E] -> [B, L - 1 + V, E] following `layout`."""
  text_index = jnp.clip(layout.source_index, 0, text_embeds.shape[1] - 1)
  visual_index = jnp.clip(layout.source_index, 0, visual_embeds.shape[1] - 1)
  text = jnp.take_along_axis(text_embeds, text_index[..., None], axis=1)
  visual = jnp.take_along_axis(visual_embeds.astype(text.dtype), visual_index[..., None], axis=1)
  return jnp.where(layout.is_visual[..., None], visual, text)


def check_image_placeholders(input_ids, image_id: int) -> None:
  """Host-side check (skipped under tracing) that every row holds exactly one placeholder."""
  if isinstance(input_ids, jax.core.Tracer):
    return
  counts = np.sum(np.asarray(input_ids) == image_id, axis=1)
  for row, count in enumerate(counts):
    if count != 1:
      raise ValueError(
          f'row {row} of input_ids holds {count} <image> placeholders ({image_id}); '
          'each prompt must hold exactly one, where the video goes')


# --- The model ---------------------------------------------------------------------------------


class Projector(nnx.Module):
  """`mlp2x_gelu`: Linear -> GELU (exact erf form) -> Linear, with biases."""

  def __init__(self, in_features: int, out_features: int, *, initializer_range: float, dtype,
               param_dtype, rngs):
    init, zeros = nnx.initializers.normal(initializer_range), nnx.initializers.zeros_init()
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = nnx.Linear(
        in_features, out_features, kernel_init=logical(init, 'vision_embed', 'mlp'),
        bias_init=logical(zeros, 'mlp'), **common)
    self.linear_2 = nnx.Linear(
        out_features, out_features, kernel_init=logical(init, 'mlp', 'embed'),
        bias_init=logical(zeros, 'embed'), **common)

  def __call__(self, x):
    return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=False))


class VidLaDA(nnx.Module):
  """The whole model, or the part a checkpoint holds (`lm` or `vision_tower` may be None)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    backend = lambda name, tower: get_backend(
        name, dtype=config.compute_dtype, tower=tower, interpret=config.runtime.interpret_kernels)
    common = dict(dtype=config.compute_dtype, param_dtype=config.storage_dtype)
    lm_cfg, vision_cfg = config.lm, config.vision
    self.vision_tower = nnx.data(
        SiglipVisionTower(vision_cfg, backend(config.runtime.vision_attention, 'vision'),
                          remat_policy=config.runtime.remat_policy, rngs=rngs, **common)
        if vision_cfg else None)
    self.mm_projector = nnx.data(
        Projector(vision_cfg.hidden_size, lm_cfg.hidden_size,
                  initializer_range=lm_cfg.initializer_range, rngs=rngs, **common)
        if config.is_multimodal else None)
    self.image_newline = nnx.data(
        nnx.Param(logical(nnx.initializers.normal(1.0 / math.sqrt(lm_cfg.hidden_size)), 'embed')(
            rngs.params(), (lm_cfg.hidden_size,), config.storage_dtype))
        if config.is_multimodal else None)
    self.lm = nnx.data(
        LLaDA(lm_cfg, backend(config.runtime.attention, 'lm'),
              remat_policy=config.runtime.remat_policy, rngs=rngs, **common)
        if lm_cfg else None)

  # --- Public API (jitted; usable inside an outer jit too) -------------------------------------

  def lm_logits(self, input_ids: jax.Array) -> jax.Array:
    """The bare language model on token ids: int32 [B, L] -> float32 logits [B, L, vocab]."""
    self._require('lm_logits', lm=True)
    return _lm_logits(self, jnp.asarray(input_ids, jnp.int32))

  def encode_video(self, pixel_values: jax.Array) -> jax.Array:
    """Frames [F, H, W, 3] in [-1, 1] -> visual tokens [F * tokens_per_frame, hidden]."""
    self._require('encode_video', lm=True, vision=True)
    return _encode_video(self, jnp.asarray(pixel_values))

  def __call__(self, input_ids: jax.Array, pixel_values: jax.Array) -> jax.Array:
    """ids [B, L] holding one -200 each, frames [B, F, H, W, 3] ->
    logits [B, L - 1 + F * tokens_per_frame, vocab] (float32)."""
    self._require('__call__', lm=True, vision=True)
    check_image_placeholders(input_ids, self.config.tokens.image)
    return _multimodal_logits(self, jnp.asarray(input_ids, jnp.int32), jnp.asarray(pixel_values))

  # --- Pieces, for the sampler, the loss and policy_comparison (trace-friendly, not jitted) ----

  def pooled_grid(self, images: jax.Array) -> jax.Array:
    """Images [N, H, W, 3] in [-1, 1] -> the projected, resampled grid [N, S, S, hidden]
    (S = pooled_side): the visual tokens of each image before the row newlines."""
    features = self.vision_tower(images.astype(self.config.compute_dtype))  # [N, 729, C]
    projected = self.mm_projector(features)  # [N, 729, hidden]
    side = self.config.vision.patches_per_side
    grid = projected.reshape(projected.shape[0], side, side, -1)
    return resize_bilinear(grid, self.config.pooled_side, self.config.pooled_side)

  def visual_tokens(self, pixel_values: jax.Array) -> jax.Array:
    """[..., F, H, W, 3] -> [..., F * tokens_per_frame, hidden] in the LM's compute dtype."""
    lead = pixel_values.shape[:-4]
    frames = pixel_values.reshape((-1,) + pixel_values.shape[-3:])
    tokens = append_row_newlines(self.pooled_grid(frames), self.image_newline[...])
    per_frame = tokens.shape[1]
    frames_per_item = pixel_values.shape[-4]
    return tokens.reshape(lead + (frames_per_item * per_frame, tokens.shape[-1]))

  def embed_multimodal(
      self, input_ids: jax.Array, pixel_values: jax.Array
  ) -> tuple[jax.Array, SpliceLayout]:
    """Input embeddings of the spliced sequence and its layout (ids [B, L], frames [B, F, ...])."""
    visual = self.visual_tokens(pixel_values)  # [B, V, hidden]
    layout = splice_layout(
        input_ids, visual.shape[1], self.config.tokens_per_frame, self.config.tokens.image)
    text = self.lm.embed(jnp.where(input_ids == self.config.tokens.image, 0, input_ids))
    return splice(text, visual, layout), layout

  def _require(self, method: str, *, lm: bool = False, vision: bool = False) -> None:
    missing = []
    if lm and self.lm is None:
      missing.append('a language model')
    if vision and self.vision_tower is None:
      missing.append('a vision tower')
    if missing:
      raise ValueError(
          f'VidLaDA.{method} needs {" and ".join(missing)}, but this model was built from a '
          f'checkpoint without one (lm={self.lm is not None}, '
          f'vision={self.vision_tower is not None}); load a combined LLaDA-V/VidLaDA checkpoint')


@nnx.jit
def _lm_logits(model: VidLaDA, input_ids):
  return model.lm.logits(model.lm(model.lm.embed(input_ids)))


@nnx.jit
def _encode_video(model: VidLaDA, pixel_values):
  return model.visual_tokens(pixel_values)


@nnx.jit
def _multimodal_logits(model: VidLaDA, input_ids, pixel_values):
  embeds, layout = model.embed_multimodal(input_ids, pixel_values)
  return model.lm.logits(model.lm(embeds, layout.positions))
