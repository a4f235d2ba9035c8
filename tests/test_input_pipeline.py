"""The training input pipeline: chat template and SPEC 3 labels, annotations and mixtures, frames
(SPEC 6), bucketed batches, shuffling, per-host shards, checkpointable state, bad data, and the
ArrayRecord (tfds) source. Small synthetic clips (64 px, 12 frames at 4 fps) keep it fast."""

import json
import pickle
import sys

import av
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.experimental import v1 as ocp_v1
import pytest
import yaml
from PIL import Image

from vidlada_jax import prompting
from vidlada_jax.config import TokenIds
from vidlada_jax.fixtures import tiny_tokenizer
from vidlada_jax.input_pipeline import annotations, chat, pipeline, sources, synthetic
from vidlada_jax.input_pipeline.tfds_builder import build_array_record_dataset
from vidlada_jax.preprocess import normalize_frames, preprocess_frames, resize_frames

T = TokenIds()
IGNORE = chat.IGNORE
FRAMES_IN_VIDEO, FPS = 12, 4  # synthetic clips: 3.00 s
NUM_FRAMES, IMAGE_SIZE = 5, 28  # what the pipeline samples


@pytest.fixture(scope='module')
def tokenizer():
  return tiny_tokenizer()


def encode(tokenizer, text):
  return tokenizer.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  """A mixture YAML over 10 synthetic clips (shared; tests that break videos make their own)."""
  return synthetic.write_synthetic_dataset(tmp_path_factory.mktemp('clips'), 10,
                                           num_frames_in_video=FRAMES_IN_VIDEO, fps=FPS, seed=0)


def video_source(records, tokenizer, num_frames=NUM_FRAMES, image_size=IMAGE_SIZE):
  return sources.VideoSource(records, tokenizer, num_frames=num_frames, image_size=image_size)


def one_host(**kwargs):
  return dict(process_index=0, process_count=1, **kwargs)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class IndexSource:
  """Example i has text [-200, 1000 + i] (+ `extra[i]` filler tokens) and frames filled with i."""

  def __init__(self, size, extra=None):
    self.size = size
    self.extra = extra or {}

  def __len__(self):
    return self.size

  def __getitem__(self, index):
    ids = np.asarray([T.image, 1000 + index] + [7] * self.extra.get(index, 0), np.int32)
    return {'input_ids': ids, 'labels': ids.copy(),
            'frames': np.full((1, 2, 2, 3), index, np.uint8), 'id': f'r{index}'}


def indices_of(batches):
  return [int(i) - 1000 for batch in batches for i in batch['input_ids'][:, 1]]


# The chat template and SFT labels (moved here from test_prompting.py).

def test_video_question_prompt(tokenizer):
  text = chat.video_question('  What moves? ', no_think=True,
                             time_info=chat.time_instruction(2.0, [0.0, 1.0]))
  assert text.startswith('<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n')
  assert ('<|start_header_id|>user<|end_header_id|>\n\n<image>\nThe video lasts for 2.00 seconds, '
          'and 2 frames are uniformly sampled from it. These frames are located at 0.00s,1.00s. '
          'Please answer the following questions related to this video.\nWhat moves?/no_think'
          '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n') in text
  ids = prompting.tokenize(tokenizer, text)
  assert ids[0] == T.bos and (ids == -200).sum() == 1 and ids[-3] == T.end_header


def test_sft_labels_by_hand(tokenizer):
  conversation = [{'from': 'human', 'value': '<image>\nQ?'}, {'from': 'gpt', 'value': 'A.'}]
  ids, labels = chat.sft_example(tokenizer, conversation, system='S.')
  e = lambda text: encode(tokenizer, text)
  system = [T.bos, T.start_header] + e('system') + [T.end_header] + e('\n\nS.') + [T.eot]
  user = [T.start_header] + e('user') + [T.end_header] + e('\n\n') + [-200] + e('\nQ?') + [T.eot]
  assistant = [T.start_header] + e('assistant') + [T.end_header] + e('\n\nA.') + [T.eot]
  assert list(ids) == system + user + assistant
  specials = {T.bos, T.start_header, T.end_header, T.eot}
  keep_specials = lambda part: [t if t in specials else IGNORE for t in part]
  assert list(labels) == keep_specials(system) + keep_specials(user) + assistant


