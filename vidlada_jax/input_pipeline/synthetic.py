"""Synthetic training clips: a coloured square moving left or right, with questions about it.

For the tiny training config and the tests: small deterministic mp4 files, an annotation file in
the LLaVA-Video-178K format whose answers depend on the video ("What colour is the square?" ->
"red", "Which way does it move?" -> "left"), and a mixture YAML over it. A model that learns
them has to look at the frames: the colour at any frame, the direction across frames.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import yaml

from vidlada_jax.video import write_video

COLOURS = {'red': (220, 40, 40), 'green': (40, 200, 60), 'blue': (40, 80, 230),
           'yellow': (230, 220, 40)}
DIRECTIONS = ('left', 'right')
BACKGROUND = (30, 30, 30)
COLOUR_QUESTION = 'What colour is the square?'
DIRECTION_QUESTION = 'Which way does it move?'


def square_position(frame: int, num_frames: int, size: int, direction: str) -> int:
  """The square's left edge in `frame`: it crosses the whole width at a constant speed."""
  travel = size - size // 4
  x = round(frame * travel / max(num_frames - 1, 1))
  return x if direction == 'right' else travel - x


def synthetic_clip(colour: str, direction: str, num_frames: int, size: int = 64) -> np.ndarray:
  """uint8 [num_frames, size, size, 3]: a size/4 square of `colour` crossing the frame."""
  if colour not in COLOURS or direction not in DIRECTIONS:
    raise ValueError(f'colour must be one of {sorted(COLOURS)} and direction one of {DIRECTIONS}')
  side = size // 4
  top = (size - side) // 2
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  frames[:] = BACKGROUND
  for t in range(num_frames):
    x = square_position(t, num_frames, size, direction)
    frames[t, top:top + side, x:x + side] = COLOURS[colour]
  return frames


def write_synthetic_dataset(root: str | os.PathLike, num_clips: int, *, num_frames_in_video: int,
                            size: int = 64, seed: int = 0, fps: int = 4) -> Path:
  """Writes `num_clips` clips, their annotations and a mixture YAML under `root`.

  Layout: `root/videos/clip_NNNN.mp4`, `root/annotations.json` (records `clip_NNNN`, each asking
  about the colour and the direction, in a random order), `root/mixture.yaml`.

  Returns:
    The mixture YAML's path (for `load_mixture`).
  """
  if size % 2 or size < 8:
    raise ValueError(f'size must be even (yuv420p) and at least 8, got {size}')
  root = Path(root)
  (root / 'videos').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  records = []
  for index in range(num_clips):
    colour = str(rng.choice(sorted(COLOURS)))
    direction = str(rng.choice(DIRECTIONS))
    video = f'videos/clip_{index:04d}.mp4'
    write_video(root / video, synthetic_clip(colour, direction, num_frames_in_video, size), fps)
    pairs = [(COLOUR_QUESTION, colour), (DIRECTION_QUESTION, direction)]
    if rng.random() < 0.5:
      pairs.reverse()
    conversations = []
    for turn, (question, answer) in enumerate(pairs):
      conversations.append({'from': 'human',
                            'value': ('<image>\n' if turn == 0 else '') + question})
      conversations.append({'from': 'gpt', 'value': answer})
    records.append({'id': f'clip_{index:04d}', 'video': video, 'conversations': conversations})
  (root / 'annotations.json').write_text(json.dumps(records, indent=1))
  mixture = root / 'mixture.yaml'
  mixture.write_text(yaml.safe_dump(
      {'datasets': [{'json_path': 'annotations.json', 'sampling_strategy': 'all'}]}))
  return mixture
