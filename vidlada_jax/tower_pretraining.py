"""Pretraining a vision tower from scratch on a synthetic world: per-cell colour presence.

VidLaDA's tower is SigLIP2, pretrained on image-text pairs long before stage 1. A tower trained
from random weights inside the video-QA model does not get there: its visual tokens barely vary
with what a frame shows (docs/demo-model.md). The demo recipe therefore has a stage 0 that
trains the tower and projector alone, with a stand-in for SigLIP's image-text loss that needs no
text tower: every pooled visual token predicts, for each colour of the world's palette, whether
that colour is present in its region and in each of the patches it pools.

The labels come from the frames themselves, after decoding: a pixel takes the nearest colour of
the palette (or the background) within `tolerance`, and a colour is present in a patch where it
covers at least `min_pixels` pixels. Video compression then changes a label only where an object
barely touches a patch. The readout is fixed, not learned: a random orthonormal projection of
each pooled token times `readout_gain` (a fixed classifier works as well as a learned one here,
and better in 1,000 steps), so the objective adds no parameters and the stage's checkpoint is an
ordinary VidLaDA checkpoint that the next stage loads.

    objective = CellColours(palette=..., background=(20, 20, 20))
    loss, label_errors = objective.loss(model, frames_uint8)   # frames [N, H, W, 3]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vidlada_jax.preprocess import normalize_frames
from vidlada_jax.vidlada import VidLaDA

RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class CellColours:
  """The objective's settings: the world's object colours and how labels are read off pixels."""

  palette: tuple[RGB, ...]  # the colours to detect (objects), not the background
  background: RGB
  tolerance: float = 60.0  # the largest RGB distance at which a pixel still takes a colour
  min_pixels: int = 4  # pixels of a colour that make it present in a patch
  readout_gain: float = 4.0  # scale of the fixed readout: logits of +-5 from token values ~1
  seed: int = 0  # of the readout

  def __post_init__(self):
    object.__setattr__(self, 'palette', tuple(tuple(int(v) for v in c) for c in self.palette))
    object.__setattr__(self, 'background', tuple(int(v) for v in self.background))
    if not self.palette:
      raise ValueError('the cell-colour objective needs a palette of at least one colour')
    for colour in (*self.palette, self.background):
      if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
        raise ValueError(f'colours are RGB triples in [0, 255], got {colour}')
    if self.tolerance <= 0 or self.min_pixels < 1:
      raise ValueError(f'tolerance must be positive and min_pixels at least 1, got '
                       f'{self.tolerance} and {self.min_pixels}')

  def num_outputs(self, pool_stride: int) -> int:
    """Labels per pooled token: region presence, then presence in each pooled patch."""
    return len(self.palette) * (1 + pool_stride ** 2)

  def readout(self, width: int, pool_stride: int) -> np.ndarray:
    """The fixed readout [width, num_outputs]: orthonormal columns times the gain."""
    outputs = self.num_outputs(pool_stride)
    if width < outputs:
      raise ValueError(f'pooled tokens of width {width} cannot hold {outputs} independent '
                       'labels; use a smaller palette')
    normal = np.random.default_rng(self.seed).normal(size=(width, outputs))
    columns, _ = np.linalg.qr(normal)
    return (columns * self.readout_gain).astype(np.float32)

  def patch_labels(self, frames: jax.Array, patch_size: int) -> jax.Array:
    """uint8 frames [N, H, W, 3] -> bool [N, P, P, K]: colour k covers >= min_pixels of a patch.

    Only the pixels the tower's patches cover count (a VALID convolution drops the rest).
    """
    side = frames.shape[1] // patch_size
    pixels = frames[:, :side * patch_size, :side * patch_size].astype(jnp.float32)
    colours = jnp.asarray((self.background, *self.palette), jnp.float32)  # [K + 1, 3]
    distance = jnp.sum(jnp.square(pixels[..., None, :] - colours), axis=-1)  # [N, H, W, K + 1]
    nearest = jnp.argmin(distance, axis=-1)
    close = jnp.min(distance, axis=-1) <= self.tolerance ** 2
    kinds = jnp.arange(1, len(self.palette) + 1)
    hits = (nearest[..., None] == kinds) & close[..., None]  # [N, H, W, K]
    counts = hits.reshape(frames.shape[0], side, patch_size, side, patch_size, -1).sum((2, 4))
    return counts >= self.min_pixels

  def token_labels(self, patch_labels: jax.Array, pool_stride: int) -> jax.Array:
    """[N, P, P, K] -> float32 [N, S, S, K * (1 + stride^2)], S = P / stride: each pooled
    token's region presence, then its patches' (row-major within the region)."""
    n, side, _, kinds = patch_labels.shape
    pooled = side // pool_stride
    cells = patch_labels.reshape(n, pooled, pool_stride, pooled, pool_stride, kinds)
    cells = cells.transpose(0, 1, 3, 2, 4, 5)  # [N, S, S, stride, stride, K]
    region = cells.any(axis=(3, 4))
    per_patch = cells.reshape(n, pooled, pooled, pool_stride * pool_stride * kinds)
    return jnp.concatenate([region, per_patch], axis=-1).astype(jnp.float32)

  def loss(self, model: VidLaDA, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean sigmoid cross-entropy, number of wrong labels) of uint8 frames [..., H, W, 3]."""
    config = model.config
    if config.vision is None or model.mm_projector is None:
      raise ValueError('the cell-colour objective trains a vision tower and projector; this '
                       'model has none')
    patches, stride = config.vision.patches_per_side, config.pool_stride
    if patches % stride:
      raise ValueError(f'the cell-colour objective needs the pooled grid to be whole blocks of '
                       f'patches: {patches} patches a side do not divide by pool_stride {stride}')
    frames = frames.reshape((-1,) + frames.shape[-3:])
    labels = self.token_labels(self.patch_labels(frames, config.vision.patch_size), stride)
    grid = model.pooled_grid(normalize_frames(frames)).astype(jnp.float32)  # [N, S, S, hidden]
    readout = jnp.asarray(self.readout(grid.shape[-1], stride))
    logits = grid @ readout
    loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    errors = jnp.sum((logits > 0) != (labels > 0.5))
    return loss, errors