def test_multi_turn_and_roles(tokenizer):
  conversation = [{'role': 'system', 'content': 'Sys'}, {'role': 'user', 'content': 'q1'},
                  {'role': 'assistant', 'content': 'a1'}, {'role': 'user', 'content': 'q2'},
                  {'role': 'assistant', 'content': 'a2'}]
  ids, labels = chat.sft_example(tokenizer, conversation)
  assert (ids == T.bos).sum() == 1 and (ids == T.eot).sum() == 5
  assert tokenizer.decode([int(i) for i in ids], skip_special_tokens=False).startswith(
      '<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>')
  labelled = labels != IGNORE
  assert labelled.sum() > 0 and (labels[labelled] == ids[labelled]).all()
  with pytest.raises(ValueError, match='unknown conversation role'):
    chat.sft_example(tokenizer, [{'from': 'robot', 'value': 'x'}])
  with pytest.raises(ValueError, match='at least one assistant turn'):
    chat.sft_example(tokenizer, [{'from': 'human', 'value': 'x'}])


def test_collate_pads_with_eos_as_input_and_label():
  ids, labels = chat.collate([(np.array([1, 2, 3]), np.array([IGNORE, 2, 3])),
                              (np.arange(10), np.arange(10))], length=5)
  assert ids.tolist() == [[1, 2, 3, T.eos, T.eos], [0, 1, 2, 3, 4]]
  assert labels.tolist() == [[IGNORE, 2, 3, T.eos, T.eos], [0, 1, 2, 3, 4]]


def test_time_instruction_goes_first_in_the_first_human_turn_as_the_reference_trains():
  conversation = [{'from': 'human', 'value': '<image>\nQ?'}, {'from': 'gpt', 'value': 'A'},
                  {'from': 'human', 'value': 'Q2'}, {'from': 'gpt', 'value': 'B'}]
  timed = chat.with_time_instruction(conversation, 'TI.')
  # f'<image>\n{instruction}\n{value without <image>}': the newline after <image> stays.
  assert timed[0] == {'from': 'human', 'value': '<image>\nTI.\n\nQ?'}
  assert timed[1:] == conversation[1:]
  assert conversation[0]['value'] == '<image>\nQ?'  # not modified in place
  assert chat.with_time_instruction([{'from': 'human', 'value': 'Q?<image>'}], 'TI.')[0][
      'value'] == '<image>\nTI.\nQ?'


# Annotations and mixtures.

def record(record_id, question='<image>\nWhat colour?', answer='red', **overrides):
  return {'id': record_id, 'video': f'{record_id}.mp4',
          'conversations': [{'from': 'human', 'value': question}, {'from': 'gpt', 'value': answer}],
          **overrides}


def turns(*pairs):
  return [{'from': role, 'value': value} for role, value in pairs]


MALFORMED = {
    'missing key': ({'id': 'bad-7', 'conversations': record('x')['conversations']},
                    r"missing key\(s\) \['video'\]"),
    'no <image>': (record('bad-7', question='What colour?'), 'holds no <image>'),
    'two <image>': (record('bad-7', question='<image><image>Q'), '2 <image> placeholders'),
    '<image> in a later turn': (
        record('bad-7', conversations=turns(('human', '<image>Q'), ('gpt', 'a'),
                                            ('human', '<image>Q2'), ('gpt', 'b'))),
        '2 <image> placeholders'),
    'unknown role': (record('bad-7', conversations=turns(('human', '<image>Q'), ('robot', 'a'))),
                     "unknown role 'robot'"),
    'no gpt turn': (record('bad-7', conversations=turns(('human', '<image>Q'))), 'no gpt turn'),
    'not alternating': (
        record('bad-7', conversations=turns(('human', '<image>Q'), ('human', 'Q2'), ('gpt', 'a'))),
        'must alternate'),
    'unanswered last turn': (
        record('bad-7', conversations=turns(('human', '<image>Q'), ('gpt', 'a'), ('human', 'Q2'))),
        'without an answer'),
}


@pytest.mark.parametrize('case', sorted(MALFORMED))
def test_malformed_annotations_fail_naming_file_record_and_id(tmp_path, case):
  bad, problem = MALFORMED[case]
  path = tmp_path / 'annotations.json'
  path.write_text(json.dumps([record('good-0'), bad, record('good-2')]))
  with pytest.raises(ValueError, match=problem) as error:
    annotations.load_annotations(path)
  message = str(error.value)
  assert str(path) in message and "record 1 (id 'bad-7')" in message
  assert 'record 0' not in message and 'record 2' not in message


