"""lmms-eval runs the `vidlada_jax` model on the offline task synthetic_video_qa, without network.

A random-weights checkpoint of the demo architecture (its small vocabulary moves the LLaDA
special ids, so the adapter must use the checkpoint's own) answers four clips of a tiny test
split through `python -m vidlada_jax.lmms`: the run completes, writes the task's accuracy, and
its responses are exactly what `vidlada_jax.launch.sample.Sampler` answers for the same items. In process:
an unreadable video gives an empty response (the rest are answered), loglikelihood says why it
cannot run, and the task's data helper, prompts and canvas sizing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('lmms_eval', reason='lmms-eval is optional: see requirements/lmms.txt')

# pylint: disable=g-import-not-at-top (after the skip: these import lmms-eval)
import vidlada_jax as vj
from vidlada_jax.launch.sample import Item, Sampler
from lmms_eval.api.instance import Instance
from loguru import logger
from vidlada_jax.fixtures import demo_tokenizer
from vidlada_jax.input_pipeline import synthetic_qa
from vidlada_jax.sampling import SamplerConfig
from vidlada_jax.lmms import model as adapter_model
from vidlada_jax.lmms.tasks.synthetic_video_qa import utils as task_utils

REPO = Path(__file__).resolve().parent.parent
TASK = 'synthetic_video_qa'
TINY = synthetic_qa.SyntheticVideoQaConfig(name='tiny', train_size=6, validation_size=6,
                                           test_size=6, num_frames=8)
LIMIT = 4
BATCH = 2
MODEL_ARGS = 'gen_length=8,steps=8,block_length=8,max_frames_num=4'
# What the adapter decodes with: the task's max_new_tokens (16) in whole 8-token blocks, one step
# a token as in MODEL_ARGS.
DECODE = SamplerConfig(gen_length=16, steps=16, block_length=8)
GEN_KWARGS = {'max_new_tokens': 16, 'until': ['\n\n']}  # the task's, as lmms-eval passes them


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('lmms_eval')
  checkpoint = vj.save_checkpoint(vj.init_model(vj.model_config('demo'), seed=4), root / 'ckpt',
                                  tokenizer=demo_tokenizer())
  jsonl = task_utils.write_task_data(root / 'task', limit=LIMIT, data_dir=root / 'tfds',
                                     config=TINY)
  docs = [json.loads(line) for line in jsonl.read_text().splitlines()]
  return root, checkpoint, jsonl, docs


@pytest.fixture(scope='module')
def run(files):
  """lmms-eval's command line (through `python -m vidlada_jax.lmms`), offline."""
  root, checkpoint, jsonl, _ = files
  out = root / 'results'
  env = dict(os.environ, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
             HF_HOME=str(root / 'hf'),
             # As this session runs JAX (conftest), so both sides compute the same numbers.
             JAX_DEFAULT_MATMUL_PRECISION='highest',
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
  command = [sys.executable, '-m', 'vidlada_jax.lmms', '--model', 'vidlada_jax',
             '--model_args', f'pretrained={checkpoint},{MODEL_ARGS}', '--tasks', TASK,
             '--include_path', str(jsonl.parent), '--limit', str(LIMIT), '--batch_size',
             str(BATCH), '--output_path', str(out), '--log_samples',
             # DEBUG: lmms-eval re-raises a failed evaluation instead of logging it and exiting 0.
             '--verbosity', 'DEBUG']
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  (results,) = out.glob('*/*_results.json')
  (samples,) = out.glob(f'*/*_samples_{TASK}.jsonl')
  return (json.loads(results.read_text()),
          sorted((json.loads(line) for line in samples.read_text().splitlines()),
                 key=lambda s: s['doc_id']))


@pytest.fixture(scope='module')
def direct(files):
  """The same items answered by the sampler itself, cut at the task's stop string."""
  _, checkpoint, _, docs = files
  sampler = Sampler(checkpoint, DECODE, frames=4)
  items = [Item(str(i), Path(doc['video']), task_utils.doc_to_text(doc))
           for i, doc in enumerate(docs)]
  answers, _ = sampler.answer(items, BATCH)
  return [answer.answer.split('\n\n')[0] for answer in answers]


def test_the_run_completes_and_reports_accuracy(run):
  results, samples = run
  metrics = results['results'][TASK]
  assert 0.0 <= metrics['accuracy,none'] <= 1.0
  # The first four test clips are of the first four question types (index % 6).
  for question_type in synthetic_qa.QUESTION_TYPES[:LIMIT]:
    assert 0.0 <= metrics[f'accuracy_{question_type},none'] <= 1.0
  assert [s['doc_id'] for s in samples] == list(range(LIMIT))


def test_responses_are_the_samplers_answers(run, files, direct):
  _, samples = run
  _, _, _, docs = files
  assert [s['input'] for s in samples] == [task_utils.doc_to_text(d) for d in docs]
  assert [s['filtered_resps'] for s in samples] == direct
  # These random weights (seed 4) answer text, not only ids outside the small vocabulary, so
  # this compares more than empty strings.
  assert any(direct)


@pytest.fixture(scope='module')
def adapter(files):
  _, checkpoint, _, _ = files
  return adapter_model.VidLaDAJax(pretrained=str(checkpoint), batch_size=BATCH,
                                  **dict(arg.split('=') for arg in MODEL_ARGS.split(',')))


def requests_for(docs):
  def doc_to_visual(doc):
    return [doc['video']]
  return [Instance('generate_until', (task_utils.doc_to_text(doc), dict(GEN_KWARGS),
                                      doc_to_visual, doc_id, TASK, 'test'),
                   idx=0, metadata={'task': TASK, 'doc_id': doc_id, 'repeats': 1})
          for doc_id, doc in enumerate(docs)]


def test_an_unreadable_video_gives_an_empty_response(adapter, files, direct, tmp_path):
  _, _, _, docs = files
  missing = dict(docs[0], video=str(tmp_path / 'missing.mp4'))
  docs = [missing, docs[0], docs[1]]  # the readable two decode as the direct run's first batch
  adapter.task_dict = {TASK: {'test': docs}}
  warnings = []
  sink = logger.add(lambda message: warnings.append(str(message)), level='WARNING')
  try:
    responses = adapter.generate_until(requests_for(docs))
  finally:
    logger.remove(sink)
  assert responses == ['', *direct[:2]]
  assert any('missing.mp4' in w for w in warnings), warnings


def test_loglikelihood_explains_why_it_is_unsupported(adapter, files):
  with pytest.raises(NotImplementedError, match='masked-diffusion'):
    adapter.loglikelihood(requests_for(files[3][:1]))
  with pytest.raises(NotImplementedError, match='multi-round'):
    adapter.generate_until_multi_round(requests_for(files[3][:1]))


def test_bad_model_args_are_explained(files):
  with pytest.raises(ValueError, match='unknown vidlada_jax model_args: frames'):
    adapter_model.VidLaDAJax(pretrained=str(files[1]), frames=4)
  with pytest.raises(ValueError, match='cache must be one of'):
    adapter_model.VidLaDAJax(pretrained=str(files[1]), cache='fast')
  with pytest.raises(FileNotFoundError, match='no checkpoint directory'):
    adapter_model.VidLaDAJax(pretrained=str(files[0] / 'nowhere'))


def test_canvas_sizing_and_stop_strings():
  base = SamplerConfig(gen_length=128, steps=64, block_length=32)  # 16 steps a block
  assert adapter_model.settings_for(base, None) is base
  assert adapter_model.settings_for(base, 16) == SamplerConfig(32, 16, 32)
  assert adapter_model.settings_for(base, 100) == base
  assert adapter_model.settings_for(base, 129) == SamplerConfig(160, 80, 32)
  assert adapter_model.cut_at_stop('A\n\nbecause. Q:', ['Q:', '\n\n']) == 'A'
  assert adapter_model.stop_strings('\n') == ['\n'] and adapter_model.stop_strings(None) == []


def test_task_data_prompts_and_scoring(files, tmp_path):
  _, _, jsonl, docs = files
  # Drawn directly instead of through the prepared tfds dataset: the same records.
  again = task_utils.write_task_data(tmp_path, limit=LIMIT, config=TINY)
  strip = lambda records: [{k: v for k, v in r.items() if k != 'video'} for r in records]
  assert strip(json.loads(line) for line in again.read_text().splitlines()) == strip(docs)
  assert all(Path(doc['video']).is_file() for doc in docs)
  task_yaml = (jsonl.parent / f'{TASK}.yaml').read_text()
  assert str(jsonl) in task_yaml and str(task_utils.TEMPLATE) in task_yaml
  for doc in docs:
    assert '<image>\n' + task_utils.doc_to_text(doc) == synthetic_qa.prompt_text(doc)
  choice = next(d for d in docs if d['format'] == 'multiple_choice')
  assert task_utils.doc_to_text(choice).endswith("\nAnswer with the option's letter.")
  scored = task_utils.process_results(choice, [f'The answer is {choice["answer_letter"]}.'])
  assert scored['accuracy'] == 1.0
  assert scored[f'accuracy_{choice["question_type"]}']['score'] == 1.0
  records = [task_utils.process_results(d, ['']) for d in docs]
  assert task_utils.accuracy_count([r['accuracy_count'] for r in records]) == 0.0
  assert str(task_utils.accuracy_end_event([r['accuracy_end_event'] for r in records])) == 'nan'
