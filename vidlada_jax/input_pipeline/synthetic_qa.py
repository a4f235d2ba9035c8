"""A procedural video-QA task (`synthetic_video_qa`) whose answers can only come from the frames.

Each clip is drawn with numpy on a small dark canvas and asks one of six questions:

  colour_moved_left  three squares; one moves left, the others stay or move right
  count              1-4 still squares of different colours
  appeared_first     three squares appear one after another
  ball_end           a white ball travels to one side: where is it at the end?
  middle_event       a grey square flashes a colour only in the middle frames
  end_event          a grey square flashes a colour only in the last quarter of the clip

The last two are the paper's point about bidirectional attention: the evidence sits in one part
of the clip, so a model has to use all of it. Everything is deterministic from (seed, split,
index), and the splits draw from disjoint seeds.

    builder = build(data_dir, config=SyntheticVideoQaConfig(name='tiny', train_size=12, ...))
    validation = load_split(data_dir, 'validation', config_name='tiny')
    mixture_yaml = export_videos([validation[i] for i in range(6)], root)  # for load_mixture

The builder runs without TensorFlow the way `tfds_builder` does: frames are PNG-encoded with PIL
(lossless, so tests can re-derive answers from exact pixel colours), the builder is not
registered, and `code_path` is overridden.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
import yaml
from etils import epath
from PIL import Image

from vidlada_jax.video import write_video

COLOURS = {'red': (220, 40, 40), 'green': (40, 200, 60), 'blue': (40, 80, 230),
           'yellow': (230, 220, 40), 'purple': (160, 60, 200), 'orange': (240, 140, 20)}
BACKGROUND = (20, 20, 20)
BALL = (255, 255, 255)
NEUTRAL_SQUARE = (128, 128, 128)  # the square of the *_event questions when it is not flashing
SIDES = ('left', 'right', 'top', 'bottom')
LETTERS = 'ABCD'
OPTIONS_INSTRUCTION = "Answer with the option's letter."
SPLIT_NUMBERS = {'train': 0, 'validation': 1, 'test': 2}  # part of each split's seed
DEDUPLICATION_ORDER = ('test', 'validation', 'train')  # the evaluation splits stay as drawn

QUESTIONS = {
    'colour_moved_left': 'Which colour moved left?',
    'count': 'How many objects are there?',
    'appeared_first': 'Which colour appeared first?',
    'ball_end': 'Where is the ball at the end of the video?',
    'middle_event': 'What colour did the square flash?',
    'end_event': 'What colour did the square flash?',
}
QUESTION_TYPES = tuple(QUESTIONS)
# Exported clips play one frame a second: evaluation samples one frame per second (SPEC 6), so it
# reads every frame of a clip, the frames training reads (linspace over all of them).
FPS = 1


# ---------------------------------------------------------------------------------------------
# Drawing

def blank_clip(num_frames: int, size: int) -> np.ndarray:
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  frames[:] = BACKGROUND
  return frames


def draw_ball(frame: np.ndarray, centre_y: float, centre_x: float, radius: float) -> None:
  ys, xs = np.ogrid[:frame.shape[0], :frame.shape[1]]
  frame[(ys - centre_y) ** 2 + (xs - centre_x) ** 2 <= radius ** 2] = BALL


def interpolate(start: float, end: float, frame: int, num_frames: int) -> int:
  return round(start + (end - start) * frame / max(num_frames - 1, 1))


def pick_colours(rng: np.random.Generator, count: int) -> list[str]:
  return [str(c) for c in rng.choice(sorted(COLOURS), size=count, replace=False)]


def colour_options(rng: np.random.Generator, answer: str, also_present: Sequence[str]) -> list[str]:
  """The answer, the other colours in the clip (the hardest distractors), then random ones."""
  distractors = [c for c in also_present if c != answer]
  rest = [c for c in sorted(COLOURS) if c != answer and c not in distractors]
  distractors += [str(c) for c in rng.permutation(rest)]
  return [answer] + distractors[:3]


# Each renderer draws its objects `scale` times their task size (up to what the layout holds):
# the early stages of the demo model's curriculum (configs/demo.py) use big objects, which a
# model learns to find before it learns to find the task's small ones.

def colour_moved_left(rng, num_frames, size, scale=1.0):
  side = min(round(size // 8 * scale), size // 4)  # three lanes hold squares up to size/4
  colours = pick_colours(rng, 3)
  mover = int(rng.integers(3))
  rows = [size // 8, size // 2 - side // 2, size - size // 8 - side]  # one lane each
  frames = blank_clip(num_frames, size)
  motions = []
  for lane, colour in enumerate(colours):
    if lane == mover:
      motions.append((size - side - 2, 2))  # right edge -> left edge
    elif rng.random() < 0.5:
      still = int(rng.integers(2, size - side - 2))
      motions.append((still, still))
    else:
      motions.append((2, size - side - 2))
  for t in range(num_frames):
    for lane, colour in enumerate(colours):
      left = interpolate(*motions[lane], t, num_frames)
      frames[t, rows[lane]:rows[lane] + side, left:left + side] = COLOURS[colour]
  answer = colours[mover]
  return frames, answer, colour_options(rng, answer, colours)


def grid_side(size, scale):
  """The side of the squares in `grid_cells`: size/8, scaled up to a whole cell."""
  return min(round(size // 8 * scale), size // 4)


def grid_cells(rng, count, size, side):
  """`count` distinct cells of a 4x4 grid, as (top, left) of a `side` square centred in each."""
  cell = size // 4
  offset = (cell - side) // 2
  chosen = rng.choice(16, size=count, replace=False)
  return [(int(i) // 4 * cell + offset, int(i) % 4 * cell + offset) for i in chosen]


def count_objects(rng, num_frames, size, scale=1.0):
  count = int(rng.integers(1, 5))
  colours = pick_colours(rng, count)
  side = grid_side(size, scale)
  frames = blank_clip(num_frames, size)
  for (top, left), colour in zip(grid_cells(rng, count, size, side), colours):
    frames[:, top:top + side, left:left + side] = COLOURS[colour]
  return frames, str(count), ['1', '2', '3', '4']


def appeared_first(rng, num_frames, size, scale=1.0):
  colours = pick_colours(rng, 3)
  side = grid_side(size, scale)
  # Appearance frames strictly increase, so exactly one colour is first.
  starts = sorted(int(s) for s in rng.choice(np.arange(0, num_frames * 3 // 4), size=3,
                                                replace=False))
  frames = blank_clip(num_frames, size)
  for (top, left), colour, start in zip(grid_cells(rng, 3, size, side), colours, starts):
    frames[start:, top:top + side, left:left + side] = COLOURS[colour]
  return frames, colours[0], colour_options(rng, colours[0], colours)


def ball_end(rng, num_frames, size, scale=1.0):
  radius = size / 16 * min(scale, 2.0)  # a bigger ball leaves too little room to travel
  answer = str(rng.choice(SIDES))
  near, far, middle = radius + 2, size - 1 - radius - 2, (size - 1) / 2
  wobble = lambda: float(rng.uniform(size * 0.35, size * 0.65))
  end = {'left': (wobble(), near), 'right': (wobble(), far),
         'top': (near, wobble()), 'bottom': (far, wobble())}[answer]
  # It starts near the opposite side or the middle, so where it starts says nothing.
  start = (float(rng.uniform(size * 0.3, size * 0.7)), float(rng.uniform(size * 0.3, size * 0.7)))
  if rng.random() < 0.5:
    start = (2 * middle - end[0], 2 * middle - end[1])
  frames = blank_clip(num_frames, size)
  for t in range(num_frames):
    draw_ball(frames[t], interpolate(start[0], end[0], t, num_frames),
              interpolate(start[1], end[1], t, num_frames), radius)
  return frames, answer, list(SIDES)


def flash_clip(rng, num_frames, size, flash_frames: range, scale=1.0):
  colour = pick_colours(rng, 1)[0]
  side = min(round(size // 4 * scale), size)
  low, high = side // 2, size - side - side // 2  # a margin of half a side
  if high > low:
    top, left = (int(v) for v in rng.integers(low, high, size=2))
  else:  # too big for the margin: centred (at 4x it is the whole frame)
    top = left = (size - side) // 2
  frames = blank_clip(num_frames, size)
  frames[:, top:top + side, left:left + side] = NEUTRAL_SQUARE
  frames[flash_frames.start:flash_frames.stop, top:top + side, left:left + side] = COLOURS[colour]
  return frames, colour, colour_options(rng, colour, [])


def middle_frames(num_frames: int) -> range:
  """Inside the middle half: never in the first or the last quarter of the clip."""
  quarter = num_frames // 4
  return range(quarter + 1, num_frames - quarter - 1)


def last_frames(num_frames: int) -> range:
  return range(num_frames - max(num_frames // 4, 1), num_frames)


def middle_event(rng, num_frames, size, scale=1.0):
  return flash_clip(rng, num_frames, size, middle_frames(num_frames), scale)


def end_event(rng, num_frames, size, scale=1.0):
  return flash_clip(rng, num_frames, size, last_frames(num_frames), scale)


RENDERERS: Mapping[str, Callable] = {
    'colour_moved_left': colour_moved_left, 'count': count_objects,
    'appeared_first': appeared_first, 'ball_end': ball_end,
    'middle_event': middle_event, 'end_event': end_event,
}


def question_type_of(index: int) -> str:
  """The question an example asks follows from its index: every type, evenly."""
  return QUESTION_TYPES[index % len(QUESTION_TYPES)]


def make_example(seed: int, split: str, index: int, *, num_frames: int, size: int,
                 attempt: int = 0, object_scale: float = 1.0) -> dict[str, Any]:
  """One example as numpy/str values (frames [F, size, size, 3] uint8), from its seed alone.

  `attempt` redraws it (see `split_examples`); `object_scale` draws its objects bigger (see the
  renderers).
  """
  rng = np.random.default_rng([seed, SPLIT_NUMBERS[split], index, attempt])
  question_type = question_type_of(index)
  frames, answer, options = RENDERERS[question_type](rng, num_frames, size, object_scale)
  options = [str(o) for o in rng.permutation(options)]
  return {'id': f'{split}_{index:05d}', 'video': frames, 'question': QUESTIONS[question_type],
          'question_type': question_type, 'answer': answer, 'options': options,
          'answer_letter': LETTERS[options.index(answer)],
          'format': 'multiple_choice' if rng.random() < 0.5 else 'free_form'}


def fingerprint(example: Mapping[str, Any]) -> bytes:
  return hashlib.sha1(np.ascontiguousarray(example['video']).tobytes()
                      + example['question'].encode()).digest()


def split_examples(seed: int, split: str, split_sizes: Mapping[str, int], *, num_frames: int,
                   size: int, object_scale: float = 1.0,
                   question_types: Sequence[str] = QUESTION_TYPES) -> Iterator[dict[str, Any]]:
  """The examples of `split`, none with the video and question of an example in another split.

  Disjoint seeds are not enough: some types have few distinct clips (one square of 6 colours in
  16 cells), so at the default sizes a few dozen would repeat across splits. Splits earlier in
  `DEDUPLICATION_ORDER` are kept as drawn; later ones redraw (next `attempt`) any example that
  repeats an earlier split's. Repeats inside one split are allowed. The earlier splits are
  drawn at the task's own object size and with every question type whatever `object_scale` and
  `question_types` are: a split of bigger objects or of some types (a curriculum stage) still
  leaves out the evaluation splits' clips.

  With fewer `question_types`, the split holds the examples of the whole task's split that ask
  them (an example's type follows from its index), as many as `split_sizes` says.
  """
  check_question_types(question_types)
  earlier = DEDUPLICATION_ORDER[:DEDUPLICATION_ORDER.index(split)]
  taken = {fingerprint(example) for other in earlier
           for example in split_examples(seed, other, split_sizes, num_frames=num_frames,
                                         size=size)}
  draw = functools.partial(make_example, seed, split, num_frames=num_frames, size=size)
  indices = (index for index in itertools.count()
             if question_type_of(index) in question_types)
  for index in itertools.islice(indices, split_sizes[split]):
    attempt = 0
    example = draw(index)
    while fingerprint(example) in taken:
      attempt += 1
      example = draw(index, attempt=attempt)
    if object_scale != 1:
      example = draw(index, attempt=attempt, object_scale=object_scale)
    yield example


def check_question_types(question_types: Sequence[str]) -> tuple[str, ...]:
  """`question_types` as a tuple in the task's order; a clear error for unknown or no types."""
  if isinstance(question_types, str):
    question_types = [question_types]
  unknown = sorted(set(question_types) - set(QUESTION_TYPES))
  if unknown or not question_types:
    raise ValueError(f'question_types must name some of {", ".join(QUESTION_TYPES)}; got '
                     f'{", ".join(unknown) if unknown else "none"}')
  return tuple(t for t in QUESTION_TYPES if t in question_types)


# ---------------------------------------------------------------------------------------------
# The tfds builder

def encode_png(frame: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='PNG')
  return buffer.getvalue()


class SyntheticVideoQaConfig(tfds.core.BuilderConfig):
  """Clip length and size, split sizes, the seed, the object scale and the question types (all
  part of the dataset's identity). `object_scale` > 1 draws every split's objects bigger, and
  `question_types` keeps only some types (a curriculum's early stages, see `split_examples`)."""

  def __init__(self, *, name: str, num_frames: int = 16, image_size: int = 64,
               train_size: int = 2000, validation_size: int = 200, test_size: int = 200,
               seed: int = 0, object_scale: float = 1.0,
               question_types: Sequence[str] = QUESTION_TYPES, **kwargs):
    if image_size % 2 or image_size < 32:
      raise ValueError(f'image_size must be even (mp4 export) and >= 32, got {image_size}')
    if num_frames < 8:
      raise ValueError(f'num_frames must be at least 8, got {num_frames}')
    if not object_scale >= 1:
      raise ValueError(f'object_scale must be at least 1, got {object_scale}')
    super().__init__(name=name, **kwargs)
    self.num_frames = num_frames
    self.image_size = image_size
    self.split_sizes = {'train': train_size, 'validation': validation_size, 'test': test_size}
    self.seed = seed
    self.object_scale = float(object_scale)
    self.question_types = check_question_types(question_types)

  def replace(self, **changes) -> SyntheticVideoQaConfig:
    """A copy with some of the constructor's arguments changed (the name stays unless given)."""
    sizes = self.split_sizes
    arguments = dict(name=self.name, num_frames=self.num_frames, image_size=self.image_size,
                     train_size=sizes['train'], validation_size=sizes['validation'],
                     test_size=sizes['test'], seed=self.seed, object_scale=self.object_scale,
                     question_types=self.question_types)
    return SyntheticVideoQaConfig(**{**arguments, **changes})


class SyntheticVideoQa(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Procedural video QA (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Six question types, PNG frames.'}
  BUILDER_CONFIGS = [
      SyntheticVideoQaConfig(name='default', num_frames=16),
      SyntheticVideoQaConfig(name='long', num_frames=32),
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # As in tfds_builder: tfds 4.9.10's lookup needs `importlib_resources`, absent on our Python.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    frame = tfds.features.Image(shape=(config.image_size, config.image_size, 3),
                                encoding_format='png')
    return tfds.core.DatasetInfo(
        builder=self,
        description='Procedural video QA: coloured squares and a ball, six question types.',
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'video': tfds.features.Sequence(frame, length=config.num_frames),
            'question': tfds.features.Text(),
            'question_type': tfds.features.Text(),
            'answer': tfds.features.Text(),
            'options': tfds.features.Sequence(tfds.features.Text(), length=4),
            'answer_letter': tfds.features.Text(),
            'format': tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLIT_NUMBERS}

  def _generate_examples(self, split: str):
    config = self.builder_config
    for example in split_examples(config.seed, split, config.split_sizes,
                                  num_frames=config.num_frames, size=config.image_size,
                                  object_scale=config.object_scale,
                                  question_types=config.question_types):
      example['video'] = [encode_png(frame) for frame in example['video']]
      yield example['id'], example


def named_config(name: str) -> SyntheticVideoQaConfig:
  configs = {config.name: config for config in SyntheticVideoQa.BUILDER_CONFIGS}
  if name not in configs:
    raise ValueError(f'unknown synthetic_video_qa config {name!r}; known: {", ".join(configs)}')
  return configs[name]


def build(data_dir: str | os.PathLike,
          config: SyntheticVideoQaConfig | str = 'default') -> SyntheticVideoQa:
  """Prepares the dataset (ArrayRecord) under `data_dir`, or reuses it; returns the builder."""
  builder = SyntheticVideoQa(data_dir=str(data_dir), config=config, file_format='array_record')
  builder.download_and_prepare()
  return builder


def load_split(data_dir: str | os.PathLike, split: str, config_name: str = 'default'):
  """A random-access data source over a prepared split (frames decoded by tfds with PIL)."""
  return tfds.data_source(f'synthetic_video_qa/{config_name}', data_dir=str(data_dir),
                          split=split)


# ---------------------------------------------------------------------------------------------
# Export for the training pipeline

def as_text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def question_text(example: Mapping[str, Any]) -> str:
  """The question as a user asks it (vidlada_jax.launch.sample, the web page, lmms-eval): the
  question, plus the lettered options and the answer instruction for multiple choice."""
  text = as_text(example['question'])
  if as_text(example['format']) == 'multiple_choice':
    options = [as_text(o) for o in example['options']]
    text += '\n' + '\n'.join(f'{letter}. {o}' for letter, o in zip(LETTERS, options))
    text += '\n' + OPTIONS_INSTRUCTION
  return text


def prompt_text(example: Mapping[str, Any]) -> str:
  """The human turn of the training conversation: the video placeholder, then the question."""
  return '<image>\n' + question_text(example)


def reply_text(example: Mapping[str, Any]) -> str:
  """The training reply: the short answer, or for multiple choice the letter and its option
  ("B. red", which the benchmarks' parser reads as B). Naming the option lets multiple choice
  share what free-form answers teach: the model can fill in the option from the frames and
  then the letter from the prompt's list (README, "The demo model")."""
  if as_text(example['format']) == 'multiple_choice':
    return f'{as_text(example["answer_letter"])}. {as_text(example["answer"])}'
  return as_text(example['answer'])


def export_videos(examples: Iterable[Mapping[str, Any]], root: str | os.PathLike,
                  fps: int = FPS, progress: str | None = None) -> Path:
  """Writes `examples` (from `load_split` or `make_example`) as mp4s + LLaVA-Video-178K JSON.

  Layout: `root/videos/<id>.mp4`, `root/annotations.json`, `root/mixture.yaml`. `progress`, if
  given, labels a progress bar.

  Returns:
    The mixture YAML's path (for `load_mixture`).
  """
  root = Path(root)
  (root / 'videos').mkdir(parents=True, exist_ok=True)
  records = []
  for example in tqdm.tqdm(examples, desc=progress, unit='clip', disable=progress is None):
    video = write_clip(example, root / 'videos', fps).relative_to(root)
    records.append({'id': as_text(example['id']), 'video': str(video), 'conversations': [
        {'from': 'human', 'value': prompt_text(example)},
        {'from': 'gpt', 'value': reply_text(example)}]})
  (root / 'annotations.json').write_text(json.dumps(records, indent=1))
  mixture = root / 'mixture.yaml'
  mixture.write_text(yaml.safe_dump(
      {'datasets': [{'json_path': 'annotations.json', 'sampling_strategy': 'all'}]}))
  return mixture


def write_clip(example: Mapping[str, Any], videos_dir: Path, fps: int) -> Path:
  """The example's frames as `videos_dir/<id>.mp4`."""
  return write_video(videos_dir / f'{as_text(example["id"])}.mp4',
                     np.stack(example['video']).astype(np.uint8, copy=False), fps)


def config_examples(config: SyntheticVideoQaConfig | str, split: str) -> Iterator[dict]:
  """The examples of `split` that `config`'s tfds builder yields, drawn directly (no dataset is
  prepared): a generator, in id order."""
  if isinstance(config, str):
    config = named_config(config)
  return split_examples(config.seed, split, config.split_sizes, num_frames=config.num_frames,
                        size=config.image_size, object_scale=config.object_scale,
                        question_types=config.question_types)


def examples_of(split: str, config: SyntheticVideoQaConfig | str = 'default',
                data_dir: str | os.PathLike | None = None) -> Iterable[Mapping[str, Any]]:
  """`split`'s examples in id order: drawn directly (`config_examples`) without `data_dir`; with
  it, read from the tfds dataset prepared there (a config given as an object, or a named one, is
  prepared first; any other name must have been prepared already)."""
  named = [c.name for c in SyntheticVideoQa.BUILDER_CONFIGS]
  if isinstance(config, str) and config in named:
    config = named_config(config)
  if data_dir is None:
    if isinstance(config, str):
      raise ValueError(f'{config!r} is not a named config ({", ".join(named)}); give the data '
                       'directory it is prepared in')
    return config_examples(config, split)
  if not isinstance(config, str):
    build(data_dir, config)
    config = config.name
  source = load_split(data_dir, split, config)
  return sorted((source[i] for i in range(len(source))), key=lambda e: as_text(e['id']))


def write_clips(examples: Iterable[Mapping[str, Any]], videos_dir: str | os.PathLike,
                fps: int = FPS, progress: str | None = None) -> list[dict]:
  """Writes each example's clip to `videos_dir/<id>.mp4` and returns one record per example:
  id, video (the mp4's absolute path), prompt (`question_text`), question, options, answer,
  answer_letter, question_type, format and num_frames. How evaluations meet the task: as video
  files, read back exactly as a user's."""
  videos_dir = Path(videos_dir).resolve()
  videos_dir.mkdir(parents=True, exist_ok=True)
  records = []
  for example in tqdm.tqdm(examples, desc=progress, unit='clip', disable=progress is None):
    text = {key: as_text(example[key])
            for key in ('id', 'question', 'answer', 'answer_letter', 'question_type', 'format')}
    video = write_clip(example, videos_dir, fps)
    records.append(dict(text, video=str(video), prompt=question_text(example),
                        options=[as_text(o) for o in example['options']],
                        num_frames=len(example['video'])))
  return records


def export_split(root: str | os.PathLike, split: str,
                 config: SyntheticVideoQaConfig | str = 'default', *,
                 progress: bool = True) -> Path:
  """Writes one split of the task straight to mp4s + annotations (`export_videos`) without
  preparing the tfds dataset: the same examples its builder yields (`split_examples`), for
  training on the decoded-video path. Returns the mixture YAML's path."""
  if isinstance(config, str):
    config = named_config(config)
  examples = config_examples(config, split)
  label = f'synthetic_video_qa/{config.name} {split}'
  if config.object_scale != 1:
    label += f' (objects x{config.object_scale:g})'
  if config.question_types != QUESTION_TYPES:
    label += f' ({", ".join(config.question_types)})'
  return export_videos(examples, root, progress=label if progress else None)
