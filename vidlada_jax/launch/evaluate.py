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
config is read from its tfds dataset prepared under D (`synthetic_qa.build`). Each clip is read back from its mp4 by
`vidlada_jax.launch.sample.Sampler`, exactly as a user's video is. The question is the human turn of training
(`synthetic_qa.prompt_text`: the question, and for multiple choice the lettered options and the
instruction), put in the chat template by the Sampler as `vidlada_jax.launch.sample` does (with "/no_think"
unless --think; no time instruction unless --time-instruction). --frames defaults to the clip's
frame count, so every frame is used.

Answers are scored as the benchmarks' reference evaluation does (`vidlada_jax.evaluation`): the
option letter for multiple choice, the normalised short answer otherwise. One JSON record per
item (id, question_type, format, question, options, target, answer, correct, error, cache,
seconds: its share of its batch's time, tokens, settings) is appended to the output file
(default `<output-dir>/synthetic_video_qa_<split>_<cache>.jsonl`, or `..._<config>_<split>_...`
for a config other than `default`) as soon as its batch is decoded, so an interrupted run loses
at most one batch, and --resume skips the ids the file already holds. An existing file is never overwritten. An item whose video cannot be read is
recorded with its "error" and counts as wrong; the run goes on.

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
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import tqdm

from vidlada_jax import assets
from vidlada_jax.launch.sample import CACHE_POLICIES, PROMPT_MULTIPLE, Item, Sampler
from vidlada_jax import evaluation
from vidlada_jax.sampling import SamplerConfig

TASKS = ('synthetic_video_qa',)
SPLITS = ('train', 'validation', 'test')
# Generation defaults: short answers (a letter, a colour, a count, a side) fit in one block.
GEN_LENGTH = 16
STEPS = 16
BLOCK_LENGTH = 16
BATCH_SIZE = 8
OUTPUT_DIR = Path('outputs/evaluate')
DATA_DIR_ENV = 'VIDLADA_DATA_DIR'
DEFAULT_DATA_DIR = Path('~/.cache/vidlada_jax')
ITEMS_FILE = 'items.json'  # written last by the export: its presence means the export is complete


class UsageError(Exception):
  """A problem with the command line or its inputs (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# The task's items


@dataclasses.dataclass(frozen=True)
class TaskItem:
  id: str
  video: Path
  prompt: str  # what the Sampler asks: the question, with lettered options for multiple choice
  question: str
  question_type: str
  format: str
  options: tuple[str, ...]
  target: str  # the option letter for multiple choice, else the answer
  num_frames: int

  @property
  def multiple_choice(self) -> bool:
    return self.format == 'multiple_choice'


def default_data_dir() -> Path:
  return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def export_root(data_dir: Path, config: str, split: str) -> Path:
  return data_dir / 'synthetic_video_qa_videos' / config / split


# `synthetic_qa` brings in tensorflow_datasets, which is slow to import: it is imported only when
# a split has to be exported (later runs read `items.json`).


def split_examples(data_dir: Path, split: str, config: str):
  """The split's examples. A named config's are drawn directly (`synthetic_qa.split_examples`:
  the examples its tfds builder yields, without preparing every split of the dataset); another
  config must have been prepared under `data_dir` (`synthetic_qa.build` with its config)."""
  from vidlada_jax.input_pipeline import synthetic_qa  # pylint: disable=g-import-not-at-top

  known = [c.name for c in synthetic_qa.SyntheticVideoQa.BUILDER_CONFIGS]
  if config in known:
    named = synthetic_qa.named_config(config)
    return synthetic_qa.split_examples(named.seed, split, named.split_sizes,
                                       num_frames=named.num_frames, size=named.image_size)
  try:
    source = synthetic_qa.load_split(data_dir, split, config_name=config)
  except Exception as e:  # tfds raises several kinds for data that is not there
    raise UsageError(
        f'synthetic_video_qa/{config} is not prepared under {data_dir} and is not one of the '
        f'named configs ({", ".join(known)}); prepare it with synthetic_qa.build or pick '
        f'another --config or --data-dir ({type(e).__name__}: {e})') from e
  return (source[index] for index in range(len(source)))


def prepare_items(data_dir: Path, split: str, config: str) -> list[TaskItem]:
  """The split's items, ordered by id, with their clips exported to mp4 (once) for reading back.

  Once `items.json` exists the export is not redone, so a clip deleted or damaged since then
  stays so and is reported as that item's error.
  """
  root = export_root(data_dir, config, split)
  listing = root / ITEMS_FILE
  if not listing.exists():
    from vidlada_jax.input_pipeline import synthetic_qa  # pylint: disable=g-import-not-at-top

    source = split_examples(data_dir, split, config)
    text = synthetic_qa.as_text
    metadata = []

    def examples():
      for example in source:
        metadata.append(dict(
            id=text(example['id']), prompt=synthetic_qa.question_text(example),
            question=text(example['question']), question_type=text(example['question_type']),
            format=text(example['format']), options=[text(o) for o in example['options']],
            answer=text(example['answer']), answer_letter=text(example['answer_letter']),
            num_frames=len(example['video'])))
        yield example

    print(f'exporting the {split} clips of synthetic_video_qa/{config} to {root} (once)',
          file=sys.stderr)
    synthetic_qa.export_videos(examples(), root)
    listing.write_text(json.dumps(dict(config=config, split=split, items=metadata), indent=1))
  try:
    records = json.loads(listing.read_text())['items']
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise UsageError(f'{listing} is damaged ({e}); delete {root} to export the clips again') from e
  items = [TaskItem(
      id=r['id'], video=root / 'videos' / f'{r["id"]}.mp4', prompt=r['prompt'],
      question=r['question'], question_type=r['question_type'], format=r['format'],
      options=tuple(r['options']),
      target=r['answer_letter'] if r['format'] == 'multiple_choice' else r['answer'],
      num_frames=int(r['num_frames'])) for r in records]
  return sorted(items, key=lambda item: item.id)


# ---------------------------------------------------------------------------------------------
# Results files


def read_results(path: Path) -> list[dict]:
  """The records of a results file. A last line cut short (an interrupted write) is dropped
  from the file so that appending goes on cleanly; any other unreadable line is an error."""
  if not path.exists():
    return []
  raw = path.read_bytes()
  lines = raw.split(b'\n')
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):  # no newline after it: the write was interrupted
        print(f'{path}: dropping its last line, cut short by an interrupted run', file=sys.stderr)
        with path.open('r+b') as f:
          f.truncate(len(raw) - len(line))
        break
      raise UsageError(f'{path} line {number} is not JSON ({e}); fix or remove that line') from e
  return records


def check_settings(path: Path, records: Sequence[dict], settings: dict) -> None:
  """Resuming must not mix results decoded differently in one file."""
  for record in records:
    theirs = record.get('settings')
    if theirs is None or theirs == settings:
      continue
    differ = sorted(k for k in set(theirs) | set(settings) if theirs.get(k) != settings.get(k))
    detail = ', '.join(f'{k}: {theirs.get(k)!r} there, {settings.get(k)!r} now' for k in differ)
    raise UsageError(f'{path} holds results decoded with other settings ({detail}); '
                     'resume with the same settings, or use another --output')


# ---------------------------------------------------------------------------------------------
# Decoding


@dataclasses.dataclass
class PolicyRun:
  """The outcome of one cache policy: its records (resumed ones included) and this run's timing."""

  cache: str
  output: Path
  records: dict[str, dict] = dataclasses.field(default_factory=dict)
  decoded: int = 0  # items decoded by this run (the others were resumed)
  tokens: int = 0
  generate_s: float = 0.0
  warm_tokens: int = 0
  warm_generate_s: float = 0.0

  def tokens_per_s(self) -> tuple[float | None, bool]:
    """(tokens/s, whether it includes compilation); None when this run decoded nothing."""
    if self.warm_generate_s > 0:
      return self.warm_tokens / self.warm_generate_s, False
    if self.generate_s > 0:
      return self.tokens / self.generate_s, True
    return None, False


def record_of(item: TaskItem, answer, cache: str, seconds: float, settings: dict) -> dict:
  correct = (not answer.error and
             evaluation.score(answer.answer, item.target, multiple_choice=item.multiple_choice))
  return dict(id=item.id, question_type=item.question_type, format=item.format,
              question=item.question, options=list(item.options), target=item.target,
              answer=answer.answer, correct=bool(correct), error=answer.error, cache=cache,
              seconds=round(seconds, 4), tokens=answer.tokens, settings=settings)


def run_policy(sampler: Sampler, run: PolicyRun, items: Sequence[TaskItem], batch_size: int,
               settings: dict, seed: int) -> None:
  """Decodes the items `run` does not hold yet, appending each batch's records to its file."""
  todo = [item for item in items if item.id not in run.records]
  if len(todo) < len(items):
    print(f'[{run.cache}] {len(items) - len(todo)} of {len(items)} items already in '
          f'{run.output}; decoding the other {len(todo)}', file=sys.stderr)
  if not todo:
    return
  sampler.cache = CACHE_POLICIES[run.cache]
  sampler.rng = jax.random.key(seed)  # every policy sees the same random stream
  compiled = set()  # the programs (batch shapes) this run has decoded
  run.output.parent.mkdir(parents=True, exist_ok=True)
  with run.output.open('a') as out, tqdm.tqdm(total=len(todo), unit='item', desc=run.cache,
                                              file=sys.stderr, dynamic_ncols=True) as bar:
    for start in range(0, len(todo), batch_size):
      batch = todo[start:start + batch_size]
      begin = time.perf_counter()
      answers, timings = sampler.answer(
          [Item(item.id, item.video, item.prompt) for item in batch], len(batch), keep_going=True)
      seconds = (time.perf_counter() - begin) / len(batch)
      run.tokens += timings['generated_tokens']
      run.generate_s += timings['generate_s']
      programs = set(timings['programs'])
      if programs and programs <= compiled:
        run.warm_tokens += timings['generated_tokens']
        run.warm_generate_s += timings['generate_s']
      compiled |= programs
      for item, answer in zip(batch, answers):
        record = record_of(item, answer, run.cache, seconds, settings)
        run.records[item.id] = record
        out.write(json.dumps(record) + '\n')
      out.flush()
      run.decoded += len(batch)
      bar.update(len(batch))


# ---------------------------------------------------------------------------------------------
# Summary


def answer_tokens(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
  """The decoded tokens up to and including the first stop: what the answer is made of."""
  tokens = [int(t) for t in tokens]
  for i, token in enumerate(tokens):
    if token in stop_ids:
      return tokens[:i + 1]
  return tokens


def summarize(runs: Sequence[PolicyRun], items: Sequence[TaskItem],
              stop_ids: Sequence[int]) -> dict[str, dict]:
  # Speedup and agreement compare with plain decoding, when it is one of several policies run.
  reference = next((run for run in runs if run.cache == 'none'), None) if len(runs) > 1 else None
  reference_speed = reference.tokens_per_s()[0] if reference else None
  summary = {}
  for run in runs:
    records = [run.records[item.id] for item in items]
    by_type = evaluation.accuracy_by_type(records)
    speed, includes_compile = run.tokens_per_s()
    entry = dict(accuracy=by_type.pop('overall'), accuracy_by_type=by_type, items=len(records),
                 errors=sum(1 for r in records if r.get('error')), decoded=run.decoded,
                 tokens_per_s=speed, tokens_per_s_includes_compile=includes_compile,
                 output=str(run.output))
    if reference is not None:
      entry['speedup_vs_none'] = (speed / reference_speed if speed and reference_speed else None)
      pairs = [(run.records[item.id], reference.records[item.id]) for item in items]
      pairs = [(a, b) for a, b in pairs if not a.get('error') and not b.get('error')]
      entry['token_agreement_with_none'] = (
          sum(answer_tokens(a['tokens'], stop_ids) == answer_tokens(b['tokens'], stop_ids)
              for a, b in pairs) / len(pairs) if pairs else None)
    summary[run.cache] = entry
  return summary


def format_table(summary: dict[str, dict]) -> str:
  """One column per policy: accuracy per question type, overall, counts and speed."""
  policies = list(summary)
  types = sorted({t for entry in summary.values() for t in entry['accuracy_by_type']})

  def number(value, fmt):
    return '-' if value is None else format(value, fmt)

  rows = [('', policies)]
  rows += [(t, [number(summary[p]['accuracy_by_type'].get(t), '.3f') for p in policies])
           for t in types]
  rows.append(('overall', [number(summary[p]['accuracy'], '.3f') for p in policies]))
  rows.append(('items', [str(summary[p]['items']) for p in policies]))
  rows.append(('errors', [str(summary[p]['errors']) for p in policies]))
  compiled = {p: '*' if summary[p]['tokens_per_s_includes_compile'] else '' for p in policies}
  rows.append(('tokens/s', [number(summary[p]['tokens_per_s'], '.1f') + compiled[p]
                            for p in policies]))
  if 'speedup_vs_none' in summary[policies[0]]:
    rows.append(('speedup vs none', [
        number(summary[p]['speedup_vs_none'], '.2f') + 'x' + (compiled[p] or compiled['none'])
        if summary[p]['speedup_vs_none'] else '-' for p in policies]))
    rows.append(('token agreement', [number(summary[p]['token_agreement_with_none'], '.3f')
                                     for p in policies]))
  label = max(len(name) for name, _ in rows)
  width = max(10, *(len(cell) for _, cells in rows for cell in cells))
  lines = [f'{name:<{label}}  ' + '  '.join(f'{cell:>{width}}' for cell in cells)
           for name, cells in rows]
  if any(summary[p]['tokens_per_s_includes_compile'] for p in policies):
    lines.append('* includes compilation: every batch had a new shape (a longer run times '
                 'warm batches only)')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_policies(text: str) -> list[str]:
  names = list(CACHE_POLICIES) if text == 'all' else [n.strip() for n in text.split(',')]
  unknown = [n for n in names if n not in CACHE_POLICIES]
  if unknown or not names:
    raise UsageError(f'--cache {text!r}: unknown policy {", ".join(map(repr, unknown))}; '
                     f'expected all or a comma list of {", ".join(CACHE_POLICIES)}')
  return list(dict.fromkeys(names))  # in the order given, once each


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.evaluate', description=__doc__,
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


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return evaluate(args)
  except UsageError as e:
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
    sampler = Sampler(checkpoint, settings, frames=frames, dtype=args.dtype,
                      time_instruction=args.time_instruction, think=args.think, seed=args.seed,
                      pad_to_multiple_of=args.pad_to_multiple_of)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(str(e)) from e
  print(f'{len(items)} items of {args.task}/{args.config} {args.split}, {frames} frames, '
        f'checkpoint {checkpoint} (loaded in {sampler.load_seconds:.1f}s)', file=sys.stderr)

  for run in runs:
    try:
      run_policy(sampler, run, items, args.batch_size, run_settings, args.seed)
    except KeyboardInterrupt:
      print(f'\ninterrupted: the results so far are in {run.output}; run again with --resume '
            'to continue', file=sys.stderr)
      return 130

  summary = summarize(runs, items, sampler.settings.stop_ids)
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
