"""The grain pipeline: shard per host, shuffle, decode in worker processes, bucket-batch.

    source = VideoSource(load_mixture(yaml, seed), tokenizer, num_frames=32, image_size=384)
    dataset = make_pipeline(source, batch_size=8, seed=0, buckets=(1024, 2048, 4096))
    iterator = iter(dataset)
    batch = next(iterator)   # {'input_ids', 'labels', 'frames', 'skipped'} numpy arrays

Per host, in order: `MapDataset.source` -> `shuffle(seed)` (a new permutation each epoch, the
same on every host) -> `repeat(num_epochs)` -> this host's block of every global batch (host h
of P takes records [h*B, (h+1)*B) of each P*B, so a global batch holds the same records in the
same order whatever the number of hosts, and each host decodes only its own) ->
decode + tokenize + label + fit to the largest bucket (lazily, in the worker processes when
`worker_count > 0`, via `mp_prefetch`) -> drop and count skipped records (main process) ->
`batch` with `collate_to_bucket`. Batching happens after `mp_prefetch`, so the batches do not
depend on `worker_count`. A curriculum's earlier `stages` (other sources, each for a number of
global batches) come before the shuffled source, each shuffled and repeated the same way.

Batches: `input_ids`, `labels` int32 [B, L] with L the smallest bucket that holds the batch's
longest text (EOS-padded, SPEC 3), `frames` uint8 [B, N, S, S, 3] (normalise on device with
`vidlada_jax.preprocess.normalize_frames`), and `skipped` int32 [1]: how many records this host
has skipped so far (unreadable videos, texts whose `<image>` a truncation would cut). The count
is kept in the main process, so it is exact whatever the number of workers, and it is part of
the iterator state, so it survives a restore. Each skip is logged with the video's path.

Iterator state. `iterator.get_state()` is a JSON-serialisable dict and `iterator.set_state(s)`
on a fresh iterator of the same pipeline resumes exactly where the saved one stood (the same
batches, the same `skipped` count), with or without worker processes. With orbax (grain 0.2.18,
orbax-checkpoint 0.12.8), either:
  - `orbax.checkpoint.CheckpointManager` with `grain.checkpoint.CheckpointSave(iterator)` /
    `grain.checkpoint.CheckpointRestore(iterator)` (registered with grain's
    `grain.checkpoint.CheckpointHandler`), e.g. inside `ocp.args.Composite(state=..., data=...)`;
    each process writes `process_<i>-of-<n>.json`;
  - or the orbax v1 API (`orbax.checkpoint.experimental.v1`, which `vidlada_jax.orbax_io`
    uses): a grain `DatasetIterator` is a `StatefulCheckpointable` (it has async
    `save(directory)` / `load(directory)`), so `v1.save_checkpointables(path,
    {'data': iterator, ...})` and `v1.load_checkpointables(path, {'data': iterator})`.
Both store `get_state()` as JSON, one file per process. `skipped` is a host-side count: take it
out of the batch before making global device arrays of the rest.

Multi-host with a finite `num_epochs`: hosts may run out after different numbers of batches
(their shards differ by up to one record, and skips differ), so train for a fixed number of
steps on `num_epochs=None` instead.
"""

from __future__ import annotations

import bisect
import functools
import logging
import sys
from typing import Any, Sequence

import grain
import numpy as np
from tokenizers import Tokenizer

from vidlada_jax.config import TokenIds
from vidlada_jax.input_pipeline.annotations import VideoRecord
from vidlada_jax.input_pipeline.chat import collate
from vidlada_jax.input_pipeline.sources import (SKIP_REASON, Example, VideoSource, is_skipped,
                                                skip_marker)

log = logging.getLogger(__name__)

SKIPPED = 'skipped'


def buckets_up_to(max_text_length: int, smallest: int = 256) -> tuple[int, ...]:
  """Doubling text-length buckets from `smallest`, ending exactly at `max_text_length`."""
  if max_text_length < 1 or smallest < 1:
    raise ValueError('bucket lengths must be positive')
  buckets = []
  length = smallest
  while length < max_text_length:
    buckets.append(length)
    length *= 2
  return tuple(buckets) + (max_text_length,)


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
  buckets = tuple(int(b) for b in buckets)
  if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
    raise ValueError(f'buckets must be increasing positive lengths, got {buckets}')
  return buckets


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  raise ValueError(f'{length} tokens do not fit the largest bucket {buckets[-1]}')


