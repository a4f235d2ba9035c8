"""VidLaDA's training data: annotations -> examples -> grain batches.

  annotations   LLaVA-Video-178K records and mixture YAMLs (`load_annotations`, `load_mixture`)
  chat          the chat template and SPEC 3 labels (`sft_example`, `collate`, `video_question`)
  sources       examples decoded with PyAV (`VideoSource`) or read from ArrayRecord
                (`ArrayRecordSource`)
  tfds_builder  pre-decoding a training set into ArrayRecord (`build_array_record_dataset`)
  pipeline      the grain pipeline (`make_pipeline`): per-host shard, shuffle, worker processes,
                bucketed batches, checkpointable iterator state
  synthetic     small moving-square clips for tests and the tiny config (`write_synthetic_dataset`)
  synthetic_qa  the procedural video-QA task `synthetic_video_qa` (a tfds builder; `export_split`
                writes a split as mp4s for training)

Names are imported on first use, so `from vidlada_jax.input_pipeline.chat import ...` (the
inference CLI) does not import grain or tensorflow-datasets.
"""

import importlib

_EXPORTS = {
    'VideoRecord': 'annotations',
    'load_annotations': 'annotations',
    'load_mixture': 'annotations',
    'sample_records': 'annotations',
    'IGNORE': 'chat',
    'PromptFormat': 'chat',
    'SYSTEM_PROMPT': 'chat',
    'collate': 'chat',
    'render_chat': 'chat',
    'sft_example': 'chat',
    'time_instruction': 'chat',
    'video_question': 'chat',
    'with_no_think': 'chat',
    'with_time_instruction': 'chat',
    'ArrayRecordSource': 'sources',
    'VideoSource': 'sources',
    'example_or_skip': 'sources',
    'is_skipped': 'sources',
    'make_example': 'sources',
    'build_array_record_dataset': 'tfds_builder',
    'bucket_length': 'pipeline',
    'buckets_up_to': 'pipeline',
    'collate_to_bucket': 'pipeline',
    'fit_to_length': 'pipeline',
    'make_pipeline': 'pipeline',
    'write_synthetic_dataset': 'synthetic',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
