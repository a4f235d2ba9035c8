"""The lmms-eval task `synthetic_video_qa`: its data, prompts and scoring.

Write the data (a split of `vidlada_jax.input_pipeline.synthetic_qa` as mp4s plus a JSONL of
{id, video, question, options, answer, answer_letter, question_type, format}), then evaluate:

    python -m vidlada_jax.lmms.tasks.synthetic_video_qa.utils /tmp/svqa   # test split
    python -m vidlada_jax.lmms --model vidlada_jax --tasks synthetic_video_qa \\
        --include_path /tmp/svqa --output_path results/

`write_task_data(out_dir)` writes out_dir/test.jsonl, out_dir/videos/*.mp4 (at 1 fps: evaluation
reads a frame a second, so every frame of a clip is seen, as in training) and
out_dir/synthetic_video_qa.yaml, the task over that JSONL (it includes _default_template_yaml
from this directory), hence `--include_path out_dir`. lmms-eval does not expand environment
variables in `data_files`, so the location is written into that YAML. Without `out_dir` the data
goes to data/ next to this file, where synthetic_video_qa.yaml here reads it, and
`--include_path vidlada_jax/lmms/tasks` finds the task.

Prompts are the training prompts (`synthetic_qa.question_text`: the human turn without its
leading "<image>\\n", which the model's chat template puts back): the question, and for
multiple choice the lettered options one a line and "Answer with the option's letter.".
Answers are scored with `vidlada_jax.evaluation.score` (option letters parsed as lmms-eval's
Video-MME does); the task reports `accuracy` and `accuracy_<question type>` (NaN for a type
absent from the run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from vidlada_jax import evaluation
from vidlada_jax.input_pipeline import synthetic_qa

TASK_NAME = 'synthetic_video_qa'
TASK_DIR = Path(__file__).resolve().parent
TEMPLATE = TASK_DIR / '_default_template_yaml'
DEFAULT_DATA_DIR = TASK_DIR / 'data'  # what synthetic_video_qa.yaml here reads


# ---------------------------------------------------------------------------------------------
# The task's functions (named in _default_template_yaml)

def doc_to_visual(doc: Mapping[str, Any]) -> list[str]:
  return [doc['video']]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping | None = None) -> str:
  kwargs = lmms_eval_specific_kwargs or {}
  return (kwargs.get('pre_prompt', '') + synthetic_qa.question_text(doc)
          + kwargs.get('post_prompt', ''))


def is_multiple_choice(doc: Mapping[str, Any]) -> bool:
  return doc['format'] == 'multiple_choice'


def doc_to_target(doc: Mapping[str, Any]) -> str:
  return doc['answer_letter'] if is_multiple_choice(doc) else doc['answer']


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
  """Scores one response. `accuracy` gets 0/1; each `accuracy_<type>` gets a record that has a
  `score` only for the doc's own type, so per-type means (and lmms-eval's standard errors,
  which read `score`) count that type alone."""
  response = results[0] if results else ''
  correct = evaluation.score(response, doc_to_target(doc), multiple_choice=is_multiple_choice(doc),
                             num_options=len(doc['options']))
  record = {'id': doc['id'], 'question_type': doc['question_type'], 'format': doc['format'],
            'target': doc_to_target(doc), 'response': response, 'score': float(correct)}
  other = {'id': doc['id'], 'question_type': doc['question_type']}
  by_type = {f'accuracy_{question_type}': record if doc['question_type'] == question_type
             else other for question_type in synthetic_qa.QUESTION_TYPES}
  return {'accuracy': float(correct), **by_type}


def _type_accuracy(question_type: str) -> Callable[[Sequence[Mapping]], float]:
  def aggregate(records: Sequence[Mapping]) -> float:
    scores = [r['score'] for r in records if r['question_type'] == question_type and 'score' in r]
    return sum(scores) / len(scores) if scores else math.nan
  aggregate.__name__ = f'accuracy_{question_type}'
  aggregate.__doc__ = f'Accuracy over the {question_type} questions (NaN when there are none).'
  return aggregate


accuracy_colour_moved_left = _type_accuracy('colour_moved_left')
accuracy_count = _type_accuracy('count')
accuracy_appeared_first = _type_accuracy('appeared_first')
accuracy_ball_end = _type_accuracy('ball_end')
accuracy_middle_event = _type_accuracy('middle_event')
accuracy_end_event = _type_accuracy('end_event')
assert {f'accuracy_{t}' for t in synthetic_qa.QUESTION_TYPES} <= set(globals()), \
    'every question type needs its aggregation function'


# ---------------------------------------------------------------------------------------------
# The data

def write_task_data(out_dir: str | os.PathLike | None = None, split: str = 'test',
                    limit: int | None = None, data_dir: str | os.PathLike | None = None,
                    config: synthetic_qa.SyntheticVideoQaConfig | str = 'default',
                    fps: int = 1) -> Path:
  """Writes `split` of synthetic_video_qa as the task's data; returns the JSONL's path.

  Args:
    out_dir: where the videos (out_dir/videos/<id>.mp4), the JSONL (out_dir/<split>.jsonl) and
      the task YAML (out_dir/synthetic_video_qa.yaml: run lmms-eval with --include_path
      out_dir) go. Default: data/ next to this file, read by the task YAML there (no YAML is
      written then; the test split only).
    split: train, validation or test (always lmms-eval's "test" split of the task).
    limit: only the first `limit` examples (by id).
    data_dir: a tfds data directory to prepare the dataset in (or reuse it from); without it the
      examples are drawn directly, identically.
    config: the builder config or its name (`synthetic_qa.SyntheticVideoQaConfig`).
    fps: frame rate of the mp4s. Evaluation reads one frame a second (up to the model's frame
      budget), so at the default 1 fps the model sees every frame of a clip, as in training.
  """
  if split not in synthetic_qa.SPLIT_NUMBERS:
    raise ValueError(f'split must be one of {", ".join(synthetic_qa.SPLIT_NUMBERS)}, '
                     f'got {split!r}')
  if limit is not None and limit < 1:
    raise ValueError(f'limit must be positive, got {limit}')
  if out_dir is None and split != 'test':
    raise ValueError(f'the task YAML next to {__file__} reads data/test.jsonl; give out_dir to '
                     f'write the {split} split')
  if isinstance(config, str):
    config = synthetic_qa.named_config(config)
  default = out_dir is None
  out_dir = Path(DEFAULT_DATA_DIR if default else out_dir).resolve()
  examples = itertools.islice(synthetic_qa.examples_of(split, config, data_dir), limit)
  records = synthetic_qa.write_clips(examples, out_dir / 'videos', fps)
  if not records:
    raise ValueError(f'the {split} split of synthetic_video_qa/{config.name} is empty')
  jsonl = out_dir / f'{split}.jsonl'
  jsonl.write_text(''.join(json.dumps(record) + '\n' for record in records))
  if not default:
    task_yaml = {'include': str(TEMPLATE), 'task': TASK_NAME,
                 'dataset_kwargs': {'data_files': {'test': str(jsonl)}}}
    (out_dir / f'{TASK_NAME}.yaml').write_text(
        f'# {TASK_NAME} over {jsonl.name} here: lmms-eval --include_path {out_dir}\n'
        + yaml.safe_dump(task_yaml, sort_keys=False))
  return jsonl


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m vidlada_jax.lmms.tasks.synthetic_video_qa.utils',
      description='Write the data of the lmms-eval task synthetic_video_qa.')
  parser.add_argument('out_dir', nargs='?', help=f'default: {DEFAULT_DATA_DIR}')
  parser.add_argument('--split', default='test', choices=tuple(synthetic_qa.SPLIT_NUMBERS))
  parser.add_argument('--limit', type=int)
  parser.add_argument('--config', default='default', help='builder config name (default)')
  parser.add_argument('--data-dir', help='prepare (or reuse) the tfds dataset here')
  parser.add_argument('--fps', type=int, default=1, help='frame rate of the mp4s (1)')
  args = parser.parse_args(argv)
  jsonl = write_task_data(args.out_dir, args.split, args.limit, args.data_dir, args.config,
                          args.fps)
  print(f'wrote {jsonl}; run lmms-eval with --tasks {TASK_NAME} --include_path '
        f'{jsonl.parent if args.out_dir else TASK_DIR.parent}')


if __name__ == '__main__':
  main()
