"""The main job: answer a question about a short generated video with the tiny model.

    python -m launch.demo [--outputs outputs] [--question "..."]

Writes a tiny VidLaDA checkpoint (random weights, the real token ids and frame geometry, a small
tokenizer with the LLaDA special tokens) and a 6-second clip of a red square crossing the frame,
then runs `launch.sample` on them, printing the spliced sequence layout, the decoded tokens and
the answer. The weights are random, so the answer is not meaningful yet: the demo shows the
pipeline (video decoding, SigLIP tower, projector, resampling, splicing, block diffusion)
end to end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import vidlada_jax as vj
from launch import sample
from vidlada_jax.fixtures import tiny_tokenizer
from vidlada_jax.video import write_video


def moving_square_clip(num_frames: int = 24, height: int = 120, width: int = 160) -> np.ndarray:
  """uint8 [F, H, W, 3]: a red square crossing a blue background from left to right."""
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  frames[..., 2] = 160
  side = height // 4
  for f in range(num_frames):
    x = int((width - side) * f / max(num_frames - 1, 1))
    y = (height - side) // 2
    frames[f, y:y + side, x:x + side] = (220, 30, 30)
  return frames


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m launch.demo', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--outputs', default='outputs', help='where to write the model and clip')
  parser.add_argument('--question', default='Which way does the red square move?')
  parser.add_argument('--gen-length', type=int, default=16)
  args = parser.parse_args(argv)

  outputs = Path(args.outputs)
  outputs.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  config = vj.model_config('tiny')
  checkpoint = vj.save_checkpoint(vj.init_model(config, seed=0), outputs / 'tiny-vidlada',
                                  overwrite=True, tokenizer=tiny_tokenizer())
  clip = write_video(outputs / 'moving_square.mp4', moving_square_clip(), fps=4)
  print(f'tiny VidLaDA ({vj.count_params(config):,} parameters, random weights) -> {checkpoint}')
  print(f'generated clip (24 frames at 4 fps) -> {clip}  [{time.perf_counter() - start:.1f}s]')
  print(f'question: {args.question}')
  return sample.main([
      '--checkpoint', str(checkpoint), '--video', str(clip), '--question', args.question,
      '--gen-length', str(args.gen_length), '--steps', str(args.gen_length),
      '--block-length', str(args.gen_length), '--show-layout'])


if __name__ == '__main__':
  sys.exit(main())
