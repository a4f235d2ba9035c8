"""From a job's `data` section to global device batches for the train step.

The `data` section:

    source          'mixture' (a mixture YAML of LLaVA-Video-178K annotation files, decoded on
                    the fly with PyAV), 'array_record' (a pre-decoded set written by
                    `input_pipeline.build_array_record_dataset`), 'synthetic' (moving-square
                    clips generated into the work directory, for the tiny configs and tests), or
                    'synthetic_video_qa' (the train split of that task, written as mp4s into the
                    work directory and decoded like any mixture)
    mixture         the mixture YAML ('mixture')
    array_record    the pre-decoded set's directory ('array_record')
    synthetic_clips clips to generate ('synthetic')
    video_qa        {config, train_size, object_scale, question_types} of the task's builder
                    config ('synthetic_video_qa')
    tokenizer       a tokenizer.json or checkpoint directory, or 'tiny' / 'demo'
                    (`fixtures.tiny_tokenizer`, `fixtures.demo_tokenizer`)
    system, time_instruction, no_think
                    how conversations become prompts (`input_pipeline.chat.PromptFormat`;
                    default: as the reference trains)
    num_frames      frames per video (SPEC 6: linspace over the video)
    buckets         text lengths a batch is padded to (the step compiles once per bucket)
    worker_count    decoding processes per host (grain); 0 decodes in the training process
    seed            shuffle seed (default: the train seed)
    stages          a curriculum's earlier stages: dicts of `steps` and the keys of this section
                    that change for those steps (e.g. `video_qa.object_scale`), read in order
                    before the section itself, which serves the rest of the run
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from vidlada_jax import fixtures, input_pipeline, prompting
from vidlada_jax.config import ModelConfig
from vidlada_jax.training.train_step import batch_shardings

SOURCES = ('mixture', 'array_record', 'synthetic', 'synthetic_video_qa')
NAMED_TOKENIZERS = {'tiny': fixtures.tiny_tokenizer, 'demo': fixtures.demo_tokenizer}


def load_tokenizer(data: dict[str, Any], workdir: Path):
  """A resumed run keeps the tokenizer it started with (saved in its work directory)."""
  saved = Path(workdir) / 'tokenizer.json'
  if saved.exists():
    return prompting.load_tokenizer(saved)
  name = data.get('tokenizer', 'tiny')
  if name in NAMED_TOKENIZERS:
    return NAMED_TOKENIZERS[name]()
  return prompting.load_tokenizer(name)


def make_iterator(data: dict[str, Any], tokenizer, model: ModelConfig, *, per_host_batch: int,
                  seed: int, workdir: Path):
  """This host's checkpointable batch iterator (a grain `DatasetIterator`)."""
  if model.vision is None:
    raise ValueError('training needs a model with a vision tower (the data are videos)')
  stages = []
  for number, stage in enumerate(data.get('stages') or ()):
    stage = dict(stage)
    if int(stage.get('steps') or 0) < 1:
      raise ValueError(f'config.data.stages[{number}] needs a positive `steps`, got {stage}')
    stages.append((_source(merged(data, stage), tokenizer, model, seed=seed, workdir=workdir),
                   int(stage['steps'])))
  dataset = input_pipeline.make_pipeline(
      _source(data, tokenizer, model, seed=seed, workdir=workdir), stages=stages,
      batch_size=per_host_batch, seed=int(data.get('seed', seed)),
      buckets=tuple(data['buckets']), worker_count=int(data.get('worker_count', 0)),
      pad_id=model.tokens.eos, image_id=model.tokens.image)
  return iter(dataset)


