"""Measure a VidLaDA checkpoint's accuracy on a video-QA task, per question type and cache policy.

    python -m vidlada_jax.launch.evaluate [--checkpoint DIR] --task synthetic_video_qa --split test
        [--config default] [--cache none|mars|mars-exact|dual|all|none,mars,...] [--limit N]
        [--json] [--output results.jsonl | --output-dir outputs/evaluate] [--resume]
        [--data-dir D] [--frames F] [--gen-length 16 --steps 16 --block-length 16]
        [--batch-size 8]

DIR defaults to the demo checkpoint (`vidlada_jax.assets.DEMO_CHECKPOINT`). The task's split is
exported once under the data dir (--data-dir, else $VIDLADA_DATA_DIR, else ~/.cache/vidlada_jax):
its clips as mp4s under `D/synthetic_video_qa_videos/<config>/<split>/` with an `items.json`
listing the questions, which marks the export complete; later runs reuse it. The examples of the
named configs (default, long) are the ones their tfds builder yields, drawn directly; another
config is read from its tfds dataset prepared under D (`synthetic_qa.build`). Each clip is
read back from its mp4 by `vidlada_jax.answering.Answerer`, exactly as a user's video is
(`vidlada_jax.qa_evaluation` holds the machinery). The question is the human turn of training
(`synthetic_qa.prompt_text`: the question, and for multiple choice the lettered options and the
instruction), put in the chat template as `vidlada_jax.launch.sample` does (with "/no_think"
unless --think; no time instruction unless --time-instruction). --frames defaults to the clip's
frame count, so every frame is used.

Answers are scored as the benchmarks' reference evaluation does (`vidlada_jax.evaluation`): the
option letter for multiple choice, the normalised short answer otherwise. One JSON record per
item (id, question_type, format, question, options, target, answer, correct, error, cache,
seconds: its share of its batch's time, tokens, settings) is appended to the output file
(default `<output-dir>/synthetic_video_qa_<split>_<cache>.jsonl`, or `..._<config>_<split>_...`
for a config other than `default`) as soon as its batch is decoded, so an interrupted run loses
at most one batch, and --resume skips the ids the file already holds. An existing file is never
overwritten. An item whose video cannot be read is recorded with its "error" and counts as wrong;
the run goes on.

--cache all (or a comma list) evaluates several cache policies in turn on the same items and
prints one column per policy; when `none` (plain decoding) is among them, also each policy's
speedup in tokens/s over it and its token agreement with it: the fraction of items whose decoded
answer tokens equal plain decoding's.

Timing: tokens/s counts only batches whose shape (rows, padded prompt length, frames) this run
has decoded before with the same policy, so compilation is left out. When every batch compiled
(a short run), it falls back to all batches and says that it includes compilation.

Exit status: 0 when the evaluation ran (item errors are results), 2 for usage errors (bad flags,
a missing checkpoint or dataset config, an output file that exists without --resume or that
holds results decoded with other settings), 130 when interrupted (the results so far stay in the
output file; --resume continues).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidlada_jax import assets
from vidlada_jax.answering import PROMPT_MULTIPLE, Answerer
from vidlada_jax.policies import CACHE_POLICIES
from vidlada_jax.qa_evaluation import (DATA_DIR_ENV, DEFAULT_DATA_DIR, PolicyRun, TaskError,
                                       check_settings, default_data_dir, format_table,
                                       prepare_items, read_results, run_policy, summarize)
from vidlada_jax.sampling import SamplerConfig

TASKS = ('synthetic_video_qa',)
SPLITS = ('train', 'validation', 'test')
# Generation defaults: short answers (a letter, a colour, a count, a side) fit in one block.
GEN_LENGTH = 16
STEPS = 16
BLOCK_LENGTH = 16
BATCH_SIZE = 8
OUTPUT_DIR = Path('outputs/evaluate')


def parse_policies(text: str) -> list[str]:
  names = list(CACHE_POLICIES) if text == 'all' else [n.strip() for n in text.split(',')]
  unknown = [n for n in names if n not in CACHE_POLICIES]
  if unknown or not names:
    raise UsageError(f'--cache {text!r}: unknown policy {", ".join(map(repr, unknown))}; '
                     f'expected all or a comma list of {", ".join(CACHE_POLICIES)}')
  return list(dict.fromkeys(names))  # in the order given, once each


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.evaluate',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint',
                      help=f'default: the demo checkpoint, {assets.DEMO_CHECKPOINT}')
  parser.add_argument('--task', default='synthetic_video_qa', choices=TASKS)
  parser.add_argument('--split', default='test', choices=SPLITS)
  parser.add_argument('--config', default='default',
                      help='the dataset config (default; long; or one prepared under --data-dir)')
  parser.add_argument('--data-dir', help=f'default: ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR}')
  parser.add_argument('--cache', default='none',
                      help=f'cache policy: {", ".join(CACHE_POLICIES)}, all, or a comma list '
                           '(default none: plain decoding)')
  parser.add_argument('--limit', type=int, help='only the first N items (by id)')
  parser.add_argument('--frames', type=int, help='at most this many frames (default: all of '
                                                 'the clip)')
  parser.add_argument('--gen-length', type=int, default=GEN_LENGTH)
  parser.add_argument('--steps', type=int, default=STEPS)
  parser.add_argument('--block-length', type=int, default=BLOCK_LENGTH)
  parser.add_argument('--batch-size', type=int, default=BATCH_SIZE)
  parser.add_argument('--time-instruction', action='store_true',
                      help="add the video's duration and frame times to the prompt")
  parser.add_argument('--think', action='store_true', help='do not append /no_think')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), help="default: the checkpoint's")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--pad-to-multiple-of', type=int, default=PROMPT_MULTIPLE,
                      help='left-pad prompts to a multiple of this many tokens, so questions of '
                           'nearby lengths share one compiled program; answers do not change '
                           f"({PROMPT_MULTIPLE}; 1: no padding)")
  parser.add_argument('--output', help='the results JSONL (all policies in one file); default: '
                                       'one per policy in --output-dir')
  parser.add_argument('--output-dir', default=str(OUTPUT_DIR),
                      help=f'where default-named results go ({OUTPUT_DIR})')
  parser.add_argument('--resume', action='store_true',
                      help='keep the records already in the output file and decode only the '
                           'missing ids; records with an error are kept too (they are results): '
                           'delete their lines to retry them')
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object on stdout (the tables go to stderr)')
  return parser


def output_path(args, cache: str) -> Path:
  if args.output:
    return Path(args.output)
  # Another config of the task (e.g. `long`) gets its own file beside the default's.
  config = '' if args.config == 'default' else f'{args.config}_'
  return Path(args.output_dir) / f'{args.task}_{config}{args.split}_{cache}.jsonl'


class UsageError(Exception):
  """A problem with the command line (exit status 2)."""


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return evaluate(args)
  except (UsageError, TaskError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def evaluate(args) -> int:
  policies = parse_policies(args.cache)
  for name in ('limit', 'frames', 'batch_size'):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise UsageError(f'--{name.replace("_", "-")} must be positive, got {value}')
  try:
    settings = SamplerConfig(gen_length=args.gen_length, steps=args.steps,
                             block_length=args.block_length)
  except ValueError as e:
    raise UsageError(str(e)) from e
  checkpoint = Path(args.checkpoint) if args.checkpoint else assets.DEMO_CHECKPOINT
  if not checkpoint.is_dir():
    raise UsageError(f'no checkpoint at {checkpoint}' + (
        '' if args.checkpoint else ' (the default, the demo checkpoint)') +
        '; pass --checkpoint DIR')
  outputs = {cache: output_path(args, cache) for cache in policies}
  if not args.resume:
    for path in dict.fromkeys(outputs.values()):
      if path.exists():
        raise UsageError(f'{path} already exists; pass --resume to continue it, or --output '
                         'another file (results are never overwritten)')

  data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
  items = prepare_items(data_dir, args.split, args.config)
  if args.limit:
    items = items[:args.limit]
  if not items:
    raise UsageError(f'{args.task}/{args.config} {args.split} holds no items')
  frames = args.frames or max(item.num_frames for item in items)
  run_settings = dict(
      checkpoint=str(checkpoint.resolve()), task=args.task, config=args.config, split=args.split,
      frames=frames, gen_length=settings.gen_length, steps=settings.steps,
      block_length=settings.block_length, time_instruction=args.time_instruction,
      think=args.think, dtype=args.dtype, seed=args.seed)

  runs = []
  for cache in policies:
    run = PolicyRun(cache, outputs[cache])
    if args.resume:
      existing = [r for r in read_results(run.output) if r.get('cache', cache) == cache]
      check_settings(run.output, existing, run_settings)
      run.records = {r['id']: r for r in existing if 'id' in r}
    runs.append(run)

  try:
    answerer = Answerer(checkpoint, settings=settings, frames=frames, dtype=args.dtype,
                        time_instruction=args.time_instruction, think=args.think,
                        seed=args.seed, pad_to_multiple_of=args.pad_to_multiple_of)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(str(e)) from e
  print(f'{len(items)} items of {args.task}/{args.config} {args.split}, {frames} frames, '
        f'checkpoint {checkpoint} (loaded in {answerer.load_seconds:.1f}s)', file=sys.stderr)

  for run in runs:
    try:
      run_policy(answerer, run, items, args.batch_size, run_settings, args.seed)
    except KeyboardInterrupt:
      print(f'\ninterrupted: the results so far are in {run.output}; run again with --resume '
            'to continue', file=sys.stderr)
      return 130

  summary = summarize(runs, items, answerer.settings.stop_ids)
  table = format_table(summary)
  first = summary[policies[0]]
  text_out = sys.stderr if args.json else sys.stdout
  print(f'\n{args.task}/{args.config} {args.split}: {first["items"]} items', file=text_out)
  print(table, file=text_out)
  for cache, entry in summary.items():
    print(f'[{cache}] {entry["errors"]} error(s); results in {entry["output"]}', file=text_out)
  if args.json:
    print(json.dumps(dict(task=args.task, split=args.split, config=args.config,
                          checkpoint=str(checkpoint), settings=run_settings, cache=policies[0],
                          **first, policies=summary)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
