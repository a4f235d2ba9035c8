"""The main job: answer a question about a short generated video with the tiny model.

    python -m launch.demo [--frames 4] [--question "..."] [--gen-length 16]

Builds the tiny VidLaDA (random weights: answers are not meaningful yet), renders a clip of a red
square moving left to right, and prints the spliced sequence layout and the decoded answer tokens.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import vidlada_jax as vj
from vidlada_jax import prompting


def moving_square_clip(num_frames: int = 4, height: int = 120, width: int = 160) -> np.ndarray:
  """uint8 [F, H, W, 3]: a red square crossing a blue background from left to right."""
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  frames[..., 2] = 160
  side = height // 4
  for f in range(num_frames):
    x = int((width - side) * f / max(num_frames - 1, 1))
    y = (height - side) // 2
    frames[f, y:y + side, x:x + side] = (220, 30, 30)
  return frames


def describe_layout(prompt: np.ndarray, num_frames: int, tokens_per_frame: int,
                    gen_length: int) -> str:
  """Segments of the spliced sequence: text, visual tokens per frame, the response canvas."""
  at = int(np.flatnonzero(prompt == -200)[0])
  visual = num_frames * tokens_per_frame
  prompt_end = len(prompt) - 1 + visual
  rows = [
      ('text', 0, at, f'{at} prompt tokens before <image>'),
      ('visual', at, at + visual, f'{num_frames} frames x {tokens_per_frame} tokens '
                                  '(14 rows of 14 + newline)'),
      ('text', at + visual, prompt_end, f'{len(prompt) - at - 1} prompt tokens after <image>'),
      ('canvas', prompt_end, prompt_end + gen_length, f'{gen_length} x <|mdm_mask|> to decode'),
  ]
  lines = [f'  {kind:<7} positions [{start:>5}, {end:>5})  {what}' for kind, start, end, what in rows]
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument('--frames', type=int, default=4)
  parser.add_argument('--question', default='Which way does the red square move?')
  parser.add_argument('--gen-length', type=int, default=16)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  config = vj.model_config('tiny')
  tokenizer = prompting.tiny_tokenizer()
  clip = moving_square_clip(args.frames)
  pixels = vj.preprocess_frames(clip)
  prompt = prompting.tokenize(tokenizer, prompting.video_question(args.question))
  mask = config.tokens.mask
  ids = np.concatenate([prompt, np.full(args.gen_length, mask, np.int32)])[None]

  print(f'backend: {jax.default_backend()} ({jax.device_count()} device(s))')
  print(f'model: tiny VidLaDA, {vj.count_params(config):,} parameters (random weights)')
  print(f'video: {args.frames} generated frames {clip.shape[1]}x{clip.shape[2]} '
        f'-> {pixels.shape[1]}x{pixels.shape[2]}')
  print(f'question: {args.question}')
  print('spliced sequence:')
  print(describe_layout(prompt, args.frames, config.tokens_per_frame, args.gen_length))

  start = time.perf_counter()
  model = vj.init_model(config, seed=args.seed)
  logits = model(ids, pixels[None])
  canvas = logits[0, -args.gen_length:]
  tokens = np.asarray(jnp.argmax(canvas, axis=-1))
  elapsed = time.perf_counter() - start
  print(f'decoded tokens (one denoising step): {tokens.tolist()}')
  print(f'answer: {prompting.decode_answer(tokenizer, tokens)!r}')
  print(f'time: {elapsed:.1f}s (including compilation)')


if __name__ == '__main__':
  main()
