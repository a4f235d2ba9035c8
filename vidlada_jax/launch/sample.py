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
from pathlib import Path

from vidlada_jax.answering import (CONTEXT_LENGTH, INPUT_ERRORS, PROMPT_MULTIPLE, Answerer,
                                   Question)
from vidlada_jax.policies import CACHE_POLICIES
from vidlada_jax.sampling import SamplerConfig


def read_questions(args) -> list[Question]:
  """The questions named on the command line: --video/--question, or --batch-file's lines."""
  if args.batch_file:
    questions = []
    for number, line in enumerate(Path(args.batch_file).read_text().splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        questions.append(Question(Path(record['video']), str(record['question']),
                                  id=str(record.get('id', number))))
      except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f'{args.batch_file} line {number}: expected a JSON object with "video" '
                         f'and "question" ({e})') from e
    if not questions:
      raise ValueError(f'{args.batch_file} holds no questions')
    return questions
  if not args.video or not args.question:
    raise ValueError('give --video and --question, or --batch-file')
  return [Question(Path(args.video), args.question)]


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
  parser.add_argument('--json', action='store_true',
                      help='one JSON object with answers and timings')
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
    questions = read_questions(args)
    if not args.batch_file and not Path(questions[0].video).exists():
      raise FileNotFoundError(f'video {questions[0].video} does not exist')
    answerer = Answerer(args.checkpoint, cache=args.cache, frames=args.frames, settings=settings,
                        dtype=args.dtype, time_instruction=args.time_instruction,
                        think=args.think, max_length=args.max_length, seed=args.seed,
                        pad_to_multiple_of=args.pad_to_multiple_of)
  except (ValueError, FileNotFoundError) as e:  # the arguments or the checkpoint
    print(f'error: {e}', file=sys.stderr)
    return 2
  show = (lambda text: print('spliced sequence:\n' + text)) if args.show_layout else None
  try:
    # A batch file's bad items are recorded and the others answered; anything else is a bug.
    answers = answerer.ask_batch(questions, args.batch_size, on_layout=show,
                                 keep_going=bool(args.batch_file))
  except INPUT_ERRORS as e:  # the one --video
    print(f'error: {e}', file=sys.stderr)
    return 2
  timings = answerer.timings
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
