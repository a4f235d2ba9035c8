"""vidlada_jax.launch.evaluate end to end on a random-weights checkpoint and a 6-item synthetic_video_qa split.

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
from vidlada_jax import evaluation
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


def test_accuracy_is_the_fraction_of_correct_records(files, capsys, tmp_path):
  output = tmp_path / 'results.jsonl'
  code, out, err = run(capsys, files, '--json', '--output', output, '--batch-size', 3)
  assert code == 0, err
  result = json.loads(out)
  records = read(output)
  assert sorted(r['id'] for r in records) == [f'test_{i:05d}' for i in range(6)]
  assert result['items'] == 6 and result['errors'] == 0
  assert result['accuracy'] == pytest.approx(sum(r['correct'] for r in records) / 6)
  assert 0.0 <= result['accuracy'] <= 1.0 and result['tokens_per_s'] > 0
  assert set(result['accuracy_by_type']) == set(synthetic_qa.QUESTION_TYPES)
  for record in records:
    multiple_choice = record['format'] == 'multiple_choice'
    assert record['correct'] == evaluation.score(record['answer'], record['target'],
                                                 multiple_choice=multiple_choice)
    assert record['error'] is None and record['cache'] == 'none' and len(record['tokens']) == 8
    assert record['target'] in ('ABCD' if multiple_choice else record['options'])
  assert 'overall' in err and 'tokens/s' in err  # the table goes to stderr with --json
  # The clips were exported once, as mp4s read back by the Sampler.
  videos = evaluate.export_root(files[2], 'tiny', 'test') / 'videos'
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
  evaluate.prepare_items(data_dir, 'test', 'tiny')  # the clips, exported once
  videos = evaluate.export_root(data_dir, 'tiny', 'test') / 'videos'
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
  for cache, entry in result['policies'].items():
    assert entry['items'] == 3 and 0.0 <= entry['token_agreement_with_none'] <= 1.0
    assert 'speedup_vs_none' in entry
    records = read(tmp_path / f'synthetic_video_qa_tiny_test_{cache}.jsonl')  # config tiny
    assert {r['cache'] for r in records} == {cache}
  assert result['policies']['none']['token_agreement_with_none'] == 1.0
  assert result['cache'] == 'none' and result['accuracy'] == result['policies']['none']['accuracy']
  assert 'token agreement' in err and 'speedup vs none' in err


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
