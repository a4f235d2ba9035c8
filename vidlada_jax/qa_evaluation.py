"""Evaluating a checkpoint on a video-QA task's split, per question type and cache policy.

The task's clips are exported once as mp4s (with an `items.json` listing the questions, written
last, so its presence marks a complete export) and read back by `vidlada_jax.answering`, exactly
as a user's videos are. Each policy's results go to a JSONL file one batch at a time, so an
interrupted run loses at most a batch and resumes from the ids the file holds (`read_results`,
`check_settings`); `summarize` and `format_table` report accuracy, speed and, against plain
decoding, each policy's speedup and token agreement. The command line is
`vidlada_jax.launch.evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import tqdm

from vidlada_jax import evaluation
from vidlada_jax.answering import Answerer, Question

DATA_DIR_ENV = 'VIDLADA_DATA_DIR'
DEFAULT_DATA_DIR = Path('~/.cache/vidlada_jax')
ITEMS_FILE = 'items.json'  # written last by the export: its presence means the export is complete


class TaskError(ValueError):
  """A problem with the task's data or a results file: bad input, named for the person asking."""


# ---------------------------------------------------------------------------------------------
# The task's items


@dataclasses.dataclass(frozen=True)
class TaskItem:
  id: str
  video: Path
  prompt: str  # what is asked: the question, with lettered options for multiple choice
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


def prepare_items(data_dir: Path, split: str, config: str) -> list[TaskItem]:
  """The split's items, ordered by id, with their clips exported to mp4 (once) for reading back.

  A named config's examples are the ones its tfds builder yields, drawn directly; another config
  must have been prepared under `data_dir` (`synthetic_qa.build`). Once `items.json` exists the
  export is not redone, so a clip deleted or damaged since then stays so and is reported as
  that item's error.
  """
  root = export_root(data_dir, config, split)
  listing = root / ITEMS_FILE
  if not listing.exists():
    from vidlada_jax.input_pipeline import synthetic_qa  # pylint: disable=g-import-not-at-top

    named = [c.name for c in synthetic_qa.SyntheticVideoQa.BUILDER_CONFIGS]
    try:
      examples = synthetic_qa.examples_of(split, config,
                                          data_dir=None if config in named else data_dir)
    except Exception as e:  # tfds raises several kinds for data that is not there
      raise TaskError(
          f'synthetic_video_qa/{config} is not prepared under {data_dir} and is not one of the '
          f'named configs ({", ".join(named)}); prepare it with synthetic_qa.build or pick '
          f'another config or data dir ({type(e).__name__}: {e})') from e
    print(f'exporting the {split} clips of synthetic_video_qa/{config} to {root} (once)',
          file=sys.stderr)
    records = synthetic_qa.write_clips(examples, root / 'videos')
    for record in records:  # relative to the export, which may move
      record['video'] = Path(record['video']).name
    listing.write_text(json.dumps(dict(config=config, split=split, items=records), indent=1))
  try:
    records = json.loads(listing.read_text())['items']
    items = [TaskItem(
        id=r['id'], video=root / 'videos' / f'{r["id"]}.mp4', prompt=r['prompt'],
        question=r['question'], question_type=r['question_type'], format=r['format'],
        options=tuple(r['options']),
        target=r['answer_letter'] if r['format'] == 'multiple_choice' else r['answer'],
        num_frames=int(r['num_frames'])) for r in records]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise TaskError(f'{listing} is damaged ({e}); delete {root} to export the clips again') from e
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
      raise TaskError(f'{path} line {number} is not JSON ({e}); fix or remove that line') from e
  return records


def check_settings(path: Path, records: Sequence[dict], settings: dict) -> None:
  """Resuming must not mix results decoded differently in one file."""
  for record in records:
    theirs = record.get('settings')
    if theirs is None or theirs == settings:
      continue
    differ = sorted(k for k in set(theirs) | set(settings) if theirs.get(k) != settings.get(k))
    detail = ', '.join(f'{k}: {theirs.get(k)!r} there, {settings.get(k)!r} now' for k in differ)
    raise TaskError(f'{path} holds results decoded with other settings ({detail}); '
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


def run_policy(answerer: Answerer, run: PolicyRun, items: Sequence[TaskItem], batch_size: int,
               settings: dict, seed: int) -> None:
  """Decodes the items `run` does not hold yet, appending each batch's records to its file."""
  todo = [item for item in items if item.id not in run.records]
  if len(todo) < len(items):
    print(f'[{run.cache}] {len(items) - len(todo)} of {len(items)} items already in '
          f'{run.output}; decoding the other {len(todo)}', file=sys.stderr)
  if not todo:
    return
  answerer.cache = run.cache
  answerer.rng = jax.random.key(seed)  # every policy sees the same random stream
  compiled = set()  # the programs (batch shapes) this run has decoded
  run.output.parent.mkdir(parents=True, exist_ok=True)
  with run.output.open('a') as out, tqdm.tqdm(total=len(todo), unit='item', desc=run.cache,
                                              file=sys.stderr, dynamic_ncols=True) as bar:
    for start in range(0, len(todo), batch_size):
      batch = todo[start:start + batch_size]
      begin = time.perf_counter()
      answers = answerer.ask_batch([Question(item.video, item.prompt, id=item.id)
                                    for item in batch], len(batch), keep_going=True)
      timings = answerer.timings
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
