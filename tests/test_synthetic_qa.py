"""The procedural video-QA dataset: determinism, disjoint splits, answers that follow from the
pixels (re-derived here independently of the renderer), export for the training pipeline, and
no TensorFlow. Tiny splits (12/6/6, 16 frames of 64 px) keep it to a few seconds."""

import json
import sys

import numpy as np
import pytest

from vidlada_jax import evaluation
from vidlada_jax.fixtures import tiny_tokenizer
from vidlada_jax.input_pipeline import annotations, chat, sources
from vidlada_jax.input_pipeline import synthetic_qa as qa

TINY = dict(name='tiny', train_size=12, validation_size=6, test_size=6, seed=3)
SIZE = 64


def text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def read_split(data_dir, split):
  """Every example of a split as plain Python values, ordered by id (tfds shuffles the files)."""
  source = qa.load_split(data_dir, split, config_name=TINY['name'])
  examples = []
  for index in range(len(source)):
    stored = source[index]
    example = {key: text(value) for key, value in stored.items()
               if key not in ('video', 'options')}
    example['options'] = [text(o) for o in stored['options']]
    example['video'] = np.stack(stored['video']).astype(np.uint8)
    examples.append(example)
  return sorted(examples, key=lambda e: e['id'])


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('synthetic_qa')
  qa.build(data_dir, qa.SyntheticVideoQaConfig(**TINY))
  return data_dir


@pytest.fixture(scope='module')
def splits(built):
  return {split: read_split(built, split) for split in ('train', 'validation', 'test')}


def test_no_tensorflow_is_imported(splits):
  assert len(splits['train']) == 12
  assert 'tensorflow' not in sys.modules


def test_building_twice_gives_identical_examples(splits, tmp_path):
  qa.build(tmp_path, qa.SyntheticVideoQaConfig(**TINY))
  again = read_split(tmp_path, 'validation')
  assert [e['id'] for e in again] == [e['id'] for e in splits['validation']]
  for first, second in zip(splits['validation'], again):
    np.testing.assert_array_equal(first['video'], second['video'])
    assert {k: v for k, v in first.items() if k != 'video'} == \
        {k: v for k, v in second.items() if k != 'video'}


def test_splits_are_disjoint(splits):
  seen = {}
  for split, examples in splits.items():
    for example in examples:
      key = (example['video'].tobytes(), example['question'])
      assert key not in seen, f'{example["id"]} ({split}) repeats {seen.get(key)}'
      seen[key] = (split, example['id'])


def test_every_type_appears_and_answers_match_options(splits):
  train = splits['train']
  assert {e['question_type'] for e in train} == set(qa.QUESTION_TYPES)
  assert {e['format'] for e in train} == {'multiple_choice', 'free_form'}
  for example in train + splits['validation'] + splits['test']:
    assert len(example['options']) == 4 and len(set(example['options'])) == 4
    assert example['answer'] in example['options']
    assert example['options'][qa.LETTERS.index(example['answer_letter'])] == example['answer']
    assert example['video'].shape == (16, SIZE, SIZE, 3)
  # The answer's position is shuffled, not always first.
  assert len({e['answer_letter'] for e in train}) > 1


# Re-deriving answers from the pixels: exact colours (PNG is lossless), no renderer code.

def colour_name(rgb):
  return {tuple(v): k for k, v in qa.COLOURS.items()}.get(tuple(int(c) for c in rgb))


def colours_in(frame):
  found = {colour_name(rgb) for rgb in np.unique(frame.reshape(-1, 3), axis=0)}
  return found - {None}


def centre_x(frame, colour):
  ys, xs = np.nonzero(np.all(frame == qa.COLOURS[colour], axis=-1))
  return xs.mean()


def frames_showing(video, colour):
  return [t for t, frame in enumerate(video) if np.all(frame == qa.COLOURS[colour], axis=-1).any()]


def examples_of(splits, question_type):
  found = [e for examples in splits.values() for e in examples
           if e['question_type'] == question_type]
  assert found
  return found


def test_count_is_the_number_of_coloured_blobs(splits):
  for example in examples_of(splits, 'count'):
    for frame in (example['video'][0], example['video'][-1]):
      assert str(len(colours_in(frame))) == example['answer']


def test_ball_ends_nearest_the_answered_side(splits):
  for example in examples_of(splits, 'ball_end'):
    ys, xs = np.nonzero(np.all(example['video'][-1] == qa.BALL, axis=-1))
    y, x = ys.mean(), xs.mean()
    distances = {'left': x, 'right': SIZE - 1 - x, 'top': y, 'bottom': SIZE - 1 - y}
    assert min(distances, key=distances.get) == example['answer']


