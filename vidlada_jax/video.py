"""Reading videos (PyAV) and picking their frames as the reference does (SPEC 6)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Mapping

import av
import numpy as np

from vidlada_jax.preprocess import evaluation_frame_indices, training_frame_indices

log = logging.getLogger(__name__)


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


def _read_sequential(container, wanted: list[int]) -> tuple[dict[int, np.ndarray], int]:
  """Decodes from the first frame up to the last wanted one; frame i is the i-th decoded.

  Returns the wanted frames by index and how many frames were decoded.
  """
  decoded: dict[int, np.ndarray] = {}
  last, wanted = max(wanted), set(wanted)
  count = 0
  for i, frame in enumerate(container.decode(container.streams.video[0])):
    count += 1
    if i in wanted:
      decoded[i] = frame.to_ndarray(format='rgb24')
    if i >= last:
      break
  return decoded, count


class _SeekUnreliable(Exception):
  """Seeking did not lead where a sequential decode would: decode this file sequentially."""


def _read_by_seeking(container, wanted: list[int],
                     rate: Fraction) -> tuple[dict[int, np.ndarray], int, int]:
  """Decodes the `wanted` frames (sorted, distinct), seeking to a keyframe before far ones.

  A frame's index is read from its pts: round((pts - start_pts) * time_base * rate). Any sign
  that this does not number frames as a sequential decode would (no pts, indices that do not
  step by one, a wanted frame skipped or never reached) raises _SeekUnreliable, so that the
  caller decodes sequentially instead: seeking may make reading faster, never different.

  When to seek: only when the next wanted frame is more than max(2 s, the longest keyframe
  interval seen so far) ahead. Nearer than a keyframe interval, seeking would most likely land
  on a keyframe at or before where decoding already stands, so decoding forward is no slower;
  the 2 s floor keeps clips whose keyframe interval is not yet known (or is short) from seeking
  for every one-per-second evaluation frame, where a seek's flush costs more than it saves.

  Returns the frames by index, how many frames were decoded and how many seeks were made.
  """
  stream = container.streams.video[0]
  time_base = stream.time_base
  if not time_base or not rate:
    raise _SeekUnreliable
  start_pts = stream.start_time or 0
  pts_per_frame = 1 / (rate * time_base)

  def index_of(pts: int) -> int:
    return round((pts - start_pts) * time_base * rate)

  def latest_pts_of(index: int) -> int:
    # The largest pts that still rounds to `index`: a backward seek to it lands on a keyframe
    # at or before the frame, even when the file's pts are rounded off the exact frame grid.
    return start_pts + math.ceil((index + Fraction(1, 2)) * pts_per_frame) - 1

  decoded: dict[int, np.ndarray] = {}
  frames = container.decode(stream)  # the first run starts at frame 0 without seeking
  position = -1  # index of the last decoded frame; None right after a seek
  last_keyframe = None
  longest_keyframe_interval = 0
  frames_decoded = seeks = 0
  for target in wanted:
    if position is not None and target - position > max(2 * rate, longest_keyframe_interval):
      container.seek(latest_pts_of(target), stream=stream, backward=True, any_frame=False)
      frames = container.decode(stream)
      position = last_keyframe = None
      seeks += 1
    for frame in frames:
      frames_decoded += 1
      if frame.pts is None:
        raise _SeekUnreliable
      index = index_of(frame.pts)
      if (position is not None and index != position + 1) or index > target:
        raise _SeekUnreliable
      position = index
      if frame.key_frame:
        if last_keyframe is not None:
          longest_keyframe_interval = max(longest_keyframe_interval, index - last_keyframe)
        last_keyframe = index
      if index == target:
        decoded[target] = frame.to_ndarray(format='rgb24')
        break
    else:  # the stream ended before the target: truncated, or not numbered as assumed
      raise _SeekUnreliable
  return decoded, frames_decoded, seeks


@dataclasses.dataclass
class DecodeStats:
  frames_decoded: int  # by the path whose frames were returned
  seeks: int
  sequential: bool  # whether the file was decoded from its start (seeking failed or was refused)


def _read_frames(path: Path, wanted: list[int]) -> tuple[dict[int, np.ndarray], DecodeStats]:
  """The `wanted` frames (sorted, distinct) by index, seeking where the file allows."""
  with _open(path) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    try:
      decoded, frames_decoded, seeks = _read_by_seeking(container, wanted, rate)
      return decoded, DecodeStats(frames_decoded=frames_decoded, seeks=seeks, sequential=False)
    except (_SeekUnreliable, av.FFmpegError) as e:
      # Decoded again from the start below, which also names a truncated file as such; slower
      # on long files, so say so.
      log.info('%s: seeking failed (%s); decoding it from the start', path, e)
  with _open(path) as container:
    decoded, count = _read_sequential(container, wanted)
  return decoded, DecodeStats(frames_decoded=count, seeks=0, sequential=True)


def read_video(path: str | os.PathLike, max_frames: int = 64, *, training: bool = False) -> Clip:
  """Decodes the frames VidLaDA looks at.

  Evaluation (default): one frame per second, or `max_frames` at linspace(0, total - 1) when
  that would be more. Training: exactly `max_frames` at linspace (short clips repeat frames).
  Far-apart frames are reached by seeking to the keyframe before them; the frames are the
  same as a decode from the start would give (files that cannot seek are decoded that way).
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
    wanted = sorted({int(i) for i in indices})
    decoded, _ = _read_frames(path, wanted)
  except av.FFmpegError as e:
    raise VideoError(f'cannot decode video {path}: {e}') from e
  missing = sorted(set(wanted) - set(decoded))
  if missing:
    raise VideoError(f'{path} ended before frame {missing[0]} (it claims {total} frames); '
                     'the file is truncated or corrupt')
  frames = np.stack([decoded[int(i)] for i in indices])
  return Clip(frames=frames, indices=np.asarray(indices), fps=fps, total_frames=total)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int = 4, *,
                codec: str | None = None, options: Mapping[str, str] | None = None) -> Path:
  """Encodes uint8 RGB frames ([F, H, W, 3], or any iterable of [H, W, 3]; even H and W).

  The codec is H.264 where PyAV has it, else MPEG-4, unless `codec` names one; `options` go to
  the encoder (e.g. {'g': '250'} for the keyframe interval). The file is written under a
  temporary name beside `path` and renamed into place once complete, so `path` never holds a
  partial video.
  """
  path = Path(path)
  codec = codec or ('libx264' if 'libx264' in av.codecs_available else 'mpeg4')
  partial = path.with_name(f'.{path.stem}.partial{path.suffix}')  # the suffix names the format
  try:
    with av.open(str(partial), mode='w') as container:
      stream = None
      for frame in frames:
        if stream is None:
          stream = container.add_stream(codec, rate=fps)
          stream.height, stream.width = frame.shape[:2]
          stream.pix_fmt = 'yuv420p'
          stream.options = dict(options or {})
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')
        for packet in stream.encode(video_frame):
          container.mux(packet)
      if stream is None:
        raise ValueError(f'{path}: no frames to write')
      for packet in stream.encode():
        container.mux(packet)
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)
  return path