def merged(data: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
  """The data section with a stage's keys in place (nested sections merged key by key)."""
  out = {k: v for k, v in data.items() if k != 'stages'}
  for key, value in stage.items():
    if key == 'steps':
      continue
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      value = {**out[key], **value}
    out[key] = value
  return out


def _source(data: dict[str, Any], tokenizer, model: ModelConfig, *, seed: int, workdir: Path):
  """The random-access source one data section describes."""
  source_kind = data.get('source', 'mixture')
  if source_kind not in SOURCES:
    raise ValueError(f'config.data.source must be one of {SOURCES}, got {source_kind!r}')
  if source_kind == 'array_record':
    return input_pipeline.ArrayRecordSource(data['array_record'])
  num_frames = int(data['num_frames'])
  if source_kind == 'synthetic':
    mixture = _synthetic_mixture(data, Path(workdir), num_frames, seed)
  elif source_kind == 'synthetic_video_qa':
    mixture = _synthetic_video_qa_mixture(data, Path(workdir))
  else:
    mixture = data['mixture']
  records = input_pipeline.load_mixture(mixture, seed=int(data.get('seed', seed)))
  defaults = input_pipeline.PromptFormat()
  prompt = input_pipeline.PromptFormat(
      system=data.get('system') or defaults.system,
      time_instruction=bool(data.get('time_instruction', defaults.time_instruction)),
      no_think=bool(data.get('no_think', defaults.no_think)), tokens=model.tokens)
  return input_pipeline.VideoSource(records, tokenizer, num_frames=num_frames,
                                    image_size=model.vision.image_size, prompt=prompt)


def common_text_length(host: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
  """Hosts pad their rows to their own bucket; a global batch needs one length: the longest
  host's (one small all-gather per step, only on multi-host runs)."""
  if jax.process_count() == 1:
    return host
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  length = host['input_ids'].shape[1]
  longest = int(np.max(multihost_utils.process_allgather(np.int32(length))))
  if longest == length:
    return host
  pad = ((0, 0), (0, longest - length))
  return dict(host, input_ids=np.pad(host['input_ids'], pad, constant_values=pad_id),
              labels=np.pad(host['labels'], pad, constant_values=pad_id))


def _synthetic_mixture(data: dict[str, Any], workdir: Path, num_frames: int, seed: int) -> Path:
  """Generated clips in the work directory: written once (by the first process), reused when
  the run resumes."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  root = workdir / 'synthetic_data'
  mixture = root / 'mixture.yaml'
  if jax.process_index() == 0 and not mixture.exists():
    input_pipeline.write_synthetic_dataset(
        root, int(data.get('synthetic_clips') or 64),
        num_frames_in_video=int(data.get('synthetic_video_frames') or 2 * num_frames),
        seed=int(data.get('seed', seed)))
  multihost_utils.sync_global_devices('vidlada_synthetic_data')
  return mixture


def _synthetic_video_qa_mixture(data: dict[str, Any], workdir: Path) -> Path:
  """The task's train split as mp4s in the work directory: written once (by the first
  process), reused when the run resumes. Each variant (train size, object scale) has its own
  directory."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from vidlada_jax.input_pipeline import synthetic_qa  # pylint: disable=g-import-not-at-top

  task = dict(data.get('video_qa') or {})
  unknown = set(task) - {'config', 'train_size', 'object_scale', 'question_types'}
  if unknown:
    raise ValueError(f'config.data.video_qa takes config, train_size, object_scale and '
                     f'question_types; unknown: {", ".join(sorted(unknown))}')
  named = synthetic_qa.named_config(task.get('config', 'default'))
  question_types = task.get('question_types') or synthetic_qa.QUESTION_TYPES
  if isinstance(question_types, str):  # from the command line: "count,ball_end"
    question_types = [t.strip() for t in question_types.split(',')]
  config = named.replace(train_size=int(task.get('train_size') or named.split_sizes['train']),
                         object_scale=float(task.get('object_scale') or 1),
                         question_types=tuple(question_types))
  variant = f'{config.name}-train{config.split_sizes["train"]}-x{config.object_scale:g}'
  if config.question_types != synthetic_qa.QUESTION_TYPES:
    variant += '-' + '+'.join(config.question_types)
  root = workdir / 'synthetic_video_qa' / variant
  mixture = root / 'mixture.yaml'
  if jax.process_index() == 0 and not mixture.exists():
    synthetic_qa.export_split(root, 'train', config)
  multihost_utils.sync_global_devices('vidlada_synthetic_video_qa')
  return mixture


def device_batch(host: dict[str, np.ndarray], mesh: Mesh, rules, train, *,
                 pad_id: int) -> dict[str, jax.Array]:
  """This host's rows of a global batch -> global arrays [accumulation, micro_batch, ...],
  each process placing only its own rows."""
  accumulation = train.accumulation
  shardings = batch_shardings(mesh, rules)
  host = common_text_length(host, pad_id)
  out = {}
  for key in shardings:
    local = np.asarray(host[key])
    if local.shape[0] % accumulation:
      raise ValueError(f'{local.shape[0]} rows per host do not split into {accumulation} '
                       'micro-batches')
    # Row g goes to micro-batch g % accumulation: with each host holding a block of the global
    # batch, which sequences share a micro-batch (and its random draws) is then the same
    # whatever the number of hosts.
    local = np.ascontiguousarray(np.swapaxes(
        local.reshape(local.shape[0] // accumulation, accumulation, *local.shape[1:]), 0, 1))
    global_shape = (accumulation, train.micro_batch, *local.shape[2:])
    out[key] = jax.make_array_from_process_local_data(shardings[key], local, global_shape)
  return out
