"""vidlada_jax.launch.evaluate end to end on a random-weights checkpoint and a 6-item
synthetic_video_qa split.

The checkpoint is the 'demo' architecture (64-px frames, special tokens moved to 1024..), so the
stop token and suppressed ids must come from the checkpoint. Its answers are garbage: these tests
check the bookkeeping (scores, resuming, errors, policies), not accuracy. Batches reuse a few
shapes so that only a handful of programs compile.
"""

import json
import shutil
from pathlib import Path

import pytest

import vidlada_jax as vj
from vidlada_jax.launch import evaluate
from vidlada_jax import answering, evaluation, qa_evaluation
from vidlada_jax.fixtures import demo_tokenizer
from vidlada_jax.input_pipeline import synthetic_qa

FAST = ['--gen-length', '8', '--steps', '8', '--block-length', '8', '--frames', '4']


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('evaluate')
  checkpoint = vj.save_checkpoint(vj.init_model(vj.model_config('demo'), seed=1), root / 'ckpt',
                                  tokenizer=demo_tokenizer())
  data_dir = root / 'data'
  synthetic_qa.build(data_dir, synthetic_qa.SyntheticVideoQaConfig(
      name='tiny', train_size=6, validation_size=6, test_size=6, num_frames=8))
  return root, checkpoint, data_dir