def test_the_square_that_moved_left_is_the_answer(splits):
  for example in examples_of(splits, 'colour_moved_left'):
    first, last = example['video'][0], example['video'][-1]
    moved_left = [c for c in colours_in(first) if centre_x(last, c) < centre_x(first, c) - 4]
    assert moved_left == [example['answer']]


def test_the_colour_that_appeared_first_is_the_answer(splits):
  for example in examples_of(splits, 'appeared_first'):
    appearances = {c: frames_showing(example['video'], c)[0]
                   for c in colours_in(example['video'][-1])}
    assert min(appearances, key=appearances.get) == example['answer']
    assert sorted(appearances.values()) == sorted(set(appearances.values()))  # no tie


def test_middle_event_evidence_is_only_in_the_middle(splits):
  for example in examples_of(splits, 'middle_event'):
    num_frames = len(example['video'])
    shown = frames_showing(example['video'], example['answer'])
    assert shown
    assert min(shown) >= num_frames // 4 and max(shown) < num_frames - num_frames // 4
    # No other colour appears anywhere: the flash is the only evidence.
    assert set().union(*(colours_in(f) for f in example['video'])) == {example['answer']}


def test_end_event_evidence_is_only_in_the_last_quarter(splits):
  for example in examples_of(splits, 'end_event'):
    num_frames = len(example['video'])
    shown = frames_showing(example['video'], example['answer'])
    assert shown and min(shown) >= num_frames - num_frames // 4 and max(shown) == num_frames - 1


def test_long_config_renders_longer_clips():
  example = qa.make_example(0, 'train', 4, num_frames=32, size=SIZE)  # middle_event
  assert example['video'].shape == (32, SIZE, SIZE, 3)
  shown = frames_showing(example['video'], example['answer'])
  assert 8 <= min(shown) and max(shown) < 24
  assert [c.name for c in qa.SyntheticVideoQa.BUILDER_CONFIGS] == ['default', 'long']


def test_exported_clips_load_into_training_examples(splits, tmp_path):
  chosen = splits['validation']
  mixture = qa.export_videos(chosen, tmp_path)
  records = annotations.load_mixture(mixture)
  assert [r.id for r in records] == [e['id'] for e in chosen]
  stored = json.loads((tmp_path / 'annotations.json').read_text())
  for record, example in zip(stored, chosen):
    human, gpt = record['conversations']
    assert human['value'].startswith('<image>\n' + example['question'])
    if example['format'] == 'multiple_choice':
      assert 'A. ' in human['value'] and human['value'].endswith(qa.OPTIONS_INSTRUCTION)
      # The letter and its option, which the benchmarks' parser reads as the letter.
      assert gpt['value'] == f"{example['answer_letter']}. {example['answer']}"
      assert evaluation.parse_multiple_choice(gpt['value']) == example['answer_letter']
    else:
      assert gpt['value'] == example['answer']
  source = sources.VideoSource(records, tiny_tokenizer(), num_frames=8, image_size=32)
  for index in range(len(source)):
    example = source[index]
    assert not sources.is_skipped(example)
    assert example['frames'].shape[0] == 8
    assert len(example['input_ids']) == len(example['labels'])
    assert (np.asarray(example['labels']) != chat.IGNORE).any()


def test_default_sizes_give_disjoint_splits():
  # Without the redraws, about 36 clips (mostly one-square `count`) would repeat across splits.
  sizes = qa.SyntheticVideoQaConfig(name='sizes').split_sizes
  owners, total = {}, 0
  for split in ('train', 'validation', 'test'):
    for example in qa.split_examples(0, split, sizes, num_frames=16, size=SIZE):
      owners.setdefault(qa.fingerprint(example), set()).add(split)
      total += 1
  assert total == 2000 + 200 + 200
  assert all(len(splits_) == 1 for splits_ in owners.values())


def test_config_replace_changes_only_what_it_names():
  long = qa.named_config('long')
  smaller = long.replace(train_size=5, object_scale=2)
  assert (smaller.name, smaller.num_frames, smaller.image_size, smaller.seed) == (
      'long', 32, long.image_size, long.seed)
  assert smaller.split_sizes == {**long.split_sizes, 'train': 5}
  assert smaller.object_scale == 2 and long.object_scale == 1 and long.split_sizes['train'] != 5


