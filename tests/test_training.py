"""The trainer: optimizer recipe, the accumulated train step, and runs of `vidlada_jax.launch.train`
(resume after SIGKILL, preemption, a non-finite loss, the tiny curriculum)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vidlada_jax as vj
from vidlada_jax.objective import masked_diffusion_loss
from vidlada_jax.params import flat_params
from vidlada_jax.training import OptimizerConfig, TrainState, make_optimizer, train_step
from vidlada_jax.training.logs import read_metrics
from vidlada_jax.training.optimizer import check_prefixes, group_of, is_frozen, schedule
from vidlada_jax.training.train_step import MaskedDiffusion, StepFunctions

ROOT = Path(__file__).parent.parent


# --- The optimizer ------------------------------------------------------------------------

def test_schedule_is_linear_warmup_then_cosine():
  config = OptimizerConfig(warmup_ratio=0.25)
  lr = schedule(config, 1e-5, total_steps=8)  # 2 warm-up steps, then 6 of cosine
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(1)), 0.5e-5, rtol=1e-6)
  for step in range(2, 9):
    expected = 1e-5 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 6))
    np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-5, atol=1e-12)


def test_module_learning_rates_freezing_and_clipping():
  config = OptimizerConfig(learning_rate=1e-3, module_learning_rates=(('vision_tower', 1e-4),),
                           frozen=('lm/embed_tokens',), warmup_ratio=0.0, clip_norm=1.0)
  assert group_of(config, 'vision_tower/head/kernel') == 'vision_tower'
  assert group_of(config, 'vision_towers/x') == 'default'  # a prefix is a whole path segment
  assert is_frozen(config, 'lm/embed_tokens/embedding') and not is_frozen(config, 'lm/norm/w')
  with pytest.raises(ValueError, match=r"\['vison_tower'\] that match no parameter"):
    check_prefixes(OptimizerConfig(frozen=('vison_tower',)), ['vision_tower/a', 'lm/b'])

  params = {'vision_tower/w': jnp.ones(4), 'lm/w': jnp.ones(4)}
  tx, _ = make_optimizer(config, params, total_steps=10)
  grads = {'vision_tower/w': jnp.full(4, 3.0), 'lm/w': jnp.full(4, 4.0)}  # global norm 10
  updates, _ = tx.update(grads, tx.init(params), params)
  # Clipped to norm 1 (x0.1), then Adam's first step moves each weight by its group's
  # learning rate: m / sqrt(v) = g / |g| = 1 (up to eps).
  np.testing.assert_allclose(updates['vision_tower/w'], -1e-4, rtol=1e-4)
  np.testing.assert_allclose(updates['lm/w'], -1e-3, rtol=1e-4)


# --- The train step -----------------------------------------------------------------------

@pytest.mark.parametrize('accumulation', [1, 2])
def test_accumulated_step_averages_the_micro_batch_gradients(accumulation):
  """One or two micro-batches in one step (one takes the path without a loop): the update is the
  mean of each micro-batch's gradient, computed here directly with jax.grad of the objective."""
  model = vj.init_model(vj.model_config('tiny-lm'), seed=2)
  graphdef, state = nnx.split(model)
  values = {p: v.get_value() for p, v in flat_params(state).items()}
  frozen_path = 'lm/embed_tokens/embedding'
  trainable = {p: v for p, v in values.items() if p != frozen_path}
  frozen = {frozen_path: values[frozen_path]}
  functions = StepFunctions(graphdef, nnx.split(nnx.eval_shape(lambda: model))[1],
                            optax.sgd(1.0), lambda step: 1.0, objective=MaskedDiffusion(chunk=16))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 500, size=(accumulation, 3, 24)).astype(np.int32)  # [acc., micro, L]
  labels = np.where(rng.random(ids.shape) < 0.7, ids, -100).astype(np.int32)
  batch = {'input_ids': jnp.asarray(ids), 'labels': jnp.asarray(labels)}
  key = jax.random.PRNGKey(7)
  state0 = TrainState(params=trainable, opt_state=functions.tx.init(trainable),
                      step=jnp.int32(3), rng=key)

  new_state, metrics = jax.jit(lambda s, f, b: train_step(functions, s, f, b))(
      state0, frozen, batch)

  def loss(params, i):
    merged = functions.model({**params, **frozen})
    step_key = jax.random.fold_in(jax.random.fold_in(key, 3), i)
    return masked_diffusion_loss(merged, batch['input_ids'][i], batch['labels'][i], step_key,
                                 chunk=16)[0]

  grads = [jax.grad(loss)(trainable, i) for i in range(accumulation)]
  losses = [float(loss(trainable, i)) for i in range(accumulation)]
  np.testing.assert_allclose(float(metrics['loss']), np.mean(losses), rtol=1e-6)
  for path in trainable:
    expected = trainable[path] - sum(g[path] for g in grads) / accumulation
    np.testing.assert_allclose(new_state.params[path], expected, rtol=1e-5, atol=1e-7)
  assert int(new_state.step) == 4 and frozen_path not in new_state.params