def fit_to_length(example: Example, max_length: int,
                  image_id: int = TokenIds().image) -> Example:
  """Truncates a longer text to `max_length` tokens (as the reference truncates to its context),
  or turns it into a skip marker when that would cut out the `<image>` placeholder."""
  if is_skipped(example) or len(example['input_ids']) <= max_length:
    return example
  placeholders = np.flatnonzero(example['input_ids'] == image_id)
  if not placeholders.size or placeholders[-1] >= max_length:
    where = f'token {placeholders[-1]}' if placeholders.size else 'nowhere'
    return skip_marker(
        example['id'],
        f'record {example["id"]!r}: its text is {len(example["input_ids"])} tokens and its '
        f'<image> placeholder is at {where}; truncating it to the largest bucket ({max_length}) '
        'would cut the video out (raise the largest bucket)')
  return {**example, 'input_ids': example['input_ids'][:max_length],
          'labels': example['labels'][:max_length]}


def collate_to_bucket(examples: Sequence[Example], buckets: Sequence[int],
                      pad_id: int = TokenIds().eos) -> dict[str, np.ndarray]:
  """One batch: texts EOS-padded to the smallest bucket that holds the longest (SPEC 3), frames
  stacked, and the host's running `skipped` count as of the batch's last example."""
  length = bucket_length(max(len(e['input_ids']) for e in examples), buckets)
  input_ids, labels = collate([(e['input_ids'], e['labels']) for e in examples], length, pad_id)
  return {'input_ids': input_ids, 'labels': labels,
          'frames': np.stack([e['frames'] for e in examples]),
          SKIPPED: np.asarray([max(e.get(SKIPPED, 0) for e in examples)], np.int32)}


class _DropSkippedIterDataset(grain.IterDataset):
  """Drops skip markers, logging each, and stamps good examples with the running count."""

  def __iter__(self) -> _DropSkippedIterator:
    return _DropSkippedIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return 'DropSkippedIterDataset'