def run(capsys, files, *args, data_dir=None):
  _, checkpoint, default_data = files
  code = evaluate.main(['--checkpoint', str(checkpoint), '--config', 'tiny',
                        '--data-dir', str(data_dir or default_data), *FAST,
                        *(str(a) for a in args)])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def read(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def truth(data_dir) -> dict[str, dict]:
  """The test split's questions by id, read from the tfds dataset (not the evaluator's export):
  target (the option letter for multiple choice, else the answer), question type, format."""
  source = synthetic_qa.load_split(data_dir, 'test', 'tiny')
  examples = [{key: synthetic_qa.as_text(source[i][key])
               for key in ('id', 'answer', 'answer_letter', 'question_type', 'format')}
              for i in range(len(source))]
  return {e['id']: dict(e, target=e['answer_letter'] if e['format'] == 'multiple_choice'
                        else e['answer']) for e in examples}


def accuracies(correct: dict[str, bool], questions: dict[str, dict]):
  """(overall, by question type) of per-id correctness, counted here."""
  by_type = {}
  for item, right in correct.items():
    by_type.setdefault(questions[item]['question_type'], []).append(right)
  return (sum(correct.values()) / len(correct),
          {kind: sum(rights) / len(rights) for kind, rights in by_type.items()})


def test_accuracy_is_the_fraction_of_correct_records(files, capsys, tmp_path):
  output = tmp_path / 'results.jsonl'
  code, out, err = run(capsys, files, '--json', '--output', output, '--batch-size', 3)
  assert code == 0, err
  result = json.loads(out)
  records = read(output)
  questions = truth(files[2])
  assert sorted(r['id'] for r in records) == sorted(questions) == [
      f'test_{i:05d}' for i in range(6)]
  assert result['items'] == 6 and result['errors'] == 0 and result['tokens_per_s'] > 0
  # Every record's correctness scored again here, against the dataset's own target; the
  # reported accuracies must be exactly the fractions they make.
  correct = {}
  for record in records:
    question = questions[record['id']]
    assert (record['target'], record['question_type'], record['format']) == (
        question['target'], question['question_type'], question['format'])
    correct[record['id']] = evaluation.score(
        record['answer'], question['target'],
        multiple_choice=question['format'] == 'multiple_choice')
    assert record['correct'] == correct[record['id']]
    assert record['error'] is None and record['cache'] == 'none' and len(record['tokens']) == 8
  overall, by_type = accuracies(correct, questions)
  assert result['accuracy'] == overall and result['accuracy_by_type'] == by_type
  assert set(by_type) == set(synthetic_qa.QUESTION_TYPES)
  assert 'overall' in err and 'tokens/s' in err  # the table goes to stderr with --json
  # The clips were exported once, as mp4s read back by the Sampler.
  videos = qa_evaluation.export_root(files[2], 'tiny', 'test') / 'videos'
  assert sorted(p.name for p in videos.iterdir()) == [f'test_{i:05d}.mp4' for i in range(6)]


def test_limit_then_resume_keeps_earlier_records(files, capsys, tmp_path):
  output = tmp_path / 'partial.jsonl'
  code, _, err = run(capsys, files, '--limit', 3, '--batch-size', 3, '--output', output)
  assert code == 0, err
  first = read(output)
  assert [r['id'] for r in first] == ['test_00000', 'test_00001', 'test_00002']
  # An edited record must survive (it is not recomputed); a line cut short by an interrupted
  # write is dropped.
  first[0]['answer'] = 'edited by hand'
  output.write_text(''.join(json.dumps(r) + '\n' for r in first) + '{"id": "test_00')

  code, _, err = run(capsys, files, '--output', output)
  assert code == 2 and str(output) in err and '--resume' in err  # never overwritten

  code, out, err = run(capsys, files, '--resume', '--batch-size', 3, '--output', output, '--json')
  assert code == 0, err
  result = json.loads(out)
  assert result['items'] == 6 and result['decoded'] == 3
  records = read(output)
  assert sorted(r['id'] for r in records) == [f'test_{i:05d}' for i in range(6)]
  assert records[0]['answer'] == 'edited by hand'
  assert 'already in' in err

  code, _, err = run(capsys, files, '--resume', '--output', output, '--frames', 2)
  assert code == 2 and 'other settings' in err and 'frames' in err


def test_unreadable_videos_are_recorded_as_errors(files, capsys, tmp_path):
  data_dir = tmp_path / 'data'
  shutil.copytree(files[2], data_dir)
  qa_evaluation.prepare_items(data_dir, 'test', 'tiny')  # the clips, exported once
  videos = qa_evaluation.export_root(data_dir, 'tiny', 'test') / 'videos'
  (videos / 'test_00001.mp4').unlink()
  (videos / 'test_00004.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 8)

  output = tmp_path / 'errors.jsonl'
  code, out, err = run(capsys, files, '--json', '--batch-size', 3, '--output', output,
                       data_dir=data_dir)
  assert code == 0, err
  result = json.loads(out)
  assert result['items'] == 6 and result['errors'] == 2
  records = {r['id']: r for r in read(output)}
  assert 'test_00001.mp4 does not exist' in records['test_00001']['error']
  assert 'test_00004.mp4' in records['test_00004']['error']
  for item in ('test_00001', 'test_00004'):
    assert records[item]['correct'] is False and records[item]['answer'] == ''
  for item in ('test_00000', 'test_00002', 'test_00003', 'test_00005'):
    assert records[item]['error'] is None and len(records[item]['tokens']) == 8
  assert result['accuracy'] == pytest.approx(sum(r['correct'] for r in records.values()) / 6)


def test_several_cache_policies(files, capsys, tmp_path):
  code, out, err = run(capsys, files, '--cache', 'none,mars', '--limit', 3, '--batch-size', 3,
                       '--output-dir', tmp_path, '--json')
  assert code == 0, err
  result = json.loads(out)
  assert list(result['policies']) == ['none', 'mars']
  eot = vj.model_config('demo').tokens.eot  # the checkpoint's stop token, not LLaDA's
  records = {}
  for cache, entry in result['policies'].items():
    records[cache] = read(tmp_path / f'synthetic_video_qa_tiny_test_{cache}.jsonl')  # config tiny
    assert entry['items'] == 3 and {r['cache'] for r in records[cache]} == {cache}
    assert entry['accuracy'] == sum(r['correct'] for r in records[cache]) / 3
    assert entry['speedup_vs_none'] == pytest.approx(
        entry['tokens_per_s'] / result['policies']['none']['tokens_per_s'])

  def answer_tokens(tokens):  # up to and including the first stop token
    return tokens[:tokens.index(eot) + 1] if eot in tokens else tokens

  # Agreement counted here from the two files: items whose answer tokens are the same.
  plain = {r['id']: answer_tokens(r['tokens']) for r in records['none']}
  same = [answer_tokens(r['tokens']) == plain[r['id']] for r in records['mars']]
  assert result['policies']['mars']['token_agreement_with_none'] == sum(same) / 3
  assert result['policies']['none']['token_agreement_with_none'] == 1.0
  assert result['cache'] == 'none' and result['accuracy'] == result['policies']['none']['accuracy']
  assert 'token agreement' in err and 'speedup vs none' in err


def test_known_answers_give_known_scores(files, capsys, tmp_path, monkeypatch):
  """The scores of answers whose correctness is known by construction: the Answerer is replaced
  by one that answers from the dataset's targets, right for some items and wrong for others, with
  an unreadable video among them and set timings. So every number of the summary is known by
  hand: a mistake in scoring, in the per-type split, in counting errors as wrong, in ignoring
  tokens after the stop token, or in leaving compiling batches out of tokens/s shows."""
  questions = truth(files[2])
  ids = sorted(questions)
  eot = vj.model_config('demo').tokens.eot
  right = {'none': {ids[0], ids[2], ids[4]}, 'mars': {ids[0], ids[2], ids[3], ids[4]}}
  failed = ids[5]  # answered right, but its video could not be read: wrong
  # Seconds for each batch of 3: the first batch of a policy compiles, so it is slower.
  seconds = {'none': [2.0, 0.5], 'mars': [1.0, 0.25]}
  # Decoded tokens: mars differs from plain decoding after the stop only for ids[1] (the same
  # answer), before it for ids[2] and ids[3].
  plain = [5, 6, eot, 9, 9, 9, 9, 9]
  tokens = {'none': {}, 'mars': {ids[1]: [5, 6, eot, 1, 1, 1, 1, 1],
                                 ids[2]: [5, 7, eot, 9, 9, 9, 9, 9], ids[3]: [8, *plain[1:]]}}

  def text(question, correct):
    target = question['target']
    if question['format'] == 'multiple_choice':
      return f'The answer is {target}.' if correct else 'AB'.replace(target, '')[0]
    return f' {target.title()}. ' if correct else 'none of them'

  def ask_batch(self, batch, batch_size=8, **unused):
    del batch_size, unused
    answers = [answering.Answer(
        id=q.id, video=str(q.video), question=q.question, num_frames=4, prompt_tokens=0,
        answer=text(questions[q.id], q.id in right[self.cache] or q.id == failed),
        tokens=tokens[self.cache].get(q.id, plain), error='unreadable' if q.id == failed else None)
               for q in batch]
    self.timings = dict(generate_s=seconds[self.cache].pop(0), generated_tokens=8 * len(batch),
                        programs=[(len(batch), 64, 4)])
    return answers

  monkeypatch.setattr(answering.Answerer, 'ask_batch', ask_batch)
  code, out, err = run(capsys, files, '--cache', 'none,mars', '--batch-size', 3,
                       '--output-dir', tmp_path, '--json')
  assert code == 0, err
  none, mars = json.loads(out)['policies'].values()
  assert (none['accuracy'], mars['accuracy']) == (3 / 6, 4 / 6)
  for cache, entry in (('none', none), ('mars', mars)):
    _, by_type = accuracies({item: item in right[cache] for item in ids}, questions)
    assert entry['accuracy_by_type'] == by_type and entry['errors'] == 1
    records = {r['id']: r for r in read(tmp_path / f'synthetic_video_qa_tiny_test_{cache}.jsonl')}
    assert {item for item, r in records.items() if r['correct']} == right[cache]
  # Only the second batch of each policy reuses a shape: 24 tokens in 0.5 s and in 0.25 s.
  assert (none['tokens_per_s'], mars['tokens_per_s']) == (48.0, 96.0)
  assert not none['tokens_per_s_includes_compile'] and not mars['tokens_per_s_includes_compile']
  assert (none['speedup_vs_none'], mars['speedup_vs_none']) == (1.0, 2.0)
  # Of the 5 items both answered (not the failed one) mars agrees on ids[0], ids[1], ids[4].
  assert (none['token_agreement_with_none'], mars['token_agreement_with_none']) == (1.0, 3 / 5)


def test_each_config_gets_its_own_default_output(tmp_path):
  """Evaluating `long` after `default` in one output dir writes a second file, not a clash."""
  import argparse

  from vidlada_jax.launch.evaluate import output_path

  def path(config, output=None):
    return output_path(argparse.Namespace(output=output, output_dir=str(tmp_path),
                                          task='synthetic_video_qa', split='test',
                                          config=config), 'mars')

  assert path('default') == tmp_path / 'synthetic_video_qa_test_mars.jsonl'
  assert path('long') == tmp_path / 'synthetic_video_qa_long_test_mars.jsonl'
  assert path('long', output='r.jsonl') == Path('r.jsonl')


@pytest.mark.parametrize('extra, message', [
    (['--cache', 'none,fast'], "unknown policy 'fast'"),
    (['--config', 'nosuch'], 'synthetic_video_qa/nosuch is not prepared'),
    (['--gen-length', '10'], 'multiple of block_length'),
    (['--limit', '0'], '--limit must be positive'),
])
def test_usage_errors(files, capsys, tmp_path, extra, message):
  code, _, err = run(capsys, files, '--output', tmp_path / 'r.jsonl', *extra)
  assert code == 2 and message in err, err


def test_missing_checkpoint(capsys, tmp_path, monkeypatch):
  monkeypatch.setattr(evaluate.assets, 'DEMO_CHECKPOINT', tmp_path / 'demo-vidlada')
  assert evaluate.main(['--data-dir', str(tmp_path)]) == 2
  assert 'no checkpoint at' in capsys.readouterr().err
  assert evaluate.main(['--checkpoint', str(tmp_path / 'nowhere')]) == 2
  assert 'nowhere' in capsys.readouterr().err