def test_annotations_json_and_jsonl_agree_and_every_problem_is_listed(tmp_path):
  raw = [record('a'), record('b', answer='blue')]
  (tmp_path / 'list.json').write_text(json.dumps(raw))
  (tmp_path / 'lines.jsonl').write_text('\n'.join(json.dumps(r) for r in raw) + '\n')
  from_list = annotations.load_annotations(tmp_path / 'list.json')
  from_lines = annotations.load_annotations(tmp_path / 'lines.jsonl')
  assert from_list == from_lines
  assert [r.id for r in from_list] == ['a', 'b']
  assert from_list[1].conversations[1] == {'from': 'gpt', 'value': 'blue'}
  assert from_list[0].video_path == tmp_path / 'a.mp4'  # default root: the file's folder
  (tmp_path / 'bad.json').write_text(json.dumps([record('a', question='Q'), record('b'),
                                                 record('c', answer=3)]))
  with pytest.raises(ValueError, match=r"2 malformed record\(s\) of 3") as error:
    annotations.load_annotations(tmp_path / 'bad.json')
  assert "record 0 (id 'a')" in str(error.value) and "record 2 (id 'c')" in str(error.value)


def write_mixture(folder, *entries):
  path = folder / 'mixture.yaml'
  path.write_text(yaml.safe_dump({'datasets': list(entries)}))
  return path


@pytest.fixture
def twenty(tmp_path):
  """annotations/twenty.json: records r00..r19; its videos live in (the unused) `videos/`."""
  (tmp_path / 'annotations').mkdir()
  (tmp_path / 'annotations' / 'twenty.json').write_text(
      json.dumps([record(f'r{i:02d}') for i in range(20)]))
  return tmp_path


@pytest.mark.parametrize('strategy,expected', [
    ('all', [f'r{i:02d}' for i in range(20)]),
    ('first:5', ['r00', 'r01', 'r02', 'r03', 'r04']),
    ('first:10%', ['r00', 'r01']),
    ('first:12%', ['r00', 'r01', 'r02']),  # ceil(2.4), as the reference
    ('end:3', ['r17', 'r18', 'r19']),
    ('first:1000', [f'r{i:02d}' for i in range(20)]),
])
def test_mixture_first_and_end_strategies(twenty, strategy, expected):
  path = write_mixture(twenty, {'json_path': 'annotations/twenty.json',
                                'sampling_strategy': strategy})
  assert [r.id for r in annotations.load_mixture(path)] == expected


def test_mixture_random_strategies_are_subsets_deterministic_per_seed(twenty):
  path = write_mixture(twenty, {'json_path': 'annotations/twenty.json',
                                'sampling_strategy': 'random:4'},
                       {'json_path': 'annotations/twenty.json',
                        'sampling_strategy': 'random:25%'})
  everything = {f'r{i:02d}' for i in range(20)}
  draws = {}
  for seed in range(4):
    ids = [r.id for r in annotations.load_mixture(path, seed=seed)]
    assert len(ids) == 4 + 5
    assert len(set(ids[:4])) == 4 and len(set(ids[4:])) == 5
    assert set(ids) <= everything
    assert ids == [r.id for r in annotations.load_mixture(path, seed=seed)]
    draws[seed] = tuple(ids)
  assert len(set(draws.values())) > 1  # the seed matters


def test_mixture_paths_resolve_against_the_yaml_folder(twenty, tmp_path):
  path = write_mixture(twenty, {'json_path': 'annotations/twenty.json',
                                'sampling_strategy': 'first:1', 'video_root': 'videos'},
                       {'json_path': str(twenty / 'annotations' / 'twenty.json'),
                        'sampling_strategy': 'end:1'})
  first, last = annotations.load_mixture(path)
  assert first.video_path == tmp_path / 'videos' / 'r00.mp4'
  assert last.video_path == tmp_path / 'annotations' / 'r19.mp4'


@pytest.mark.parametrize('entry,problem', [
    ({'json_path': 'annotations/twenty.json', 'sampling_strategy': 'some:5'},
     'unknown sampling_strategy'),
    ({'json_path': 'annotations/twenty.json', 'sampling_strategy': 'first:many'},
     'not a count or a percentage'),
    ({'json_path': 'annotations/twenty.json', 'sampling': 'all'}, 'unknown key'),
    ({'json_path': 'annotations/missing.json'}, 'does not exist'),
])
def test_bad_mixture_entries_name_the_yaml_and_dataset(twenty, entry, problem):
  path = write_mixture(twenty, {'json_path': 'annotations/twenty.json'}, entry)
  with pytest.raises((ValueError, FileNotFoundError), match=problem) as error:
    annotations.load_mixture(path)
  if error.type is ValueError:
    assert f'{path}: dataset 1' in str(error.value)


