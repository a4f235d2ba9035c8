"""Training annotations in the LLaVA-Video-178K format, and mixture files over them (SPEC 7).

An annotation file is a JSON list (or JSON lines) of records

    {"id": "...", "video": "relative/path.mp4",
     "conversations": [{"from": "human", "value": "<image>\\nQuestion?"},
                       {"from": "gpt", "value": "Answer."}, ...]}

A mixture file is the reference's data YAML:

    datasets:
      - json_path: academic/annotations.json   # relative to the YAML's folder
        sampling_strategy: "random:10%"         # all | first:N | first:P% | end:... | random:...
        video_root: academic/videos             # optional; default: the JSON's folder

Everything is validated when it is loaded, so a malformed file fails at start-up, naming the
file, the record's index and its id, rather than hours into a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from vidlada_jax.prompting import IMAGE_TOKEN

_ROLES = ('human', 'gpt')
_MIXTURE_KEYS = {'json_path', 'sampling_strategy', 'video_root'}
_STRATEGIES = ('first', 'end', 'random')
_MAX_REPORTED = 10  # problems listed in one error; the rest are counted


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One training conversation about one video."""

  id: str
  video: str  # as written in the annotation file
  conversations: tuple[dict, ...]  # validated {from: human|gpt, value} turns
  video_root: str  # where `video` is relative to

  @property
  def video_path(self) -> Path:
    return Path(self.video_root) / self.video


def conversation_problem(conversations: Any) -> str | None:
  """Why `conversations` is not a valid LLaVA-Video conversation, or None if it is."""
  if not isinstance(conversations, list) or not conversations:
    return 'conversations must be a non-empty list'
  for turn, message in enumerate(conversations):
    if not isinstance(message, dict) or not {'from', 'value'} <= message.keys():
      return f'turn {turn} must be a {{"from": ..., "value": ...}} object'
    if message['from'] not in _ROLES:
      return f'turn {turn} has unknown role {message["from"]!r} (expected "human" or "gpt")'
    if not isinstance(message['value'], str):
      return f'turn {turn} has a non-string value'
    expected = _ROLES[turn % 2]
    if message['from'] != expected:
      return (f'turns must alternate human, gpt, human, ...; turn {turn} is '
              f'{message["from"]!r}, expected {expected!r}')
  if len(conversations) < 2:
    return 'no gpt turn: nothing to train on'
  if conversations[-1]['from'] != 'gpt':
    return f'the last turn ({len(conversations) - 1}) is a human turn without an answer'
  first = conversations[0]['value'].count(IMAGE_TOKEN)
  if first == 0:
    return f'the first human turn holds no {IMAGE_TOKEN}'
  total = sum(message['value'].count(IMAGE_TOKEN) for message in conversations)
  if total > 1:
    return f'{total} {IMAGE_TOKEN} placeholders; a video record has exactly one'
  return None


def _record_problem(raw: Any) -> str | None:
  if not isinstance(raw, dict):
    return f'a record must be a JSON object, got {type(raw).__name__}'
  missing = [key for key in ('id', 'video', 'conversations') if key not in raw]
  if missing:
    return f'missing key(s) {missing}'
  if not isinstance(raw['id'], (str, int)) or isinstance(raw['id'], bool):
    return f'id must be a string or an integer, got {raw["id"]!r}'
  if not isinstance(raw['video'], str) or not raw['video']:
    return f'video must be a non-empty path string, got {raw["video"]!r}'
  return conversation_problem(raw['conversations'])


def _read_json_records(path: Path) -> list:
  text = path.read_text()
  # JSON lines when named so, or when the file is not one JSON list.
  if path.suffix == '.jsonl' or not text.lstrip().startswith('['):
    records = []
    for line_number, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}: line {line_number} is not valid JSON: {e}') from e
    return records
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON: {e}') from e


