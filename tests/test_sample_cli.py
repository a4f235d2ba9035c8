"""vidlada_jax.launch.sample end to end on a tiny checkpoint and generated videos, and its error
messages."""

import json

import pytest

import vidlada_jax as vj
from vidlada_jax.launch import sample
from vidlada_jax.input_pipeline.synthetic import synthetic_clip
from vidlada_jax.fixtures import tiny_tokenizer
from vidlada_jax.video import write_video

FAST = ['--gen-length', '8', '--steps', '8', '--block-length', '8']


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('sample')
  checkpoint = vj.save_checkpoint(vj.init_model(vj.model_config('tiny'), seed=3), root / 'ckpt',
                                  tokenizer=tiny_tokenizer())
  # At 4 fps, 6 s and 3 s: evaluation sampling reads one frame a second, 6 and 3 frames.
  long_clip = write_video(root / 'long.mp4', synthetic_clip('red', 'right', 24), fps=4)
  short_clip = write_video(root / 'short.mp4', synthetic_clip('red', 'right', 12), fps=4)
  return root, checkpoint, long_clip, short_clip


def run(capsys, *args):
  code = sample.main([str(a) for a in args])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_single_question_json(files, capsys):
  root, checkpoint, long_clip, _ = files
  code, out, err = run(capsys, '--checkpoint', checkpoint, '--video', long_clip,
                       '--question', 'What moves?', '--json', *FAST)
  assert code == 0, err
  result = json.loads(out)
  (answer,) = result['answers']
  assert answer['num_frames'] == 6 and len(answer['tokens']) == 8
  assert answer['prompt_tokens'] > 6 * 210
  assert {'load_s', 'video_s', 'generate_s', 'tokens_per_s'} <= set(result['timings'])
  assert result['settings']['gen_length'] == 8


def test_batch_file_matches_single_answers(files, capsys):
  root, checkpoint, long_clip, short_clip = files
  batch = root / 'batch.jsonl'
  batch.write_text('\n'.join(json.dumps(r) for r in [
      {'id': 'a', 'video': str(long_clip), 'question': 'What moves?'},
      {'id': 'b', 'video': str(short_clip), 'question': 'What colour is the square?'},
      {'id': 'c', 'video': str(long_clip), 'question': 'Where does it end?'}]))
  code, out, err = run(capsys, '--checkpoint', checkpoint, '--batch-file', batch, '--json',
                       '--batch-size', '2', *FAST)
  assert code == 0, err
  result = json.loads(out)
  answers = result['answers']
  assert [a['id'] for a in answers] == ['a', 'b', 'c']
  assert [a['num_frames'] for a in answers] == [6, 3, 6]
  # Two programs, each with the prompts left-padded to a multiple of 64 tokens.
  (rows_a, padded_a, frames_a), (rows_b, padded_b, frames_b) = result['timings']['programs']
  assert (rows_a, frames_a, rows_b, frames_b) == (2, 6, 1, 3)
  text_tokens = lambda a: a['prompt_tokens'] + 1 - a['num_frames'] * 210
  assert padded_a % 64 == 0 and padded_a >= max(text_tokens(answers[0]), text_tokens(answers[2]))
  assert padded_b % 64 == 0 and padded_b >= text_tokens(answers[1])
  # Alone and unpadded, an item decodes to the same tokens.
  code, out, _ = run(capsys, '--checkpoint', checkpoint, '--video', short_clip,
                     '--question', 'What colour is the square?', '--json',
                     '--pad-to-multiple-of', '1', *FAST)
  assert json.loads(out)['answers'][0]['tokens'] == answers[1]['tokens']
  assert json.loads(out)['timings']['programs'] == [[1, text_tokens(answers[1]), 3]]


def test_show_layout_prints_segments_and_tokens(files, capsys):
  root, checkpoint, _, short_clip = files
  code, out, _ = run(capsys, '--checkpoint', checkpoint, '--video', short_clip, '--question', 'Q?',
                     '--show-layout', *FAST)
  assert code == 0
  assert 'visual  positions' in out and '3 frames x 210 tokens' in out
  assert 'decoded tokens: [' in out


@pytest.mark.parametrize('extra, message', [
    (['--gen-length', '10', '--block-length', '4', '--steps', '4'], 'multiple of block_length'),
    (['--video', 'missing.mp4'], 'missing.mp4 does not exist'),
    (['--max-length', '300'], 'exceeds the 300-token context'),
    (['--pad-to-multiple-of', '0'], 'pad_to_multiple_of must be at least 1'),
])
def test_errors_are_explained(files, capsys, extra, message):
  root, checkpoint, long_clip, _ = files
  args = ['--checkpoint', checkpoint, '--video', long_clip, '--question', 'Q?', *FAST, *extra]
  code, _, err = run(capsys, *args)
  assert code == 2 and message in err, err


