"""Answer questions about videos with a VidLaDA checkpoint.

    python -m vidlada_jax.launch.sample --checkpoint DIR --video FILE --question TEXT [--frames 64]
        [--gen-length 128 --steps 128 --block-length 128] [--temperature 0]
        [--remasking low_confidence|random] [--cfg-scale 0] [--threshold T]
        [--cache none|mars|mars-exact|mars-refresh|mars-chunk|mars-anchors|dual]
        [--batch-file JSONL [--batch-size 8]] [--pad-to-multiple-of 64] [--json]

DIR is a PyTorch (LLaDA-V/VidLaDA) or vidlada-jax checkpoint directory holding tokenizer.json.
Frames are sampled as the reference evaluates: one per second, or --frames evenly spread when
that would be more. The question gets "/no_think" appended as in the reference evaluation
(--think leaves it off); --time-instruction adds the video's duration and frame times.
--batch-file answers many questions: one JSON object per line with "video" and "question" (and
optionally "id"); items with the same frame count are decoded together, --batch-size at a time.
An item whose video cannot be read (missing, corrupt) or whose prompt does not fit is reported
with an "error" field naming the problem and the others are answered; the exit status is then 1.
Frames are resized to the checkpoint's tower resolution.
--cache picks the cache policy: none (plain decoding, the reference), mars (MARS-Cache with its
measured defaults), mars-exact (MARS-Cache with every mechanism off), one mechanism alone
(mars-refresh: asynchronous refresh; mars-chunk: frame-wise chunk attention; mars-anchors: chunk
attention with anchors) or dual (Fast-dLLM).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

import vidlada_jax as vj
from vidlada_jax import prompting, sampling
from vidlada_jax.input_pipeline import chat
from vidlada_jax.sampling import SamplerConfig
from vidlada_jax.video import VideoError, read_video

CONTEXT_LENGTH = 32768  # VidLaDA's training context
# Prompts are left-padded to a multiple of this many text tokens, so questions of nearby lengths
# share one compiled program; padding does not change the answer (see `vj.generate`).
PROMPT_MULTIPLE = 64


@dataclasses.dataclass
class Item:
  id: str
  video: Path
  question: str


@dataclasses.dataclass
class Answer:
  id: str
  video: str
  question: str
  answer: str
  tokens: list[int]
  num_frames: int
  prompt_tokens: int  # after splicing the visual tokens
  error: str | None = None  # why this item has no answer


def read_items(args) -> list[Item]:
  if args.batch_file:
    items = []
    for number, line in enumerate(Path(args.batch_file).read_text().splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        items.append(Item(str(record.get('id', number)), Path(record['video']),
                          str(record['question'])))
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f'{args.batch_file} line {number}: expected a JSON object with "video" '
                         f'and "question" ({e})') from e
    if not items:
      raise ValueError(f'{args.batch_file} holds no questions')
    return items
  if not args.video or not args.question:
    raise ValueError('give --video and --question, or --batch-file')
  return [Item('0', Path(args.video), args.question)]


def describe_layout(prompt: np.ndarray, num_frames: int, tokens_per_frame: int,
                    gen_length: int) -> str:
  """The spliced sequence, segment by segment: text, visual tokens, text, response canvas."""
  at = int(np.flatnonzero(prompt == -200)[0])
  visual = num_frames * tokens_per_frame
  end = len(prompt) - 1 + visual
  rows = [('text', 0, at, f'{at} prompt tokens before <image>'),
          ('visual', at, at + visual, f'{num_frames} frames x {tokens_per_frame} tokens'),
          ('text', at + visual, end, f'{len(prompt) - at - 1} prompt tokens after <image>'),
          ('canvas', end, end + gen_length, f'{gen_length} x <|mdm_mask|> to decode')]
  return '\n'.join(f'  {kind:<7} positions [{start:>6}, {stop:>6})  {what}'
                   for kind, start, stop, what in rows)


_EVERY_STEP = dict(pyramid=(1, 1), visual_ratio=1)
CACHE_POLICIES = {
    'none': vj.FullRecompute(),
    'mars': vj.MarsCacheConfig(),
    'mars-exact': vj.MarsCacheConfig.exact(),
    # Each MARS-Cache mechanism alone, for measuring what each costs and saves:
    'mars-refresh': vj.MarsCacheConfig(chunk_window=None, num_anchors=0),
    'mars-chunk': vj.MarsCacheConfig(**_EVERY_STEP, num_anchors=0),
    'mars-anchors': vj.MarsCacheConfig(**_EVERY_STEP),  # chunk attention + anchors
    'dual': vj.DualCache(),
}


class PromptTooLong(ValueError):
  """A prompt (text and frames) and its canvas do not fit the context: bad input, not a bug."""


class Sampler:
  """A loaded model and tokenizer answering batches of items with fixed sampler settings."""

  def __init__(self, checkpoint, settings: SamplerConfig, *, frames: int, dtype=None,
               time_instruction=False, think=False, max_length=CONTEXT_LENGTH, seed=0,
               cache: str = 'none', pad_to_multiple_of: int = PROMPT_MULTIPLE):
    sampling.padded_length(1, pad_to_multiple_of)  # validates it
    self.settings = settings
    self.pad_to_multiple_of = pad_to_multiple_of
    self.cache = CACHE_POLICIES[cache]
    self.frames = frames
    self.time_instruction = time_instruction
    self.think = think
    self.max_length = max_length
    self.rng = jax.random.key(seed)
    checkpoint = Path(checkpoint)
    self.tokenizer = prompting.load_tokenizer(checkpoint)
    start = time.perf_counter()
    self.model = vj.from_pretrained(checkpoint, dtype=dtype, progress=False)
    self.load_seconds = time.perf_counter() - start
    # The checkpoint's own special ids: the demo model's small vocabulary moves them.
    tokens = self.model.config.tokens
    self.settings = dataclasses.replace(settings, tokens=tokens, stop_ids=(tokens.eot,))
    if self.model.vision_tower is None or self.model.lm is None:
      raise ValueError(f'{checkpoint} is not a combined VidLaDA checkpoint (it lacks '
                       f'{"a vision tower" if self.model.vision_tower is None else "an LM"})')

  def prepare(self, item: Item):
    clip = read_video(item.video, self.frames)
    time_info = (chat.time_instruction(clip.duration_s, clip.times_s)
                 if self.time_instruction else None)
    text = chat.video_question(item.question, time_info=time_info, no_think=not self.think)
    prompt = prompting.tokenize(self.tokenizer, text)
    length = len(prompt) - 1 + len(clip.frames) * self.model.config.tokens_per_frame
    if length + self.settings.gen_length > self.max_length:
      raise PromptTooLong(
          f'{item.video}: the prompt is {length} tokens ({len(prompt) - 1} text + '
          f'{len(clip.frames)} frames x {self.model.config.tokens_per_frame} visual) and with '
          f'--gen-length {self.settings.gen_length} exceeds the {self.max_length}-token context; '
          'use fewer --frames or a shorter --gen-length')
    return clip, prompt

  def answer(self, items: list[Item], batch_size: int, on_layout=None,
             keep_going: bool = False) -> tuple[list[Answer], dict]:
    """Answers `items`; with `keep_going`, an item that cannot be prepared (unreadable video,
    prompt too long) gets an `Answer` with its `error` instead of stopping the others.

    The timings include `programs`: the shape (rows, padded prompt tokens, frames) of every
    batch decoded, which is what each compiled program depends on.
    """
    timings = dict(video_s=0.0, generate_s=0.0, generated_tokens=0, programs=[])
    prepared = []
    answers = {}
    for item in items:
      start = time.perf_counter()
      try:
        clip, prompt = self.prepare(item)
      except (VideoError, FileNotFoundError, PromptTooLong) as e:  # bad input; a bug surfaces
        if not keep_going:
          raise
        answers[item.id] = Answer(id=item.id, video=str(item.video), question=item.question,
                                  answer='', tokens=[], num_frames=0, prompt_tokens=0,
                                  error=str(e))
        continue
      finally:
        timings['video_s'] += time.perf_counter() - start
      prepared.append((item, clip, prompt))
    by_frames: dict[int, list] = {}
    for entry in prepared:
      by_frames.setdefault(len(entry[1].frames), []).append(entry)
    for num_frames, group in by_frames.items():
      for i in range(0, len(group), batch_size):
        batch = group[i:i + batch_size]
        pixels = np.stack([vj.preprocess_frames(clip.frames, self.model.config.vision.image_size)
                           for _, clip, _ in batch])
        prompts = [prompt for _, _, prompt in batch]
        if on_layout:
          on_layout(describe_layout(prompts[0], num_frames, self.model.config.tokens_per_frame,
                                    self.settings.gen_length))
        self.rng, key = jax.random.split(self.rng)
        start = time.perf_counter()
        timings['programs'].append((len(batch), sampling.padded_length(
            max(len(p) for p in prompts), self.pad_to_multiple_of), num_frames))
        out = vj.generate(self.model, prompts, pixels, rng=key, cache=self.cache,
                          pad_to_multiple_of=self.pad_to_multiple_of,
                          **{f.name: getattr(self.settings, f.name)
                             for f in dataclasses.fields(self.settings) if f.name != 'tokens'})
        tokens = np.asarray(out.tokens)
        timings['generate_s'] += time.perf_counter() - start
        timings['generated_tokens'] += int(np.asarray(out.lengths).sum())
        for (item, clip, prompt), row in zip(batch, tokens):
          answers[item.id] = Answer(
              id=item.id, video=str(item.video), question=item.question,
              answer=prompting.decode_answer(self.tokenizer, row, self.settings.stop_ids),
              tokens=row.tolist(), num_frames=num_frames,
              prompt_tokens=len(prompt) - 1 + num_frames * self.model.config.tokens_per_frame)
    timings['load_s'] = self.load_seconds
    timings['tokens_per_s'] = timings['generated_tokens'] / max(timings['generate_s'], 1e-9)
    return [answers[item.id] for item in items], timings


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.sample', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--video')
  parser.add_argument('--question')
  parser.add_argument('--batch-file', help='JSONL of {"video", "question", "id"?} per line')
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--frames', type=int, default=64, help='at most this many frames (64)')
  parser.add_argument('--gen-length', type=int, default=128)
  parser.add_argument('--steps', type=int, default=128)
  parser.add_argument('--block-length', type=int, default=128)
  parser.add_argument('--temperature', type=float, default=0.0)
  parser.add_argument('--remasking', default='low_confidence', choices=('low_confidence', 'random'))
  parser.add_argument('--cfg-scale', type=float, default=0.0)
  parser.add_argument('--threshold', type=float, help='Fast-dLLM parallel decoding threshold')
  parser.add_argument('--cache', default='none', choices=tuple(CACHE_POLICIES),
                      help='cache policy (default none: plain decoding, as the reference)')
  parser.add_argument('--time-instruction', action='store_true')
  parser.add_argument('--think', action='store_true', help='do not append /no_think')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), help='default: the checkpoint\'s')
  parser.add_argument('--max-length', type=int, default=CONTEXT_LENGTH)
  parser.add_argument('--pad-to-multiple-of', type=int, default=PROMPT_MULTIPLE,
                      help='left-pad prompts to a multiple of this many tokens, so questions of '
                           'nearby lengths share one compiled program; answers do not change '
                           f'({PROMPT_MULTIPLE}; 1: no padding)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--show-layout', action='store_true',
                      help='print the spliced sequence layout and the decoded token ids')
  parser.add_argument('--json', action='store_true', help='one JSON object with answers and timings')
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    settings = SamplerConfig(
        gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
        temperature=args.temperature, remasking=args.remasking, cfg_scale=args.cfg_scale,
        threshold=args.threshold)
    if args.batch_size < 1 or args.frames < 1:
      raise ValueError('--batch-size and --frames must be positive')
    items = read_items(args)
    if not args.batch_file and not items[0].video.exists():
      raise FileNotFoundError(f'video {items[0].video} does not exist')
    sampler = Sampler(args.checkpoint, settings, frames=args.frames, dtype=args.dtype,
                      time_instruction=args.time_instruction, think=args.think,
                      max_length=args.max_length, seed=args.seed, cache=args.cache,
                      pad_to_multiple_of=args.pad_to_multiple_of)
    show = (lambda text: print('spliced sequence:\n' + text)) if args.show_layout else None
    answers, timings = sampler.answer(items, args.batch_size, on_layout=show,
                                      keep_going=bool(args.batch_file))
  except (ValueError, FileNotFoundError, VideoError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  failed = [a for a in answers if a.error]
  if args.json:
    print(json.dumps(dict(answers=[dataclasses.asdict(a) for a in answers], timings=timings,
                          settings={k: v for k, v in dataclasses.asdict(settings).items()
                                    if k != 'tokens'})))
    return 1 if failed else 0
  for answer in answers:
    prefix = f'[{answer.id}] ' if len(answers) > 1 else ''
    if answer.error:
      print(f'{prefix}error: {answer.error}')
      continue
    if args.show_layout:
      print(f'{prefix}decoded tokens: {answer.tokens}')
    print(f'{prefix}{answer.answer or "(empty answer)"}')
  print(f'({timings["generated_tokens"]} tokens in {timings["generate_s"]:.2f}s including '
        f'compilation, {timings["tokens_per_s"]:.1f} tokens/s; model loaded in '
        f'{timings["load_s"]:.1f}s)', file=sys.stderr)
  if failed:
    print(f'{len(failed)} of {len(answers)} item(s) failed', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