# Frames and examples.

def decode_all_frames(path):
  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])


def test_frames_are_the_linspace_frames_resized_in_uint8(clips, tokenizer):
  records = annotations.load_mixture(clips)
  example = video_source(records, tokenizer, image_size=56)[0]
  all_frames = decode_all_frames(records[0].video_path)
  assert len(all_frames) == FRAMES_IN_VIDEO
  indices = [0, 2, 5, 8, 11]  # linspace(0, 11, 5) = 0, 2.75, 5.5, 8.25, 11, truncated
  want = np.stack([np.asarray(Image.fromarray(all_frames[i]).resize(
      (56, 56), Image.Resampling.BICUBIC)) for i in indices])
  assert example['frames'].dtype == np.uint8 and example['frames'].shape == (5, 56, 56, 3)
  np.testing.assert_array_equal(example['frames'], want)
  # Independently of the decoder: each sampled frame looks most like the drawn frame it should be.
  answers = [m['value'] for m in records[0].conversations if m['from'] == 'gpt']
  colour = next(a for a in answers if a in synthetic.COLOURS)
  direction = next(a for a in answers if a in synthetic.DIRECTIONS)
  drawn = resize_frames(synthetic.synthetic_clip(colour, direction, FRAMES_IN_VIDEO), 56)
  distance = ((example['frames'][:, None].astype(float) - drawn[None]) ** 2).sum((2, 3, 4))
  assert distance.argmin(1).tolist() == indices
  # The time instruction gives the frames' times: index / 4 fps.
  text = tokenizer.decode([int(t) for t in example['input_ids'] if t >= 0])
  assert ('The video lasts for 3.00 seconds, and 5 frames are uniformly sampled from it. These '
          'frames are located at 0.00s,0.50s,1.25s,2.00s,2.75s. Please answer') in text


def test_example_tokens_and_labels_by_hand(clips, tokenizer):
  records = annotations.load_mixture(clips)
  example = video_source(records, tokenizer)[3]
  assert example['id'] == records[3].id == 'clip_0003'
  (q1, a1, q2, a2) = [m['value'] for m in records[3].conversations]
  assert q1.startswith('<image>\n')
  e = lambda text: encode(tokenizer, text)
  times = ('The video lasts for 3.00 seconds, and 5 frames are uniformly sampled from it. These '
           'frames are located at 0.00s,0.50s,1.25s,2.00s,2.75s. Please answer the following '
           'questions related to this video.')
  header = lambda role: [T.start_header] + e(role) + [T.end_header]
  system = [T.bos] + header('system') + e('\n\n' + chat.SYSTEM_PROMPT) + [T.eot]
  user1 = header('user') + e('\n\n') + [-200] + e(f'\n{times}\n{q1[len("<image>"):]}') + [T.eot]
  assistant1 = header('assistant') + e(f'\n\n{a1}') + [T.eot]
  user2 = header('user') + e(f'\n\n{q2}') + [T.eot]
  assistant2 = header('assistant') + e(f'\n\n{a2}') + [T.eot]
  assert example['input_ids'].tolist() == system + user1 + assistant1 + user2 + assistant2
  specials = {T.bos, T.start_header, T.end_header, T.eot}
  prompt = lambda part: [t if t in specials else IGNORE for t in part]
  assert example['labels'].tolist() == (prompt(system) + prompt(user1) + assistant1 +
                                        prompt(user2) + assistant2)
  assert example['input_ids'].dtype == example['labels'].dtype == np.int32


def test_normalize_frames_finishes_preprocess_frames():
  frames = np.random.default_rng(0).integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
  resized = resize_frames(frames, 28)
  assert resized.dtype == np.uint8 and resized.shape == (3, 28, 28, 3)
  np.testing.assert_array_equal(
      resized[1], np.asarray(Image.fromarray(frames[1]).resize((28, 28), Image.Resampling.BICUBIC)))
  reference = preprocess_frames(frames, 28)
  np.testing.assert_array_equal(normalize_frames(resized), reference)  # exactly, on the host
  np.testing.assert_array_equal(np.asarray(normalize_frames(jnp.asarray(resized))), reference)
  every_value = np.arange(256, dtype=np.uint8)
  on_device = np.asarray(jax.jit(normalize_frames)(jnp.asarray(every_value)))
  assert on_device.dtype == np.float32
  # Compiled, XLA may fuse the multiply-add: at most one float32 ulp at 1.0.
  np.testing.assert_allclose(on_device, normalize_frames(every_value), rtol=0, atol=2 ** -23)
  assert normalize_frames(every_value)[[0, 255]].tolist() == [-1.0, 1.0]


