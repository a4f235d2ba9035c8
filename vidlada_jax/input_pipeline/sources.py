"""Random-access sources of training examples: decoded on the fly, or read from ArrayRecord.

Both are grain data sources (`__len__`, `__getitem__`) and give the same example dict:

    {'input_ids': int32[n], 'labels': int32[n], 'frames': uint8[N, S, S, 3], 'id': str}

`input_ids` and `labels` are one conversation labelled as SPEC 3 (the `<image>` is the -200
placeholder, unpadded); `frames` are the N training frames at linspace(0, total - 1, N) (SPEC 6),
resized to S x S with PIL bicubic and kept uint8 (`preprocess.normalize_frames` finishes them on
device).

A video that cannot be read gives instead a *skip marker* `{'id': ..., 'skip_reason': ...}`
(see `is_skipped`): a source never raises for bad data, so one corrupt file cannot stop a run;
the pipeline drops, logs and counts the markers.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import av
import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from vidlada_jax.input_pipeline.annotations import VideoRecord
from vidlada_jax.input_pipeline.chat import (PromptFormat, sft_example, time_instruction,
                                             with_no_think, with_time_instruction)
from vidlada_jax.preprocess import resize_frames
from vidlada_jax.video import Clip, read_video

Example = dict[str, Any]
SKIP_REASON = 'skip_reason'

# What reading a bad video raises: missing file, unreadable or truncated container (VideoError is
# a ValueError), and decoder errors PyAV does not wrap.
_BAD_VIDEO_ERRORS = (OSError, ValueError, EOFError, av.FFmpegError)


def is_skipped(example: Example) -> bool:
  return SKIP_REASON in example


def skip_marker(record_id: str, reason: str) -> Example:
  return {'id': record_id, SKIP_REASON: reason}


def make_example(record: VideoRecord, tokenizer: Tokenizer, *, num_frames: int, image_size: int,
                 prompt: PromptFormat = PromptFormat()) -> Example:
  """The training example of one record: its frames decoded and resized, its conversation
  (by default with the time instruction, as the reference trains) tokenized and labelled.

  Raises what reading the video raises (see `example_or_skip`).
  """
  return _example(record, read_video(record.video_path, num_frames, training=True), tokenizer,
                  image_size=image_size, prompt=prompt)


def example_or_skip(record: VideoRecord, tokenizer: Tokenizer, *, num_frames: int,
                    image_size: int, prompt: PromptFormat = PromptFormat()) -> Example:
  """`make_example`, or a skip marker naming the video and the error if it cannot be read."""
  try:
    clip = read_video(record.video_path, num_frames, training=True)
  except _BAD_VIDEO_ERRORS as e:
    return skip_marker(record.id, f'video {record.video_path} of record {record.id!r}: '
                                  f'{type(e).__name__}: {e}')
  return _example(record, clip, tokenizer, image_size=image_size, prompt=prompt)


def _example(record: VideoRecord, clip: Clip, tokenizer: Tokenizer, *, image_size: int,
             prompt: PromptFormat) -> Example:
  conversation = record.conversations
  if prompt.time_instruction:
    conversation = with_time_instruction(conversation,
                                         time_instruction(clip.duration_s, clip.times_s))
  if prompt.no_think:
    conversation = with_no_think(conversation)
  input_ids, labels = sft_example(tokenizer, conversation, system=prompt.system,
                                  tokens=prompt.tokens)
  return {'input_ids': input_ids, 'labels': labels,
          'frames': resize_frames(clip.frames, image_size), 'id': record.id}


class VideoSource:
  """Examples decoded on the fly with PyAV from each record's `video_root / video`.

  Picklable (records, settings and the tokenizer, which pickles through its JSON form), so grain
  can ship it to worker processes.
  """

  def __init__(self, records: Sequence[VideoRecord], tokenizer: Tokenizer, *, num_frames: int,
               image_size: int, prompt: PromptFormat = PromptFormat()):
    if num_frames < 1 or image_size < 1:
      raise ValueError(f'num_frames and image_size must be positive, got {num_frames}, '
                       f'{image_size}')
    self.records = tuple(records)
    self.tokenizer = tokenizer
    self.num_frames = num_frames
    self.image_size = image_size
    self.prompt = prompt

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> Example:
    return example_or_skip(self.records[index], self.tokenizer, num_frames=self.num_frames,
                           image_size=self.image_size, prompt=self.prompt)

  def __repr__(self) -> str:
    return (f'VideoSource({len(self)} records, {self.num_frames} frames at '
            f'{self.image_size}px)')


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
  """One uint8 RGB frame as JPEG bytes (4:4:4 chroma: small frames keep their colour edges)."""
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='JPEG', quality=quality, subsampling=0)
  return buffer.getvalue()


class ArrayRecordSource:
  """Examples pre-decoded into ArrayRecord by `tfds_builder.build_array_record_dataset`.

  Read with `tfds.builder_from_directory(path).as_data_source()`, which needs no TensorFlow:
  tfds decodes the stored JPEG frames with PIL. Bad videos were dropped (and listed in the
  dataset's metadata) when it was built, so this source gives no skip markers.
  """

  def __init__(self, path: str | os.PathLike, split: str = 'train'):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.path = Path(path)
    builder = tfds.builder_from_directory(str(self.path))
    self._source = builder.as_data_source(split=split)
    frames = builder.info.features['frames']
    self.num_frames = frames.shape[0]
    self.image_size = frames.shape[1]
    self.skipped_when_built = list(builder.info.metadata.get('skipped', []))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Example:
    stored = self._source[index]
    record_id = stored['id']
    return {'input_ids': np.asarray(stored['input_ids'], np.int32),
            'labels': np.asarray(stored['labels'], np.int32),
            'frames': np.stack(stored['frames']).astype(np.uint8, copy=False),
            'id': record_id.decode() if isinstance(record_id, bytes) else str(record_id)}

  def __repr__(self) -> str:
    return f'ArrayRecordSource({self.path}, {len(self)} examples)'
