"""lmms-eval runs the `vidlada_jax` model on the offline task synthetic_video_qa, without network.

A random-weights checkpoint of the demo architecture (its small vocabulary moves the LLaDA
special ids, so the adapter must use the checkpoint's own) answers four clips of a tiny test
split through `python -m vidlada_jax.lmms`: the run completes, writes the task's accuracy, and
its responses are exactly what `vidlada_jax.launch.sample.Sampler` answers for the same items.
In process: an unreadable video gives an empty response (the rest are answered), loglikelihood
says why it cannot run, and the task's data helper, prompts and canvas sizing.
"""

import json
import math
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('lmms_eval', reason='lmms-eval is optional: see requirements/lmms.txt')

# pylint: disable=g-import-not-at-top (after the skip: these import lmms-eval)
import vidlada_jax as vj
from vidlada_jax.answering import Answerer, Question
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
  """The same items answered by the library's Answerer, cut at the task's stop string."""
  _, checkpoint, _, docs = files
  answerer = Answerer(checkpoint, settings=DECODE, frames=4)
  items = [Question(Path(doc['video']), task_utils.doc_to_text(doc), id=str(i))
           for i, doc in enumerate(docs)]
  answers = answerer.ask_batch(items, BATCH)
  return [answer.answer.split('\n\n')[0] for answer in answers]


def plain_text(text: str) -> str:
  """A short answer as short-answer benchmarks compare them: lower case, without surrounding
  punctuation and white space or a leading article."""
  text = text.strip().lower().strip(string.punctuation + string.whitespace)
  return ' '.join(re.sub(r'^(the|a|an)\s+', '', text).split())


def expected_accuracies(docs, correct) -> dict[str, float]:
  """The task's metrics for per-doc correctness, counted here: the mean, and per question type
  the mean over that type's docs (NaN for a type with none)."""
  metrics = {'accuracy': sum(correct) / len(correct)}
  for question_type in synthetic_qa.QUESTION_TYPES:
    scores = [c for c, doc in zip(correct, docs) if doc['question_type'] == question_type]
    metrics[f'accuracy_{question_type}'] = sum(scores) / len(scores) if scores else math.nan
  return metrics


def assert_metrics_equal(got: dict, want: dict):
  assert set(got) == set(want)
  for name, value in want.items():
    assert got[name] == value or (math.isnan(got[name]) and math.isnan(value)), name


def test_the_run_completes_and_reports_accuracy(run, files):
  """The reported accuracies are exactly those of the logged responses, scored again here
  without `vidlada_jax.evaluation`: multiple choice by lmms-eval's own Video-MME letter
  extractor, free form by comparing plain text."""
  from lmms_eval.tasks.videomme.utils import extract_characters_regex
  results, samples = run
  _, _, _, docs = files
  metrics = results['results'][TASK]
  assert [s['doc_id'] for s in samples] == list(range(LIMIT))
  # The first four test clips are of the first four question types (index % 6): the last two
  # types have no doc, so their accuracy is NaN.
  assert [doc['question_type'] for doc in docs] == list(synthetic_qa.QUESTION_TYPES[:LIMIT])
  correct = []
  for sample, doc in zip(samples, docs):
    response = sample['filtered_resps']
    if doc['format'] == 'multiple_choice':
      correct.append(extract_characters_regex(response) == doc['answer_letter'])
    else:
      correct.append(plain_text(response) == plain_text(doc['answer']))
    assert sample['accuracy'] == float(correct[-1]), sample
  want = expected_accuracies(docs, correct)
  assert_metrics_equal({name: metrics[f'{name},none'] for name in want}, want)


def test_the_task_scores_known_responses(files):
  """The task's scoring and per-type aggregation (what lmms-eval calls) on responses right for
  half the docs and wrong for the others, then the other way round, so every metric is known by
  hand and every doc is scored both right and wrong."""
  _, _, _, docs = files

  def response(doc, correct):
    if doc['format'] == 'multiple_choice':
      letter = doc['answer_letter']
      return f'The answer is {letter}.' if correct else 'AB'.replace(letter, '')[0]
    wrong = next(option for option in doc['options'] if option != doc['answer'])
    return f'The {doc["answer"].upper()}.' if correct else wrong

  names = ['accuracy', *(f'accuracy_{t}' for t in synthetic_qa.QUESTION_TYPES)]
  # Docs 0-3 are of the first four types, one each; the other two types have none: NaN.
  for right, want in (([True, False, True, False], [0.5, 1.0, 0.0, 1.0, 0.0]),
                      ([False, True, False, True], [0.5, 0.0, 1.0, 0.0, 1.0])):
    records = [task_utils.process_results(doc, [response(doc, correct)])
               for doc, correct in zip(docs, right)]
    assert [r['accuracy'] for r in records] == [float(correct) for correct in right]
    metrics = {'accuracy': sum(r['accuracy'] for r in records) / len(records)}  # lmms-eval's mean
    for name in names[1:]:
      metrics[name] = getattr(task_utils, name)([r[name] for r in records])
    assert_metrics_equal(metrics, dict(zip(names, want + [math.nan, math.nan])))


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
