"""Frames: from decoded RGB video to the tower's input (SPEC 1 step 2, SPEC 6)."""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_SIZE = 384


def preprocess_frames(frames: np.ndarray, image_size: int = IMAGE_SIZE) -> np.ndarray:
  """uint8 RGB frames [F, h, w, 3] -> float32 [F, image_size, image_size, 3] in [-1, 1].

  As the reference's SigLIP image processor: PIL bicubic resize to a square (no crop, aspect
  ratio not kept), scale by 1/255, normalise with mean = std = 0.5. The same as
  `normalize_frames(resize_frames(frames, image_size))`, which the training pipeline splits
  between host (resize, uint8) and device (normalise).
  """
  return normalize_frames(resize_frames(frames, image_size))


def resize_frames(frames: np.ndarray, image_size: int = IMAGE_SIZE) -> np.ndarray:
  """uint8 RGB frames [F, h, w, 3] -> uint8 [F, image_size, image_size, 3], PIL bicubic.

  Kept in uint8 so a training batch moves a quarter of the bytes of float32 frames to the
  device; `normalize_frames` finishes the preprocessing there.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be [F, height, width, 3] RGB, got shape {frames.shape}')
  if frames.dtype != np.uint8:
    raise ValueError(f'frames must be uint8 (decoded video), got {frames.dtype}')
  if frames.shape[0] == 0:
    raise ValueError('no frames to preprocess')
  out = np.empty((frames.shape[0], image_size, image_size, 3), np.uint8)
  for i, frame in enumerate(frames):
    out[i] = Image.fromarray(frame).resize((image_size, image_size), Image.Resampling.BICUBIC)
  return out


def normalize_frames(frames):
  """uint8 frames (numpy or jax array, any leading shape) -> float32 in [-1, 1].

  Scale by 1/255, then mean = std = 0.5. Only array methods and operators that numpy and
  jax.numpy share, so the trainer can call it on device on a uint8 batch.
  """
  scaled = frames.astype(np.float32) * np.float32(1 / 255)
  return (scaled - 0.5) / 0.5


def training_frame_indices(total: int, num_frames: int) -> np.ndarray:
  """Exactly `num_frames` indices at linspace(0, total - 1) (short clips repeat frames)."""
  if total <= 0:
    raise ValueError('the video has no frames')
  return np.linspace(0, total - 1, num_frames).astype(np.int64)


def evaluation_frame_indices(total: int, fps: float, max_frames: int) -> np.ndarray:
  """One frame per second (step = round(fps)); more than `max_frames` falls back to linspace."""
  if total <= 0:
    raise ValueError('the video has no frames')
  step = max(int(round(fps)), 1)
  indices = np.arange(0, total, step, dtype=np.int64)
  if len(indices) > max_frames:
    return training_frame_indices(total, max_frames)
  return indices