def load_annotations(path: str | os.PathLike,
                     video_root: str | os.PathLike | None = None) -> list[VideoRecord]:
  """The validated records of a JSON (list) or JSONL annotation file.

  Args:
    path: the annotation file.
    video_root: the folder the records' `video` paths are relative to; default: the file's folder.

  Raises:
    ValueError: naming the file, and each malformed record's index and id.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f'annotation file {path} does not exist')
  raw_records = _read_json_records(path)
  root = str(Path(video_root) if video_root is not None else path.parent)
  problems = []
  records = []
  for index, raw in enumerate(raw_records):
    problem = _record_problem(raw)
    if problem:
      record_id = raw.get('id') if isinstance(raw, dict) else None
      problems.append(f'record {index} (id {record_id!r}): {problem}')
      continue
    records.append(VideoRecord(id=str(raw['id']), video=raw['video'],
                               conversations=tuple(dict(m) for m in raw['conversations']),
                               video_root=root))
  if problems:
    listed = '\n  '.join(problems[:_MAX_REPORTED])
    more = (f'\n  ... and {len(problems) - _MAX_REPORTED} more'
            if len(problems) > _MAX_REPORTED else '')
    raise ValueError(f'{path}: {len(problems)} malformed record(s) of {len(raw_records)}:\n'
                     f'  {listed}{more}')
  if not records:
    raise ValueError(f'{path} holds no records')
  return records


def sample_records(records: Sequence[VideoRecord], strategy: str,
                   rng: np.random.Generator) -> list[VideoRecord]:
  """The records a sampling strategy keeps, as the reference reads it.

  "all"; "first:N", "end:N", "random:N" (N records); "first:P%", ... (ceil(P% of them)). A random
  subset keeps the file's order (the pipeline shuffles anyway).
  """
  if strategy == 'all':
    return list(records)
  kind, _, amount = strategy.partition(':')
  if kind not in _STRATEGIES or not amount:
    raise ValueError(f'unknown sampling_strategy {strategy!r}; expected "all" or '
                     f'"first|end|random:N" or "first|end|random:P%"')
  try:
    if amount.endswith('%'):
      count = math.ceil(float(amount[:-1]) * len(records) / 100)
    else:
      count = int(amount)
  except ValueError:
    raise ValueError(f'sampling_strategy {strategy!r}: {amount!r} is not a count or a '
                     'percentage') from None
  if count < 0:
    raise ValueError(f'sampling_strategy {strategy!r} asks for a negative number of records')
  count = min(count, len(records))
  if kind == 'first':
    return list(records[:count])
  if kind == 'end':
    return list(records[len(records) - count:])
  chosen = np.sort(rng.choice(len(records), size=count, replace=False))
  return [records[i] for i in chosen]


def load_mixture(path: str | os.PathLike, seed: int = 0) -> list[VideoRecord]:
  """All records a mixture YAML selects, in dataset order (deterministic for a `seed`).

  Relative `json_path`s and `video_root`s resolve against the YAML's folder. Each dataset's
  random sampling draws from its own stream of `seed`, so editing one entry does not change
  what another selects.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f'mixture file {path} does not exist')
  config = yaml.safe_load(path.read_text())
  if not isinstance(config, dict) or not isinstance(config.get('datasets'), list):
    raise ValueError(f'{path}: a mixture file holds "datasets: [{{json_path: ..., '
                     'sampling_strategy: ...}, ...]"')
  if not config['datasets']:
    raise ValueError(f'{path}: "datasets" is empty')
  records = []
  for index, entry in enumerate(config['datasets']):
    where = f'{path}: dataset {index}'
    if not isinstance(entry, dict) or 'json_path' not in entry:
      raise ValueError(f'{where} needs a json_path')
    unknown = set(entry) - _MIXTURE_KEYS
    if unknown:
      raise ValueError(f'{where} has unknown key(s) {sorted(unknown)}; '
                       f'expected {sorted(_MIXTURE_KEYS)}')
    json_path = path.parent / entry['json_path']
    video_root = entry.get('video_root')
    video_root = path.parent / video_root if video_root is not None else None
    rng = np.random.default_rng([seed, index])
    try:
      records += sample_records(load_annotations(json_path, video_root),
                                str(entry.get('sampling_strategy', 'all')), rng)
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from e
  return records