# --- Runs of the launcher -----------------------------------------------------------------

def launch(workdir, *args, wait=True, env=None, stages=''):
  """`python -m vidlada_jax.launch.train` on the tiny config; returns the finished process or the
  Popen."""
  cmd = [sys.executable, '-m', 'vidlada_jax.launch.train', f'--config=configs/tiny.py{stages}',
         f'--workdir={workdir}', '--noprogress', *args]
  environment = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  environment.update(env or {})
  process = subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  if not wait:
    return process
  output = process.communicate(timeout=600)[0]
  process.output = output
  return process


def losses_by_step(workdir) -> dict[int, float]:
  """The last loss logged for each step (a resumed run logs the steps it redoes again)."""
  return {record['step']: record['loss'] for record in read_metrics(Path(workdir) / 'logs')}


def wait_for_step(workdir, step: int, process, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError(f'the run ended early:\n{process.stdout.read()[-3000:]}')
    if max(losses_by_step(workdir), default=0) >= step:
      return
    time.sleep(0.2)
  raise AssertionError(f'step {step} not reached in {timeout} s')


def checkpoint_steps(workdir) -> list[int]:
  steps = Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in steps.iterdir() if p.name.isdigit()) if steps.exists() else []


SHORT = ':steps=9,clips=16'


def test_resume_after_sigkill_is_exact(tmp_path):
  """A run killed with SIGKILL and started again logs the same loss at every step, bit for
  bit, as a run that was never interrupted."""
  flags = ['--config.checkpoint.every=3']
  whole = launch(tmp_path / 'whole', *flags, stages=SHORT)
  assert whole.returncode == 0, whole.output[-3000:]
  reference = losses_by_step(tmp_path / 'whole')
  assert sorted(reference) == list(range(1, 10))

  killed = tmp_path / 'killed'
  process = launch(killed, *flags, stages=SHORT, wait=False)
  wait_for_step(killed, 5, process)  # checkpoint 3 is written; steps 4-5 are lost
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert max(losses_by_step(killed)) < 9
  saved = max(checkpoint_steps(killed))
  logged_before = len(read_metrics(killed / 'logs'))
  resumed = launch(killed, *flags, stages=SHORT)
  assert resumed.returncode == 0, resumed.output[-3000:]
  # A resume, not a restart (deterministic data and init would log the same losses either way):
  # the second run starts at the step after the checkpoint and says so.
  assert f'resumed from step {saved} ' in resumed.output
  second_run = [r['step'] for r in read_metrics(killed / 'logs')[logged_before:]]
  assert second_run == list(range(saved + 1, 10)), second_run
  assert losses_by_step(killed) == reference
  assert checkpoint_steps(killed)[-1] == 9


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
  workdir = tmp_path / 'run'
  process = launch(workdir, '--config.checkpoint.every=1000', stages=':steps=40,clips=16',
                   wait=False)
  wait_for_step(workdir, 2, process)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=300)[0]
  assert process.returncode == 0, output[-3000:]
  assert 'preempted' in output
  (saved,) = checkpoint_steps(workdir)  # only the preemption checkpoint
  assert saved == max(losses_by_step(workdir)) and saved < 40
  resumed = launch(workdir, f'--config.train.total_steps={saved + 2}',
                   '--config.checkpoint.every=1000', stages=':steps=40,clips=16')
  assert resumed.returncode == 0, resumed.output[-3000:]
  assert f'resumed from step {saved}' in resumed.output
  assert sorted(losses_by_step(workdir))[-2:] == [saved + 1, saved + 2]


def test_non_finite_weights_are_never_saved(tmp_path):
  """Logging every 10 steps and saving every step: each save is checked, not only logged steps,
  and the checkpoint the message names holds finite weights."""
  workdir = tmp_path / 'run'
  run = launch(workdir, '--config.optimizer.learning_rate=1e30',
               '--config.optimizer.module_learning_rates=()',
               '--config.optimizer.warmup_ratio=0.0', '--config.optimizer.clip_norm=0.0',
               '--config.train.log_every=10', '--config.checkpoint.every=1',
               stages=':steps=12,clips=16')
  assert run.returncode == 1, run.output[-3000:]
  assert 'stopping without saving' in run.output
  assert 'the loss is' in run.output or 'the weights are not finite' in run.output
  saved = checkpoint_steps(workdir)
  assert saved and max(saved) < 10, saved  # it stopped before the first logged step
  assert f'The last good checkpoint is step {max(saved)} ' in run.output
  for step in saved:
    state = nnx.state(vj.from_pretrained(workdir / 'checkpoints' / str(step), progress=False))
    assert all(np.all(np.isfinite(np.asarray(v.get_value())))
               for v in flat_params(state).values()), step