def test_tokenizer_and_sources_pickle_for_worker_processes(clips, tokenizer):
  text = '<|startoftext|>What colour is the square? red<|eot_id|>'
  copy = pickle.loads(pickle.dumps(tokenizer))
  assert copy.encode(text, add_special_tokens=False).ids == encode(tokenizer, text)
  source = video_source(annotations.load_mixture(clips), tokenizer)
  copy = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(copy[2]['input_ids'], source[2]['input_ids'])


def test_synthetic_answers_depend_on_the_video(clips):
  records = annotations.load_mixture(clips)
  assert len(records) == 10
  for record_ in records[:4]:
    questions = [m['value'] for m in record_.conversations if m['from'] == 'human']
    answers = dict(zip([q.replace('<image>\n', '') for q in questions],
                       [m['value'] for m in record_.conversations if m['from'] == 'gpt']))
    frames = decode_all_frames(record_.video_path).astype(float)
    square = np.abs(frames - synthetic.BACKGROUND).sum(-1) > 60
    colour = frames[0][square[0]].mean(0)
    nearest = min(synthetic.COLOURS, key=lambda c: np.abs(colour - synthetic.COLOURS[c]).sum())
    assert answers[synthetic.COLOUR_QUESTION] == nearest
    first_x, last_x = (np.flatnonzero(square[t].any(0)).mean() for t in (0, -1))
    assert answers[synthetic.DIRECTION_QUESTION] == ('right' if last_x > first_x else 'left')
  again = synthetic.write_synthetic_dataset(clips.parent.parent / 'again', 10,
                                            num_frames_in_video=FRAMES_IN_VIDEO, fps=FPS, seed=0)
  assert (again.parent / 'annotations.json').read_text() == (
      clips.parent / 'annotations.json').read_text()


# Batching.

def test_bucket_padding():
  examples = [IndexSource(2, extra={0: 1, 1: 3})[i] for i in range(2)]  # 3 and 5 tokens
  batch = pipeline.collate_to_bucket([{**examples[0], 'skipped': 1},
                                      {**examples[1], 'skipped': 2}], (4, 8, 16))
  assert batch['input_ids'].tolist() == [[-200, 1000, 7, T.eos, T.eos, T.eos, T.eos, T.eos],
                                         [-200, 1001, 7, 7, 7, T.eos, T.eos, T.eos]]
  assert batch['labels'].tolist() == batch['input_ids'].tolist()
  assert batch['frames'].shape == (2, 1, 2, 2, 3) and batch['frames'][1].max() == 1
  assert batch['skipped'].tolist() == [2]
  assert {k: v.dtype for k, v in batch.items()} == {
      'input_ids': np.int32, 'labels': np.int32, 'frames': np.uint8, 'skipped': np.int32}
  exact = pipeline.collate_to_bucket([IndexSource(1, extra={0: 2})[0]], (4, 8, 16))
  assert exact['input_ids'].shape == (1, 4) and exact['skipped'].tolist() == [0]
  assert pipeline.buckets_up_to(1000, 256) == (256, 512, 1000)
  assert pipeline.buckets_up_to(512, 256) == (256, 512)
  with pytest.raises(ValueError, match='do not fit the largest bucket 16'):
    pipeline.bucket_length(17, (4, 8, 16))


def test_truncation_keeps_the_image_placeholder_or_skips():
  ids = np.arange(20, dtype=np.int32)
  ids[3] = T.image
  labels = np.where(ids == T.image, IGNORE, ids).astype(np.int32)
  example = {'input_ids': ids, 'labels': labels, 'frames': np.zeros((1, 2, 2, 3), np.uint8),
             'id': 'long'}
  fitted = pipeline.fit_to_length(example, 16)
  assert fitted['input_ids'].tolist() == ids[:16].tolist()
  assert fitted['labels'].tolist() == labels[:16].tolist()
  assert pipeline.fit_to_length(example, 20) is example
  late = {**example, 'input_ids': np.roll(ids, 14)}  # the placeholder at token 17
  cut = pipeline.fit_to_length(late, 16)
  assert sources.is_skipped(cut) and "'long'" in cut['skip_reason']
  assert 'token 17' in cut['skip_reason'] and 'largest bucket (16)' in cut['skip_reason']