@pytest.mark.parametrize('scale', [2, 4])
def test_bigger_objects_keep_the_layout_and_answers_that_follow_from_the_pixels(scale):
  sizes = {'train': 24, 'validation': 6, 'test': 6}
  draw = lambda s: list(qa.split_examples(3, 'train', sizes, num_frames=16, size=SIZE,
                                          object_scale=s))
  scaled, plain = draw(scale), draw(1)
  checks = (test_count_is_the_number_of_coloured_blobs, test_ball_ends_nearest_the_answered_side,
            test_the_square_that_moved_left_is_the_answer,
            test_the_colour_that_appeared_first_is_the_answer,
            test_middle_event_evidence_is_only_in_the_middle,
            test_end_event_evidence_is_only_in_the_last_quarter)
  for check in checks:
    check({'train': scaled})
  for big, small in zip(scaled, plain):
    assert (big['id'], big['question_type'], big['answer']) == (
        small['id'], small['question_type'], small['answer'])
    painted = lambda e: np.any(e['video'] != qa.BACKGROUND, axis=-1).sum()
    assert painted(big) > 1.9 * painted(small), big['question_type']
  flashes = [e for e in scaled if e['question_type'].endswith('_event')]
  if scale == 4:  # the flash fills the frame
    assert all(np.all(e['video'][-1] == qa.COLOURS[e['answer']]) for e in flashes
               if e['question_type'] == 'end_event')
  with pytest.raises(ValueError, match='object_scale must be at least 1'):
    qa.SyntheticVideoQaConfig(name='smaller', object_scale=0.5)


def test_a_training_curriculum_reads_its_big_object_stage_first(tmp_path):
  from vidlada_jax.config import model_config
  from vidlada_jax.fixtures import demo_tokenizer
  from vidlada_jax.training import data as data_lib

  data = dict(source='synthetic_video_qa', video_qa=dict(config='default', train_size=12),
              stages=(dict(steps=1, video_qa=dict(object_scale=4.0, train_size=6)),),
              tokenizer='demo', num_frames=16, buckets=(112,), worker_count=0,
              time_instruction=False, no_think=True)
  assert data_lib.merged(data, data['stages'][0])['video_qa'] == dict(
      config='default', train_size=6, object_scale=4.0)
  iterator = data_lib.make_iterator(data, demo_tokenizer(), model_config('demo'),
                                    per_host_batch=6, seed=0, workdir=tmp_path)
  painted = lambda batch: int((np.abs(batch['frames'].astype(int) - qa.BACKGROUND).max(-1)
                               > 30).sum())
  stage, task = next(iterator), next(iterator)
  assert painted(stage) > 2 * painted(task)
  assert sorted(p.name for p in (tmp_path / 'synthetic_video_qa').iterdir()) == [
      'default-train12-x1', 'default-train6-x4']
  with pytest.raises(ValueError, match=r'stages\[0\] needs a positive `steps`'):
    data_lib.make_iterator(dict(data, stages=(dict(video_qa=dict(object_scale=2.0)),)),
                           demo_tokenizer(), model_config('demo'), per_host_batch=6, seed=0,
                           workdir=tmp_path)


def test_question_types_select_the_whole_splits_examples_of_those_types():
  sizes = {'train': 10, 'validation': 6, 'test': 6}
  chosen = ('count', 'end_event')
  some = list(qa.split_examples(2, 'train', sizes, num_frames=16, size=SIZE,
                                question_types=chosen))
  assert len(some) == 10 and {e['question_type'] for e in some} == set(chosen)
  whole = {e['id']: e for e in qa.split_examples(2, 'train', dict(sizes, train=36),
                                                 num_frames=16, size=SIZE)}
  for example in some:  # the same example (redraws included) as in the whole split
    same = whole[example['id']]
    assert example['question'] == same['question'] and example['answer'] == same['answer']
    np.testing.assert_array_equal(example['video'], same['video'])
  config = qa.SyntheticVideoQaConfig(name='flash', question_types=['end_event', 'middle_event'])
  assert config.question_types == ('middle_event', 'end_event')  # the task's order
  assert config.replace(train_size=3).question_types == config.question_types
  with pytest.raises(ValueError, match='question_types must name some of .*; got colour'):
    qa.SyntheticVideoQaConfig(name='bad', question_types=['colour', 'count'])
  with pytest.raises(ValueError, match='got none'):
    qa.SyntheticVideoQaConfig(name='bad', question_types=[])


def test_a_curriculum_stage_can_train_some_question_types(tmp_path):
  import json as json_lib
  from vidlada_jax.training import data as data_lib

  data = dict(video_qa=dict(train_size=4, question_types='middle_event, end_event'))
  mixture = data_lib._synthetic_video_qa_mixture(data, tmp_path)
  assert mixture.parent.name == 'default-train4-x1-middle_event+end_event'
  records = json_lib.loads((mixture.parent / 'annotations.json').read_text())
  assert len(records) == 4
  assert all(qa.QUESTIONS['middle_event'] in r['conversations'][0]['value'] for r in records)
  with pytest.raises(ValueError, match='unknown: frames'):
    data_lib._synthetic_video_qa_mixture(dict(video_qa=dict(frames=3)), tmp_path)
