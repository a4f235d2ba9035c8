"""The main job: the trained demo model answers a question about a bundled clip.

    python -m vidlada_jax.launch.demo [--clip ID] [--question "..."] [--checkpoint DIR]

Loads `assets/demo-vidlada` (a small VidLaDA trained on synthetic_video_qa by configs/demo.py;
see its PROVENANCE.md) and answers the question of one bundled test clip (`assets/clips`), or
--question about it, twice: with plain diffusion decoding (every step recomputes every token, as
the reference does) and with MARS-Cache. It prints the spliced sequence, the answer of each, the
expected answer (for the clip's own question) and whether the answer matches it, and the timings
side by side: compilation apart, then the decode itself. Last, it answers every bundled clip's
own question (one per question type, plain decoding) and says which answers are right.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vidlada_jax import assets, evaluation
from vidlada_jax.answering import Answerer, Question, describe_layout
from vidlada_jax.input_pipeline import synthetic_qa
from vidlada_jax.sampling import SamplerConfig

DEFAULT_CLIP = 'test_00010'  # a middle_event question: the evidence is only mid-clip
# What the demo model was evaluated with (README: MARS-Cache on the demo model).
GEN_LENGTH = STEPS = BLOCK_LENGTH = 16
POLICIES = ('none', 'mars')


def timed_answer(answerer: Answerer, question: Question, policy: str):
  """(answer, compile+decode seconds, decode seconds, tokens/s) of one question under `policy`."""
  answerer.cache = policy
  start = time.perf_counter()
  answerer.ask_batch([question], batch_size=1)  # compiles this policy's program
  first = time.perf_counter() - start
  (answer,) = answerer.ask_batch([question], batch_size=1)
  return answer, first, answerer.timings['generate_s'], answerer.timings['tokens_per_s']


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.demo', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', default=str(assets.DEMO_CHECKPOINT))
  parser.add_argument('--clip', default=DEFAULT_CLIP,
                      help=f'id of a bundled clip (assets/clips/clips.json; '
                           f'default {DEFAULT_CLIP})')
  parser.add_argument('--question', help="another question about the clip (default: the clip's)")
  args = parser.parse_args(argv)

  clips = {clip['id']: clip for clip in assets.demo_clips()}
  if args.clip not in clips:
    print(f'error: no bundled clip {args.clip!r}; known: {", ".join(clips)}', file=sys.stderr)
    return 2
  if not Path(args.checkpoint).exists():
    print(f'error: checkpoint {args.checkpoint} does not exist', file=sys.stderr)
    return 2
  clip = clips[args.clip]
  question = args.question or synthetic_qa.question_text(clip)
  start = time.perf_counter()
  answerer = Answerer(
      args.checkpoint, frames=64,
      settings=SamplerConfig(gen_length=GEN_LENGTH, steps=STEPS, block_length=BLOCK_LENGTH))
  config = answerer.model.config
  item = Question(Path(clip['video']), question, id=clip['id'])
  video, prompt = answerer.prepare(item)
  print(f'demo VidLaDA: {Path(args.checkpoint).name}, loaded in {time.perf_counter() - start:.1f}s')
  print(f'clip: {Path(clip["video"]).name} ({clip["question_type"]})')
  print('spliced sequence:\n' + describe_layout(prompt, len(video.frames),
                                                config.tokens_per_frame, GEN_LENGTH))
  print(f'question: {question}')

  rows = []
  for policy in POLICIES:
    answer, first, seconds, tokens_per_s = timed_answer(answerer, item, policy)
    rows.append((policy, answer.answer, first - seconds, seconds, tokens_per_s))
  plain_seconds = rows[0][3]
  for policy, answer, _, _, _ in rows:
    name = 'plain decoding' if policy == 'none' else 'MARS-Cache'
    print(f'answer ({name}): {answer or "(empty answer)"}')
  if not args.question:
    multiple_choice = clip['format'] == 'multiple_choice'
    target = expected_answer(clip)
    correct = evaluation.score(rows[0][1], target, multiple_choice=multiple_choice)
    shown = f'{target} ({clip["answer"]})' if multiple_choice else target
    print(f'expected: {shown}  -> {"correct" if correct else "wrong"}')
  print(f'\n{"decoding":<16}{"compile s":>10}{"decode s":>10}{"tokens/s":>10}{"speedup":>9}')
  for policy, _, compile_s, seconds, tokens_per_s in rows:
    name = 'plain' if policy == 'none' else 'MARS-Cache'
    print(f'{name:<16}{compile_s:>10.2f}{seconds:>10.3f}{tokens_per_s:>10.1f}'
          f'{plain_seconds / seconds:>8.1f}x')
  print(f'({GEN_LENGTH} tokens, {STEPS} steps, one block; '
        f'{config.tokens_per_frame} visual tokens a frame)')
  print_bundled_clips(answerer, list(clips.values()))
  return 0


def expected_answer(clip: dict) -> str:
  """What a right answer names: the option letter for multiple choice, else the answer."""
  return clip['answer_letter'] if clip['format'] == 'multiple_choice' else clip['answer']


def print_bundled_clips(answerer: Answerer, clips: list[dict]) -> int:
  """Answers every bundled clip's own question (plain decoding) and prints which are right;
  returns how many are."""
  answerer.cache = 'none'
  answers = answerer.ask_batch(
      [Question(Path(clip['video']), synthetic_qa.question_text(clip), id=clip['id'])
       for clip in clips], batch_size=len(clips))
  print('\nevery bundled clip, its own question (plain decoding):')
  print(f'{"clip":<12}{"question type":<19}{"format":<17}{"expected":<12}{"answer":<12}')
  right = 0
  for clip, answer in zip(clips, answers):
    multiple_choice = clip['format'] == 'multiple_choice'
    correct = evaluation.score(answer.answer, expected_answer(clip),
                               multiple_choice=multiple_choice)
    right += correct
    expected = f'{clip["answer_letter"]}. {clip["answer"]}' if multiple_choice else clip['answer']
    print(f'{clip["id"]:<12}{clip["question_type"]:<19}{clip["format"]:<17}'
          f'{expected:<12}{(answer.answer or "(empty)"):<12}{"right" if correct else "wrong"}')
  print(f'{right} of {len(clips)} right')
  return right


if __name__ == '__main__':
  sys.exit(main())
