"""Pre-decoding a training set into ArrayRecord with tensorflow-datasets, without TensorFlow.

Decoding long videos dominates the cost of a training example; doing it once, offline, leaves
the trainer's hosts reading JPEG frames and token ids:

    path = build_array_record_dataset(load_mixture(yaml, seed), tokenizer, data_dir,
                                      num_frames=32, image_size=384)
    source = ArrayRecordSource(path)   # then make_pipeline(source, ...) as for VideoSource

Each example stores what `sources.make_example` gives: the N training frames (resized, as JPEG),
`input_ids` and `labels` (unpadded, labelled as SPEC 3, with the time instruction) and the id.

What tfds 4.9.10 does without TensorFlow: the whole `GeneratorBasedBuilder` path
(`download_and_prepare` with `file_format='array_record'`: example serialisation, the shuffling
writer, dataset_info.json) and reading (`builder_from_directory(...).as_data_source()` and
`tfds.data_source(name, data_dir=...)`, which decode JPEG with PIL) work. The one step that needs
TensorFlow is `tfds.features.Image` encoding a numpy array (it calls `tf.image.encode_jpeg`);
the feature also accepts already-encoded bytes, so frames are JPEG-encoded here with PIL.
The builder is not registered by name (`skip_registration`): `tfds.data_source` then reads the
prepared files without needing this class.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tokenizers import Tokenizer

from vidlada_jax.input_pipeline.annotations import VideoRecord
from vidlada_jax.input_pipeline.chat import PromptFormat
from vidlada_jax.input_pipeline.sources import (SKIP_REASON, encode_jpeg, example_or_skip,
                                                is_skipped)

log = logging.getLogger(__name__)


class VideoFramesConfig(tfds.core.BuilderConfig):
  """How the frames are sampled and stored (part of the dataset's identity on disk)."""

  def __init__(self, *, num_frames: int, image_size: int, jpeg_quality: int = 95,
               name: str | None = None, **kwargs):
    super().__init__(name=name or f'{num_frames}f_{image_size}px', **kwargs)
    self.num_frames = num_frames
    self.image_size = image_size
    self.jpeg_quality = jpeg_quality


class VidladaVideoFrames(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Training examples with their frames pre-decoded (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Frames (JPEG), input_ids, labels, id.'}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10 finds a builder's file through `importlib_resources`, a package it only
    # requires on Python < 3.9, so the lookup fails on ours; this is its own fallback.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, records: Sequence[VideoRecord], tokenizer: Tokenizer,
               config: VideoFramesConfig, prompt: PromptFormat = PromptFormat(), **kwargs):
    self._records = tuple(records)
    self._tokenizer = tokenizer
    self._prompt = prompt
    self._skipped: list[str] = []
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    frame = tfds.features.Image(shape=(config.image_size, config.image_size, 3),
                                encoding_format='jpeg')
    return tfds.core.DatasetInfo(
        builder=self,
        description='VidLaDA training examples: sampled frames, tokens and SPEC 3 labels.',
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'input_ids': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            'labels': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            'frames': tfds.features.Sequence(frame, length=config.num_frames),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    config = self.builder_config
    for index, record in enumerate(self._records):
      example = example_or_skip(record, self._tokenizer, num_frames=config.num_frames,
                                image_size=config.image_size, prompt=self._prompt)
      if is_skipped(example):
        log.warning('skipped %s', example[SKIP_REASON])
        self._skipped.append(record.id)
        self.info.metadata['skipped'] = list(self._skipped)
        continue
      # The index keys the example: ids may repeat across the datasets of a mixture.
      yield index, {'id': example['id'], 'input_ids': example['input_ids'],
                    'labels': example['labels'],
                    'frames': [encode_jpeg(frame, config.jpeg_quality)
                               for frame in example['frames']]}
    self.info.metadata.setdefault('skipped', [])


def build_array_record_dataset(records: Sequence[VideoRecord], tokenizer: Tokenizer,
                               data_dir: str | os.PathLike, *, num_frames: int, image_size: int,
                               jpeg_quality: int = 95, name: str | None = None,
                               prompt: PromptFormat = PromptFormat()) -> Path:
  """Decodes `records` once into an ArrayRecord dataset under `data_dir`; returns its folder.

  Unreadable videos are skipped, logged, and listed (ids) in the dataset's metadata
  (`ArrayRecordSource(path).skipped_when_built`). A dataset already prepared under the same
  name is reused, not rebuilt.
  """
  builder = VidladaVideoFrames(
      records=records, tokenizer=tokenizer, prompt=prompt, data_dir=str(data_dir),
      file_format='array_record',
      config=VideoFramesConfig(num_frames=num_frames, image_size=image_size,
                               jpeg_quality=jpeg_quality, name=name))
  builder.download_and_prepare()
  return Path(builder.data_dir)
