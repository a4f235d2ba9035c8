"""The device benchmark's tiny scale, end to end on this CPU: every row there, figures
consistent."""

import json
import statistics

import pytest

import vidlada_jax as vj
from vidlada_jax.launch import bench_device


PARTS = []  # the result as `--out` writes it after each part of the run


@pytest.fixture(scope='module')
def result():
  """What `python -m vidlada_jax.launch.bench_device --scale tiny --repeats 2 --json` prints."""
  result = bench_device.run(bench_device.SCALES['tiny'], repeats=2, torch_rows=True, kernels=True,
                            on_part=lambda part: PARTS.append(json.loads(json.dumps(part))))
  result['headline'] = bench_device.headline(result)
  return json.loads(json.dumps(result))  # it is JSON as it stands


def test_the_table_names_every_row(result, capsys):
  bench_device.print_table(result)
  table = capsys.readouterr().out
  for row in result['rows']:
    assert row['description'] in table


def test_every_row_is_measured(result):
  scale = bench_device.SCALES['tiny']
  names = [row['name'] for row in result['rows']]
  assert names == ['torch_reference', 'plain', 'mars_block16', 'mars_block8', 'dual_block8']
  assert result['visual_tokens'] == scale.frames * vj.model_config('tiny').tokens_per_frame
  for row in result['rows']:
    assert len(row['calls_s']) == 2 and all(s > 0 for s in row['calls_s'])
    # decode seconds: the median call, scaled from the steps timed to the decode's.
    expected = statistics.median(row['calls_s']) * scale.steps / row['timed_steps']
    assert row['decode_s'] == pytest.approx(expected)
    assert row['tokens_per_s'] == pytest.approx(scale.gen_length / row['decode_s'])


def test_ratios_are_against_the_same_run(result):
  rows = {row['name']: row for row in result['rows']}
  plain, reference = rows['plain'], rows['torch_reference']
  for row in result['rows']:
    assert row['speedup_vs_plain'] == pytest.approx(plain['decode_s'] / row['decode_s'])
    assert row['speedup_vs_torch'] == pytest.approx(reference['decode_s'] / row['decode_s'])
  for name in ('mars_block16', 'mars_block8', 'dual_block8'):
    row = rows[name]
    assert row['flop_ratio'] == pytest.approx(plain['flops_per_step'] / row['flops_per_step'])
    assert row['flop_ratio'] > 1  # caching recomputes less than plain decoding
    assert row['speedup_over_flop_ratio'] == pytest.approx(
        row['speedup_vs_plain'] / row['flop_ratio'])
  assert (plain['flop_ratio'] == 1
          and plain['timed_steps'] == bench_device.SCALES['tiny'].timed_steps)
  headline = result['headline']
  assert headline['mars_speedup_vs_plain'] == rows['mars_block16']['speedup_vs_plain']
  assert headline['plain_speedup_vs_torch'] == plain['speedup_vs_torch']


def test_kernel_rows_compare_with_the_dense_reference(result):
  kernels = {row['implementation']: row for row in result['kernels']}
  assert set(kernels) == {'xla_dense', 'xla_gather'}  # CPU; cuDNN and Pallas rows need a GPU
  assert kernels['xla_dense']['max_abs_err'] == 0
  assert kernels['xla_gather']['max_abs_err'] < 1e-4
  assert 0 < kernels['xla_gather']['visited'] < 1


def test_the_profiled_decode_is_summarised(result, capsys):
  profile = result['profile']
  ops = {op['op']: op for op in profile['top_ops']}
  assert profile['op_seconds'] > 0 and ops
  assert sum(op['seconds'] for op in ops.values()) <= profile['op_seconds'] + 1e-9
  # XLA:CPU copies each layer's slice of the stacked weights and cache before its products.
  assert 0 < profile['slice_read_s'] < profile['op_seconds']
  assert profile['slice_read_share'] == pytest.approx(
      profile['slice_read_s'] / profile['op_seconds'])
  bench_device.print_table(result)
  assert "copy a layer's slice" in capsys.readouterr().out


def test_each_part_is_kept_as_it_ends(result):
  rows = lambda part: [row['name'] for row in part['rows']]
  assert [rows(part) for part in PARTS[:2]] == [['torch_reference'], rows(result)]
  assert 'kernels' not in PARTS[1] and 'kernels' in PARTS[2] and 'profile' not in PARTS[2]
  assert PARTS[-1]['profile'] == result['profile'] and len(PARTS) == 4


def test_written_results_replace_a_file_only_whole(tmp_path):
  path = tmp_path / 'device.json'
  bench_device.write_json(str(path), {'rows': [1]})
  assert json.loads(path.read_text()) == {'rows': [1]}
  with pytest.raises(TypeError):
    bench_device.write_json(str(path), {'rows': [object()]})  # fails halfway through
  assert json.loads(path.read_text()) == {'rows': [1]}  # what was there is still there
  assert [p.name for p in tmp_path.iterdir()] == ['device.json']
  bench_device.write_json(str(path), {'rows': [2]})
  assert json.loads(path.read_text()) == {'rows': [2]}
  with pytest.raises(FileNotFoundError) as error:
    bench_device.write_json(str(tmp_path / 'missing' / 'device.json'), {'rows': [3]})
  assert error.value.__context__ is None  # the error itself, not one from cleaning up after it


def test_a_dry_run_lowers_every_8b_decode_program():
  """The 8B run's setup, checked without an accelerator: every decode program lowers (for CUDA,
  with the Pallas kernels, where this jaxlib can lower them without a GPU), and the PyTorch
  reference model has exactly the LM's parameters."""
  from vidlada_jax.attention_backends import _gpu_api

  platform = 'cuda' if _gpu_api.can_lower_for_cuda() else None
  result = bench_device.dry_run(bench_device.SCALES['8b'], platform)
  scale = bench_device.SCALES['8b']
  assert [row['name'] for row in result['rows']] == [
      'plain', 'mars_block128', 'mars_block32', 'dual_block32']
  assert all(row['output_shape'] == [1, scale.gen_length] for row in result['rows'])
  assert result['prompt_tokens'] == len(bench_device.prompt_of(vj.model_config('8b'), scale)) - 1 + (
      scale.frames * 210)
  if platform == 'cuda':
    assert result['attention'] == 'pallas_gpu'
  assert result['torch_parameters'] == result['lm_parameters'] > 8e9
  rows = {row['name']: row for row in result['rows']}
  assert rows['plain']['flop_ratio'] == 1
  # The goal (MARS-Cache at least 12x plain decoding) is within reach of the FLOPs it saves.
  assert rows['mars_block128']['flop_ratio'] > 12 and rows['dual_block32']['flop_ratio'] > 1


def test_dry_run_command_line(capsys):
  assert bench_device.main(['--scale', 'tiny', '--dry-run', '--json']) == 0
  out = json.loads(capsys.readouterr().out)  # the table went to stderr
  assert out['platform'] == 'cpu' and len(out['rows']) == 4
  with pytest.raises(SystemExit) as exit_:
    bench_device.main(['--dry-run', 'gpu'])
  assert exit_.value.code == 2 and "got 'gpu'" in capsys.readouterr().err