def test_pipeline_buckets_truncates_and_skips_what_truncation_would_cut():
  # r1 is 2 + 9 tokens (truncated to 8); r2's placeholder is moved past the largest bucket.
  class Source(IndexSource):
    def __getitem__(self, index):
      example = super().__getitem__(index)
      if index == 2:
        example['input_ids'] = np.asarray([1002] + [7] * 9 + [T.image], np.int32)
      return example
  batches = list(pipeline.make_pipeline(
      Source(4, extra={1: 9}), batch_size=3, seed=0, buckets=(4, 8), num_epochs=1,
      shuffle=False, drop_remainder=False, **one_host()))
  assert [b['input_ids'].shape for b in batches] == [(3, 8)]
  assert batches[0]['input_ids'][:, 1].tolist() == [1000, 1001, 1003]
  assert batches[0]['input_ids'][1].tolist() == [T.image, 1001] + [7] * 6
  assert batches[0]['skipped'].tolist() == [1]


def test_shuffle_is_deterministic_and_differs_per_epoch_and_seed():
  def order(seed, shuffle=True):
    dataset = pipeline.make_pipeline(IndexSource(12), batch_size=4, seed=seed, buckets=(8,),
                                     num_epochs=2, shuffle=shuffle, **one_host())
    return indices_of(list(dataset))
  first = order(0)
  assert sorted(first[:12]) == sorted(first[12:]) == list(range(12))
  assert first[:12] != first[12:]  # a new permutation each epoch
  assert first[:12] != list(range(12))
  assert order(0) == first
  assert order(1) != first
  assert order(0, shuffle=False) == list(range(12)) * 2


def test_hosts_get_disjoint_shards_that_cover_the_records():
  shards = []
  for host in range(3):
    dataset = pipeline.make_pipeline(IndexSource(10), batch_size=2, seed=0, buckets=(8,),
                                     num_epochs=1, drop_remainder=False, process_index=host,
                                     process_count=3)
    shards.append(indices_of(list(dataset)))
  assert [len(s) for s in shards] == [4, 4, 2]  # blocks of 2 out of every 6, then the rest
  assert sorted(sum(shards, [])) == list(range(10))  # disjoint and covering
  everything = pipeline.make_pipeline(IndexSource(10), batch_size=2, seed=0, buckets=(8,),
                                      num_epochs=1)  # jax: one process here
  assert sorted(indices_of(list(everything))) == list(range(10))
  # Host h's i-th batch is rows [2h, 2h + 2) of one host's i-th batch of 6.
  single = pipeline.make_pipeline(IndexSource(12), batch_size=6, seed=3, buckets=(8,),
                                  num_epochs=2, **one_host())
  per_host = [list(pipeline.make_pipeline(IndexSource(12), batch_size=2, seed=3, buckets=(8,),
                                          num_epochs=2, process_index=h, process_count=3))
              for h in range(3)]
  for i, batch in enumerate(single):
    assert indices_of([batch]) == sum((indices_of([per_host[h][i]]) for h in range(3)), [])
  with pytest.raises(ValueError, match='process_index 3'):
    pipeline.make_pipeline(IndexSource(10), batch_size=2, seed=0, buckets=(8,),
                           process_index=3, process_count=3)