def test_tiny_curriculum_through_the_launcher(tmp_path):
  """Three stages, each from the previous one's work directory; stage 3 freezes the tower."""
  stage1, stage2, stage3 = (tmp_path / f'stage{i}' for i in (1, 2, 3))
  for stage, workdir, init in ((1, stage1, ''), (2, stage2, stage1), (3, stage3, stage2)):
    knobs = f':stage={stage},steps=3,clips=16' + (f',init={init}' if init else '')
    run = launch(workdir, stages=knobs)
    assert run.returncode == 0, run.output[-3000:]
    assert f'finished at step 3: {workdir}' in run.output
  assert json.loads((stage2 / 'config.json').read_text())['model']['init_checkpoint'] == str(stage1)

  def params(workdir):
    state = nnx.state(vj.from_pretrained(workdir, progress=False))
    return {p: np.asarray(v.get_value()) for p, v in flat_params(state).items()}

  two, three = params(stage2), params(stage3)
  vision = [p for p in two if p.startswith('vision_tower/')]
  others = [p for p in two if not p.startswith('vision_tower/')]
  assert vision and all(np.array_equal(two[p], three[p]) for p in vision)  # frozen in stage 3
  assert sum(not np.array_equal(two[p], three[p]) for p in others) > len(others) // 2
  assert two['lm/norm/weight'].shape == three['lm/norm/weight'].shape


def test_tiny_config_loss_goes_down(tmp_path):
  """The default tiny job (60 steps, about a minute here) learns its clips."""
  run = launch(tmp_path / 'run')
  assert run.returncode == 0, run.output[-3000:]
  losses = [loss for _, loss in sorted(losses_by_step(tmp_path / 'run').items())]
  assert len(losses) == 60
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
  # TensorBoard reads the same scalars back from the event files.
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(tmp_path / 'run' / 'logs'))
  events.Reload()
  for tag in ('loss', 'learning_rate', 'grad_norm', 'tokens_per_s', 'step_time_s'):
    assert [e.step for e in events.Scalars(tag)] == list(range(1, 61)), tag
  np.testing.assert_allclose([e.value for e in events.Scalars('loss')], losses, rtol=1e-6)


def test_a_corrupt_video_is_skipped_and_counted_not_fatal(tmp_path):
  from vidlada_jax.input_pipeline import write_synthetic_dataset

  mixture = write_synthetic_dataset(tmp_path / 'data', 12, num_frames_in_video=8)
  videos = sorted((tmp_path / 'data' / 'videos').iterdir())
  videos[0].write_bytes(b'not a video')
  videos[1].unlink()
  run = launch(tmp_path / 'run', '--config.data.source=mixture',
               f'--config.data.mixture={mixture}', stages=':steps=4')
  assert run.returncode == 0, run.output[-3000:]
  assert str(videos[1]) in run.output  # logged with its path
  counts = [r['skipped_videos'] for r in read_metrics(tmp_path / 'run' / 'logs')]
  assert len(counts) == 4 and counts == sorted(counts) and counts[-1] >= 2


def test_a_bug_during_training_is_not_reported_as_bad_input(tmp_path, monkeypatch, capsys):
  """vidlada_jax.launch.train answers a bad job config with a one-line error (exit 2), but a
  ValueError raised while training is a bug: it surfaces with its traceback."""
  from absl import flags

  from vidlada_jax import configs
  from vidlada_jax.launch import train
  from vidlada_jax.training import Trainer

  def run_with(config):
    # This process simulates 8 devices: batch=16 gives micro-batches of 8, which split over them.
    flags.FLAGS(configs.resolve_flag(['train', f'--config=configs/tiny.py{config},batch=16',
                                      f'--workdir={tmp_path / "run"}', '--noprogress']))
    try:
      return train.main(['train'])
    finally:
      flags.FLAGS.unparse_flags()

  monkeypatch.chdir(ROOT)
  # A job that names a checkpoint that is not there: an error line, exit 2.
  assert run_with(f':steps=2,clips=16,init={tmp_path / "nowhere"}') == 2
  assert 'nowhere' in capsys.readouterr().err

  def broken(self):
    raise ValueError('a bug in the training loop')

  monkeypatch.setattr(Trainer, 'run', broken)
  with pytest.raises(ValueError, match='a bug in the training loop'):
    run_with(':steps=2,clips=16')
