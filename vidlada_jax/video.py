"""Reading videos (PyAV) and picking their frames as the reference does (SPEC 6)."""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidlada_jax.preprocess import evaluation_frame_indices, training_frame_indices


class VideoError(ValueError):
  """A video that cannot be read: corrupt, empty, or not a video."""


@dataclasses.dataclass
class Clip:
  frames: np.ndarray  # uint8 [F, H, W, 3] RGB
  indices: np.ndarray  # which frames of the video these are
  fps: float
  total_frames: int

  @property
  def duration_s(self) -> float:
    return self.total_frames / self.fps

  @property
  def times_s(self) -> list[float]:
    return [float(i) / self.fps for i in self.indices]


def _open(path: Path):
  if not path.exists():
    raise FileNotFoundError(f'video {path} does not exist')
  try:
    container = av.open(str(path))
  except (av.FFmpegError, OSError) as e:
    raise VideoError(f'cannot read video {path}: {e}') from e
  if not container.streams.video:
    container.close()
    raise VideoError(f'{path} holds no video stream')
  return container


def _count_frames(path: Path) -> tuple[int, float]:
  with _open(path) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or Fraction(1)
    total = stream.frames
    if not total:  # containers without a frame count: count by decoding
      total = sum(1 for _ in container.decode(stream))
  return int(total), float(rate)


def read_video(path: str | os.PathLike, max_frames: int = 64, *, training: bool = False) -> Clip:
  """Decodes the frames VidLaDA looks at.

  Evaluation (default): one frame per second, or `max_frames` at linspace(0, total - 1) when
  that would be more. Training: exactly `max_frames` at linspace (short clips repeat frames).
  """
  path = Path(path)
  if max_frames < 1:
    raise ValueError(f'max_frames must be positive, got {max_frames}')
  try:
    total, fps = _count_frames(path)
    if total == 0:
      raise VideoError(f'{path} holds no decodable frames')
    indices = (training_frame_indices(total, max_frames) if training
               else evaluation_frame_indices(total, fps, max_frames))
    wanted = {int(i) for i in indices}
    decoded: dict[int, np.ndarray] = {}
    with _open(path) as container:
      for i, frame in enumerate(container.decode(container.streams.video[0])):
        if i in wanted:
          decoded[i] = frame.to_ndarray(format='rgb24')
        if i >= max(wanted):
          break
  except av.FFmpegError as e:
    raise VideoError(f'cannot decode video {path}: {e}') from e
  missing = sorted(wanted - set(decoded))
  if missing:
    raise VideoError(f'{path} ended before frame {missing[0]} (it claims {total} frames); '
                     'the file is truncated or corrupt')
  frames = np.stack([decoded[int(i)] for i in indices])
  return Clip(frames=frames, indices=np.asarray(indices), fps=fps, total_frames=total)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 4) -> Path:
  """Encodes uint8 RGB frames [F, H, W, 3] (even H and W) as an H.264 (or MPEG-4) file."""
  path = Path(path)
  codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
  with av.open(str(path), mode='w') as container:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = 'yuv420p'
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path