def test_curriculum_stages_come_first_for_their_batches_on_any_number_of_hosts():
  class Offset(IndexSource):  # stage k's records are 100 * k + i
    def __init__(self, size, offset):
      super().__init__(size)
      self.offset = offset

    def __getitem__(self, index):
      return super().__getitem__(self.offset + index)

  def run(process_index=0, process_count=1, batch_size=4, **kwargs):
    return pipeline.make_pipeline(
        Offset(6, 0), batch_size=batch_size, seed=2, buckets=(8,),
        stages=((Offset(3, 100), 3), (Offset(5, 200), 1)), process_index=process_index,
        process_count=process_count, **kwargs)

  iterator = iter(run())
  batches = take(iterator, 7)
  stage = [[i // 100 for i in indices_of([b])] for b in batches]
  assert stage == [[1] * 4] * 3 + [[2] * 4] + [[0] * 4] * 3
  first = indices_of(batches[:3])  # 12 records of a 3-record source: four shuffled passes
  assert all(sorted(first[i:i + 3]) == [100, 101, 102] for i in range(0, 12, 3))
  assert first[:3] != first[3:6] or first[3:6] != first[6:9]
  assert sorted(indices_of(batches[4:6])[:6]) == list(range(6))  # then the task's own records
  # Two hosts of two rows read the same global batches.
  per_host = [take(iter(run(h, 2, batch_size=2)), 7) for h in range(2)]
  for i, batch in enumerate(batches):
    assert indices_of([batch]) == indices_of([per_host[0][i]]) + indices_of([per_host[1][i]])
  # Restoring inside a stage resumes there.
  interrupted = iter(run())
  take(interrupted, 2)
  restored = iter(run())
  restored.set_state(json.loads(json.dumps(interrupted.get_state())))
  assert indices_of(take(restored, 5)) == indices_of(batches[2:])
  with pytest.raises(ValueError, match='at least one batch'):
    pipeline.make_pipeline(IndexSource(4), batch_size=2, seed=0, buckets=(8,),
                           stages=((IndexSource(4), 0),), **one_host())


# Bad videos, checkpointable state.

@pytest.fixture(scope='module')
def broken_clips(tmp_path_factory):
  """8 synthetic clips; clip 2 is garbage bytes, clip 5 is missing."""
  mixture = synthetic.write_synthetic_dataset(tmp_path_factory.mktemp('broken'), 8,
                                              num_frames_in_video=FRAMES_IN_VIDEO, fps=FPS, seed=1)
  videos = mixture.parent / 'videos'
  (videos / 'clip_0002.mp4').write_bytes(b'not a video at all' * 50)
  (videos / 'clip_0005.mp4').unlink()
  return mixture


def test_corrupt_and_missing_videos_are_skipped_counted_and_logged(broken_clips, tokenizer,
                                                                   caplog):
  records = annotations.load_mixture(broken_clips)
  source = video_source(records, tokenizer)
  with caplog.at_level('WARNING'):
    batches = list(pipeline.make_pipeline(source, batch_size=2, seed=0, buckets=(256,),
                                          num_epochs=1, shuffle=False, **one_host()))
  good = [0, 1, 3, 4, 6, 7]
  rows = [(b, row) for b in batches for row in range(2)]
  assert len(rows) == len(good)
  for (batch, row), index in zip(rows, good):
    example = source[index]
    n = len(example['input_ids'])
    np.testing.assert_array_equal(batch['input_ids'][row, :n], example['input_ids'])
    assert (batch['input_ids'][row, n:] == T.eos).all()
    np.testing.assert_array_equal(batch['frames'][row], example['frames'])
  assert [b['skipped'].tolist() for b in batches] == [[0], [1], [2]]
  logged = caplog.text
  assert str(records[2].video_path) in logged and str(records[5].video_path) in logged


def test_restore_from_state_continues_exactly_without_workers_and_with_orbax(
    broken_clips, tokenizer, tmp_path):
  source = video_source(annotations.load_mixture(broken_clips), tokenizer)
  dataset = pipeline.make_pipeline(source, batch_size=3, seed=0, buckets=(128, 256),
                                   **one_host())
  uninterrupted = take(iter(dataset), 8)  # 8 x 3 > 6 good clips: crosses epochs
  counts = [int(b['skipped'][0]) for b in uninterrupted]
  # 24 good examples = 4 epochs of 6: the 2 bad records of at least 3 epochs are counted.
  assert counts == sorted(counts) and 6 <= counts[-1] <= 8
  interrupted = iter(dataset)
  assert_same_batches(take(interrupted, 3), uninterrupted[:3])
  state = json.loads(json.dumps(interrupted.get_state()))
  restored = iter(dataset)
  restored.set_state(state)
  assert_same_batches(take(restored, 5), uninterrupted[3:])
  # The same through orbax's CheckpointManager and grain's handler args.
  with ocp.CheckpointManager(tmp_path / 'checkpoints') as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(interrupted)))
    manager.wait_until_finished()
  from_orbax = iter(dataset)
  with ocp.CheckpointManager(tmp_path / 'checkpoints') as manager:
    manager.restore(3, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(from_orbax)))
  assert_same_batches(take(from_orbax, 5), uninterrupted[3:])
  # And through orbax's v1 API, for which a grain iterator is a StatefulCheckpointable.
  ocp_v1.save_checkpointables(tmp_path / 'v1', {'data': interrupted})
  from_v1 = iter(dataset)
  ocp_v1.load_checkpointables(tmp_path / 'v1', {'data': from_v1})
  assert_same_batches(take(from_v1, 5), uninterrupted[3:])