def test_corrupt_video_and_bad_batch_file(files, capsys):
  root, checkpoint, _, _ = files
  corrupt = root / 'corrupt.mp4'
  corrupt.write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 8)
  code, _, err = run(capsys, '--checkpoint', checkpoint, '--video', corrupt, '--question', 'Q?',
                     *FAST)
  assert code == 2 and 'corrupt.mp4' in err and 'cannot read video' in err
  bad = root / 'bad.jsonl'
  bad.write_text('{"video": "a.mp4", "question": "q"}\n{"video": "b.mp4"}\n')
  code, _, err = run(capsys, '--checkpoint', checkpoint, '--batch-file', bad, *FAST)
  assert code == 2 and 'line 2' in err


def test_checkpoint_without_tokenizer(files, capsys, tmp_path):
  root, _, long_clip, _ = files
  bare = vj.save_checkpoint(vj.init_model(vj.model_config('tiny'), seed=3), tmp_path / 'bare')
  code, _, err = run(capsys, '--checkpoint', bare, '--video', long_clip, '--question', 'Q?', *FAST)
  assert code == 2 and 'tokenizer.json' in err


def test_cache_policies_from_the_command_line(files, capsys):
  _, checkpoint, long_clip, _ = files
  answers = {}
  for cache in ('none', 'mars-exact', 'mars', 'dual'):
    code, out, err = run(capsys, '--checkpoint', checkpoint, '--video', long_clip, '--question',
                         'What moves?', '--json', '--cache', cache, *FAST)
    assert code == 0, err
    answers[cache] = json.loads(out)['answers'][0]['tokens']
  assert answers['mars-exact'] == answers['none']  # every MARS-Cache knob off: plain decoding
  assert all(len(tokens) == 8 for tokens in answers.values())


def test_batch_file_answers_every_readable_item(files, capsys):
  root, checkpoint, long_clip, short_clip = files
  corrupt = root / 'corrupt_in_batch.mp4'
  corrupt.write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 8)
  batch = root / 'mixed.jsonl'
  batch.write_text('\n'.join(json.dumps(r) for r in [
      {'id': 'good', 'video': str(short_clip), 'question': 'What colour is the square?'},
      {'id': 'corrupt', 'video': str(corrupt), 'question': 'Q?'},
      {'id': 'missing', 'video': str(root / 'nowhere.mp4'), 'question': 'Q?'},
      {'id': 'good2', 'video': str(long_clip), 'question': 'What moves?'}]))
  code, out, err = run(capsys, '--checkpoint', checkpoint, '--batch-file', batch, '--json', *FAST)
  assert code == 1, err
  answers = {a['id']: a for a in json.loads(out)['answers']}
  assert list(answers) == ['good', 'corrupt', 'missing', 'good2']
  assert answers['good']['error'] is None and len(answers['good']['tokens']) == 8
  assert answers['good2']['error'] is None and answers['good2']['num_frames'] == 6
  assert 'corrupt_in_batch.mp4' in answers['corrupt']['error']
  assert 'nowhere.mp4 does not exist' in answers['missing']['error']
  # The readable items' answers do not depend on the failed ones.
  code, out, _ = run(capsys, '--checkpoint', checkpoint, '--video', short_clip,
                     '--question', 'What colour is the square?', '--json', *FAST)
  assert json.loads(out)['answers'][0]['tokens'] == answers['good']['tokens']
  code, out, err = run(capsys, '--checkpoint', checkpoint, '--batch-file', batch, *FAST)
  assert code == 1 and '[corrupt] error:' in out and '2 of 4 item(s) failed' in err


def test_frames_follow_the_checkpoint_tower_resolution(files, capsys, tmp_path):
  import dataclasses

  root, _, long_clip, _ = files
  config = vj.model_config('tiny')
  config = config.replace(vision=dataclasses.replace(config.vision, image_size=112))
  small = vj.save_checkpoint(vj.init_model(config, seed=3), tmp_path / 'small',
                             tokenizer=tiny_tokenizer())
  code, out, err = run(capsys, '--checkpoint', small, '--video', long_clip, '--question', 'Q?',
                       '--json', *FAST)
  assert code == 0, err
  (answer,) = json.loads(out)['answers']
  assert answer['num_frames'] == 6
  assert answer['prompt_tokens'] > 6 * config.tokens_per_frame  # 20 visual tokens a frame


def test_keep_going_records_bad_input_and_lets_bugs_surface(files, monkeypatch):
  """With keep_going, a prompt too long for the context becomes that item's error; any other
  ValueError is a bug and propagates with its traceback."""
  from vidlada_jax.sampling import SamplerConfig

  _, checkpoint, long_clip, short_clip = files
  answerer = vj.Answerer(checkpoint, settings=SamplerConfig(gen_length=8, steps=8, block_length=8),
                         frames=6, max_length=64)
  items = [vj.Question(long_clip, 'Q?', id='long'), vj.Question(short_clip, 'Q?', id='short')]
  with pytest.raises(vj.PromptTooLong):
    answerer.ask_batch(items, batch_size=2)
  answers = answerer.ask_batch(items, batch_size=2, keep_going=True)
  assert 'exceeds the 64-token context' in answers[0].error
  assert [a.id for a in answers] == ['long', 'short']

  def broken(item):
    raise ValueError('a bug in preparing the prompt')

  monkeypatch.setattr(answerer, 'prepare', broken)
  with pytest.raises(ValueError, match='a bug in preparing the prompt'):
    answerer.ask_batch(items, batch_size=2, keep_going=True)
