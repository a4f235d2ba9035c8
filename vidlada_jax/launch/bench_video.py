"""Video reading benchmark: read_video's seeking against decoding every frame from the start.

    python -m vidlada_jax.launch.bench_video                  a 10-minute 720p clip, 64 frames
    python -m vidlada_jax.launch.bench_video --minutes 2 --json

Writes (once; later runs reuse it) a synthetic clip to the temp directory, keyed by its
parameters: a moving gradient, 1280x720, 30 fps, libx264 `ultrafast` (MPEG-4 where libx264 is
missing) with a keyframe every `--keyint` frames (250: libx264's default, so what most files
made with ffmpeg have). Then it times `read_video(path, frames)` (evaluation picking: one frame
per second, or `frames` at linspace when that would be more) against a decode of every frame
in order that keeps the same frames, and checks the two give the same RGB bytes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from vidlada_jax import video


def moving_gradient(width: int, height: int):
  """Frame i: a diagonal colour gradient shifted by 4 pixels per frame (cheap to make)."""
  period = 512
  x = np.arange(width + period)[None, :]
  y = np.arange(height)[:, None]
  x, y = np.broadcast_arrays(x, y)
  tile = np.stack([(x + y) % 256, (2 * x) % 256, (x - y) % 256], axis=-1).astype(np.uint8)
  return lambda i: tile[:, (4 * i) % period:(4 * i) % period + width]


def write_clip(path: Path, num_frames: int, width: int, height: int, fps: int, keyint: int):
  frame_at = moving_gradient(width, height)
  options = ({'preset': 'ultrafast', 'g': str(keyint), 'keyint_min': str(keyint)}
             if 'libx264' in av.codecs_available else {'g': str(keyint)})
  video.write_video(path, (frame_at(i) for i in range(num_frames)), fps, options=options)


def decode_every_frame(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
  """What reading cost before seeking: every frame decoded, the wanted ones converted to RGB."""
  kept = {}
  with av.open(str(path)) as container:
    for i, frame in enumerate(container.decode(video=0)):
      if i in wanted:
        kept[i] = frame.to_ndarray(format='rgb24')
  return kept


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--minutes', type=float, default=10.0, help='length of the clip')
  parser.add_argument('--frames', type=int, default=64, help="read_video's max_frames")
  parser.add_argument('--width', type=int, default=1280)
  parser.add_argument('--height', type=int, default=720)
  parser.add_argument('--fps', type=int, default=30)
  parser.add_argument('--keyint', type=int, default=250, help='frames between keyframes')
  parser.add_argument('--cache-dir', type=Path,
                      default=Path(tempfile.gettempdir()) / 'vidlada_bench_video')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args(argv)

  num_frames = int(round(args.minutes * 60 * args.fps))
  args.cache_dir.mkdir(parents=True, exist_ok=True)
  path = args.cache_dir / (f'gradient_{num_frames}f_{args.width}x{args.height}_{args.fps}fps_'
                           f'key{args.keyint}.mp4')
  write_seconds = None  # None: the clip was already there
  if not path.exists():
    start = time.perf_counter()
    write_clip(path, num_frames, args.width, args.height, args.fps, args.keyint)
    write_seconds = time.perf_counter() - start

  start = time.perf_counter()
  clip = video.read_video(path, args.frames)
  seek_seconds = time.perf_counter() - start
  wanted = sorted({int(i) for i in clip.indices})

  start = time.perf_counter()
  everything = decode_every_frame(path, set(wanted))
  full_decode_seconds = time.perf_counter() - start

  identical = (sorted(everything) == wanted and
               all(np.array_equal(f, everything[int(i)])
                   for f, i in zip(clip.frames, clip.indices)))
  _, stats = video._read_frames(path, wanted)  # untimed: how the seeking read got there
  result = dict(
      seek_seconds=round(seek_seconds, 3), full_decode_seconds=round(full_decode_seconds, 3),
      speedup=round(full_decode_seconds / seek_seconds, 2), frames_identical=bool(identical),
      video_seconds=round(clip.duration_s, 2), video_frames=clip.total_frames,
      frames=len(clip.indices), distinct_frames=len(wanted),
      resolution=f'{args.width}x{args.height}', fps=args.fps, keyint=args.keyint,
      frames_decoded_seeking=stats.frames_decoded, seeks=stats.seeks,
      fell_back_to_sequential=stats.sequential,
      write_seconds=None if write_seconds is None else round(write_seconds, 1), clip=str(path))
  if args.json:
    print(json.dumps(result))
    return result
  written = ('reused' if write_seconds is None else f'written in {write_seconds:.1f} s')
  print(f'clip: {path} ({written})')
  print(f'{clip.duration_s:.0f} s, {clip.total_frames} frames, {args.width}x{args.height} '
        f'@ {args.fps} fps, keyframe every {args.keyint}; {len(clip.indices)} frames wanted')
  print(f'{"":24}{"seconds":>9}{"decoded":>9}')
  print(f'{"read_video (seeking)":24}{seek_seconds:9.2f}{stats.frames_decoded:9d}'
        f'   {stats.seeks} seeks')
  print(f'{"every frame in order":24}{full_decode_seconds:9.2f}{clip.total_frames:9d}')
  print(f'speedup {result["speedup"]}x, frames identical: {identical}')
  return result


if __name__ == '__main__':
  main()