def test_restore_from_state_continues_exactly_with_worker_processes(broken_clips, tokenizer):
  source = video_source(annotations.load_mixture(broken_clips), tokenizer)
  settings = dict(batch_size=3, seed=0, buckets=(128, 256), **one_host())
  uninterrupted = take(iter(pipeline.make_pipeline(source, **settings)), 8)
  with_workers = pipeline.make_pipeline(source, worker_count=2, **settings)
  interrupted = iter(with_workers)
  try:
    # Batching follows the workers, so the batches do not depend on their number.
    assert_same_batches(take(interrupted, 3), uninterrupted[:3])
    state = json.loads(json.dumps(interrupted.get_state()))
  finally:
    interrupted.close()
  restored = iter(with_workers)
  try:
    restored.set_state(state)
    assert_same_batches(take(restored, 5), uninterrupted[3:])
  finally:
    restored.close()


# The ArrayRecord source.

def test_array_record_source_round_trips_and_batches_like_the_video_source(
    broken_clips, tokenizer, tmp_path):
  records = annotations.load_mixture(broken_clips)
  path = build_array_record_dataset(records, tokenizer, tmp_path / 'tfds',
                                    num_frames=NUM_FRAMES, image_size=IMAGE_SIZE)
  stored = sources.ArrayRecordSource(path)
  assert len(stored) == 6 and (stored.num_frames, stored.image_size) == (NUM_FRAMES, IMAGE_SIZE)
  assert sorted(stored.skipped_when_built) == ['clip_0002', 'clip_0005']
  decoded = video_source(records, tokenizer)
  by_id = {r.id: decoded[i] for i, r in enumerate(records)}
  assert sorted(stored[i]['id'] for i in range(len(stored))) == sorted(
      r.id for r in records if r.id not in ('clip_0002', 'clip_0005'))
  for i in range(len(stored)):
    example = stored[i]
    want = by_id[example['id']]
    np.testing.assert_array_equal(example['input_ids'], want['input_ids'])
    np.testing.assert_array_equal(example['labels'], want['labels'])
    assert example['input_ids'].dtype == example['labels'].dtype == np.int32
    assert example['frames'].dtype == np.uint8 and example['frames'].shape == want['frames'].shape
    error = np.abs(example['frames'].astype(int) - want['frames'])
    assert error.mean() < 2 and error.max() <= 40  # JPEG, quality 95, 4:4:4
  copy = pickle.loads(pickle.dumps(stored))  # what the worker processes receive
  np.testing.assert_array_equal(copy[0]['frames'], stored[0]['frames'])
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  by_name = tfds.data_source(f'vidlada_video_frames/{NUM_FRAMES}f_{IMAGE_SIZE}px',
                             data_dir=tmp_path / 'tfds', split='train')
  assert len(by_name) == 6
  assert 'tensorflow' not in sys.modules
  settings = dict(batch_size=2, seed=0, buckets=(128, 256), num_epochs=1, **one_host())
  from_stored = next(iter(pipeline.make_pipeline(stored, **settings)))
  from_videos = next(iter(pipeline.make_pipeline(decoded, **settings)))
  assert {k: (v.shape, v.dtype) for k, v in from_stored.items()} == {
      k: (v.shape, v.dtype) for k, v in from_videos.items()}
  assert from_stored['frames'].shape == (2, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
  # A dataset already prepared is reused, not rebuilt (nothing to decode here).
  assert build_array_record_dataset([], tokenizer, tmp_path / 'tfds', num_frames=NUM_FRAMES,
                                    image_size=IMAGE_SIZE) == path


def test_pipeline_decodes_records_given_directly(clips, tokenizer):
  records = annotations.load_mixture(clips)
  batch = next(iter(pipeline.make_pipeline(
      records, batch_size=2, seed=0, buckets=(256,), tokenizer=tokenizer,
      num_frames=NUM_FRAMES, image_size=IMAGE_SIZE, **one_host())))
  assert batch['frames'].shape == (2, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
  with pytest.raises(ValueError, match='needs tokenizer'):
    pipeline.make_pipeline(records, batch_size=2, seed=0, buckets=(256,), **one_host())