class _DropSkippedIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._skipped = 0

  def __next__(self) -> Example:
    while True:
      example = next(self._parent)
      if not is_skipped(example):
        return {**example, SKIPPED: self._skipped}
      self._skipped += 1
      log.warning('skipped %s (%d skipped on this host so far)', example[SKIP_REASON],
                  self._skipped)

  def get_state(self) -> dict[str, Any]:
    return {'parent': self._parent.get_state(), SKIPPED: self._skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent'])
    self._skipped = int(state[SKIPPED])


def make_pipeline(records_or_source, *, batch_size: int, seed: int, buckets: Sequence[int],
                  num_epochs: int | None = None, worker_count: int = 0,
                  worker_buffer_size: int = 2, read_threads: int = 2, shuffle: bool = True,
                  drop_remainder: bool = True, tokenizer: Tokenizer | None = None,
                  num_frames: int | None = None, image_size: int | None = None,
                  pad_id: int = TokenIds().eos, image_id: int = TokenIds().image,
                  process_index: int | None = None, process_count: int | None = None,
                  stages: Sequence[tuple[Any, int]] = ()) -> grain.IterDataset:
  """This host's training batches, as a grain dataset (`iter()` it for a checkpointable iterator).

  Args:
    records_or_source: a random-access source of examples (`VideoSource`, `ArrayRecordSource`),
      or `VideoRecord`s, decoded with PyAV (then give `tokenizer`, `num_frames`, `image_size`).
    batch_size: examples per batch on this host (the global batch / the process count).
    seed: the shuffle seed (each epoch is permuted differently).
    buckets: increasing text lengths; a batch is padded to the smallest that holds its longest
      text, and longer texts are truncated to the largest, so the train step compiles once per
      bucket. See `buckets_up_to`.
    num_epochs: passes over this host's records; None repeats forever.
    worker_count: processes that decode (0: decode in this process, in `read_threads` threads).
    worker_buffer_size: examples each worker process keeps ready.
    read_threads: threads that decode in each process; each holds about two examples ahead.
    shuffle: False keeps the source's order (evaluation, debugging).
    drop_remainder: drop a last, smaller batch (keeps the batch shape fixed).
    tokenizer, num_frames, image_size: for `VideoRecord` input.
    pad_id, image_id: the EOS padding id and the `<image>` placeholder id.
    process_index, process_count: this host and the number of hosts; default
      `jax.process_index()`, `jax.process_count()`.
    stages: a curriculum's earlier stages, `(source, num_batches)` pairs read in order before
      `records_or_source`: the first `num_batches` global batches come from the first source
      (shuffled and repeated as needed), and so on. `num_epochs` counts the last source's
      passes.
  """
  source = records_or_source
  if isinstance(source, (list, tuple)) and source and isinstance(source[0], VideoRecord):
    if tokenizer is None or num_frames is None or image_size is None:
      raise ValueError('decoding VideoRecords needs tokenizer, num_frames and image_size')
    source = VideoSource(source, tokenizer, num_frames=num_frames, image_size=image_size)
  buckets = _check_buckets(buckets)
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f'num_epochs must be positive or None, got {num_epochs}')
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')

  def ordered(source) -> grain.MapDataset:
    dataset = grain.MapDataset.source(source)
    if len(dataset) < process_count:
      raise ValueError(f'{source!r} has {len(dataset)} records, fewer than the {process_count} '
                       'hosts')
    return dataset.shuffle(seed=seed) if shuffle else dataset

  global_batch = batch_size * process_count
  earlier = []
  for stage_source, num_batches in stages:
    if num_batches < 1:
      raise ValueError(f'a stage must last at least one batch, got {num_batches}')
    earlier.append(ordered(stage_source).repeat(None)[:num_batches * global_batch])
  dataset = ordered(source).repeat(num_epochs)
  if earlier:
    dataset = _Stages([*earlier, dataset])
  dataset = _HostBlocks(dataset, batch_size, process_index, process_count)
  dataset = dataset.map(
      functools.partial(fit_to_length, max_length=buckets[-1], image_id=image_id))
  threads = max(read_threads, 0)
  dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=max(2 * threads, 1)))
  if worker_count > 0:
    _parse_absl_flags_if_unparsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  dataset = _DropSkippedIterDataset(dataset)
  return dataset.batch(batch_size, drop_remainder=drop_remainder,
                       batch_fn=functools.partial(collate_to_bucket, buckets=buckets,
                                                  pad_id=pad_id))


class _HostBlocks(grain.MapDataset):
  """Host `index` of `count` takes the `index`-th block of `block` records out of every
  `count * block`: concatenated in host order, the hosts' batches are the batches one host
  would read, so a run's data do not depend on how many hosts it has."""

  def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
    super().__init__(parent)
    self._block, self._index, self._count = block, index, count

  def __len__(self) -> int:
    full, rest = divmod(len(self._parent), self._block * self._count)
    return full * self._block + min(max(rest - self._index * self._block, 0), self._block)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    group, offset = divmod(index, self._block)
    return self._parent[(group * self._count + self._index) * self._block + offset]

  def __str__(self) -> str:
    return f'HostBlocks(block={self._block}, host={self._index} of {self._count})'


class _Stages(grain.MapDataset):
  """The records of each parent in turn: all but the last are finite (whole global batches),
  the last may repeat forever. Unlike `MapDataset.concatenate` it neither needs a finite last
  parent nor starts the parents over when it is read past its end."""

  def __init__(self, parents: Sequence[grain.MapDataset]):
    super().__init__(list(parents))
    self._starts = np.cumsum([0] + [len(p) for p in parents[:-1]]).tolist()

  def __len__(self) -> int:
    return min(self._starts[-1] + len(self._parents[-1]), sys.maxsize)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    stage = bisect.bisect_right(self._starts, index) - 1
    return self._parents[stage][index - self._starts[stage]]

  def __str__(self) -> str:
    return f'Stages(starts={self._starts})'


def _parse_absl_flags_if_unparsed() -> None:
  """Lets grain's worker processes start in a program that is not an absl app (pytest, scripts).

  grain 0.2.18's `mp_prefetch` reads the absl flag `grain_enable_multiprocess_worker_profiling`
  (once jax is imported) without falling back to its default, which raises
  `UnparsedFlagAccessError` where absl never parsed the command line. Marking the flags parsed
  keeps them all at their defaults; an absl app has parsed them already and is left alone.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
