"""The training loop: a job config in, checkpoints, logs and a trained model out.

    trainer = Trainer(config, workdir)     # builds or restores everything
    trainer.run()                           # trains to config.train.total_steps

`config` is a job config (see `configs/`): sections `model`, `runtime`, `mesh`, `data`,
`optimizer`, `train`, `checkpoint`, and optionally `objective` (`objective_of`: VidLaDA's
masked-diffusion loss by default). A work directory holds

    checkpoints/<step>/   vidlada-jax checkpoints with the optimizer state, step, RNG and the
                          input pipeline's position (`vidlada_jax.checkpoint`); the latest is
                          what a restarted run resumes from and what `vj.from_pretrained(WORKDIR)`
                          loads
    logs/                 TensorBoard event files and metrics.jsonl
    tokenizer.json        the tokenizer the data was tokenized with
    config.json           the job config as run

Saving is asynchronous (orbax `training.Checkpointer`) every `checkpoint.every` steps, keeping the
last `checkpoint.keep`, plus a final save at the end and on SIGTERM (preemption). The loss and
the weights are checked before every save (not only on logged steps): a non-finite one stops the
run without saving, so every checkpoint on disk is good and the latest is the last good one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint.experimental import v1 as ocp
from tqdm.auto import tqdm

from vidlada_jax import checkpoint as checkpoint_lib
from vidlada_jax import sharding as sharding_lib
from vidlada_jax.config import ModelConfig, Runtime, model_config
from vidlada_jax.loading import from_pretrained, init_model
from vidlada_jax.orbax_io import nest, flatten
from vidlada_jax.params import abstract_model, flat_params
from vidlada_jax.training import data as data_lib
from vidlada_jax.training.logs import MetricWriter
from vidlada_jax.training.optimizer import (OptimizerConfig, check_prefixes, is_frozen,
                                            make_optimizer)
from vidlada_jax.training.train_step import (CellColourPretraining, MaskedDiffusion, Objective,
                                             StepFunctions, TrainState, make_train_step,
                                             state_shardings)
from vidlada_jax.tower_pretraining import CellColours
from vidlada_jax.vidlada import VidLaDA

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or infinite; the run stopped without saving."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  total_steps: int
  global_batch: int  # sequences per optimizer step, all hosts together
  micro_batch: int  # sequences per forward/backward pass, all hosts together
  seed: int = 0
  log_every: int = 1
  loss_chunk: int = 1024  # masked positions per chunk of the vocabulary projection

  def __post_init__(self):
    if self.total_steps < 1:
      raise ValueError(f'total_steps must be positive, got {self.total_steps}')
    if self.global_batch % self.micro_batch:
      raise ValueError(f'global_batch {self.global_batch} is not a multiple of micro_batch '
                       f'{self.micro_batch}')

  @property
  def accumulation(self) -> int:
    return self.global_batch // self.micro_batch


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 1000  # steps between asynchronous saves
  keep: int = 3  # checkpoints kept (the latest ones)


def config_section(config, name: str) -> dict[str, Any]:
  """Section `name` of a job config as a plain dict ({} when the config has none)."""
  section = config.get(name)
  return {} if section is None else dict(section.to_dict() if hasattr(section, 'to_dict')
                                         else section)


def as_tuples(d: dict[str, Any]) -> dict[str, Any]:
  """ConfigDict lists -> tuples, recursively (the dataclasses are frozen and hashable)."""
  return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list)
          else v for k, v in d.items()}


def architecture_of(model_section: dict[str, Any]) -> ModelConfig:
  """`model.architecture` (a named one) with `model.overrides` applied: `lm` and `vision`
  hold fields of those parts, other keys fields of the whole `ModelConfig`."""
  overrides = dict(model_section.get('overrides') or {})
  config = model_config(model_section['architecture'])
  for part in ('lm', 'vision'):
    if overrides.get(part):
      config = config.replace(**{part: dataclasses.replace(getattr(config, part),
                                                           **overrides.pop(part))})
  return config.replace(**overrides)


OBJECTIVES = ('masked_diffusion', 'cell_colours')


def objective_of(section: dict[str, Any], train: TrainConfig) -> Objective:
  """The `objective` section: `name` is 'masked_diffusion' (VidLaDA's loss; the default, with
  `train.loss_chunk`) or 'cell_colours' (pretraining the tower and projector alone on a synthetic
  world; the other keys are `tower_pretraining.CellColours` fields: palette, background, ...)."""
  settings = dict(section)
  name = settings.pop('name', 'masked_diffusion')
  if name == 'masked_diffusion':
    if settings:
      raise ValueError(f'config.objective "masked_diffusion" takes no settings; got '
                       f'{", ".join(sorted(settings))} (its chunk is config.train.loss_chunk)')
    return MaskedDiffusion(chunk=train.loss_chunk)
  if name == 'cell_colours':
    fields = {f.name for f in dataclasses.fields(CellColours)}
    unknown = sorted(set(settings) - fields)
    if unknown:
      raise ValueError(f'config.objective "cell_colours" takes {", ".join(sorted(fields))}; '
                       f'unknown: {", ".join(unknown)}')
    return CellColourPretraining(CellColours(**settings))
  raise ValueError(f'config.objective.name must be one of {", ".join(OBJECTIVES)}, got {name!r}')


def check_batch_divides(train: TrainConfig, mesh, rules) -> None:
  batch_devices = sharding_lib.mesh_axis_size(mesh, dict(rules).get('batch'))
  if train.micro_batch % batch_devices:
    raise ValueError(f'micro_batch {train.micro_batch} does not divide over the {batch_devices} '
                     'devices the batch is split across (mesh axes of the `batch` rule): set '
                     'config.train.micro_batch')


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """A model's train step for one optimizer and mesh, and the shapes and shardings it takes."""

  functions: StepFunctions
  trainable: dict[str, jax.ShapeDtypeStruct]  # by path, unsharded
  frozen: dict[str, jax.ShapeDtypeStruct]
  param_shardings: dict[str, jax.sharding.Sharding]
  frozen_shardings: dict[str, jax.sharding.Sharding]
  state_shardings: TrainState
  step_fn: Callable

  def abstract_state(self) -> TrainState:
    """The train state as sharded ShapeDtypeStructs (restoring, compiling ahead of time)."""
    placed = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    shardings = self.state_shardings
    return TrainState(
        params={p: placed(x, self.param_shardings[p]) for p, x in self.trainable.items()},
        opt_state=jax.tree.map(placed, jax.eval_shape(self.functions.tx.init, self.trainable),
                               shardings.opt_state),
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings.step),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=shardings.rng))

  def abstract_frozen(self) -> dict[str, jax.ShapeDtypeStruct]:
    return {p: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.frozen_shardings[p])
            for p, x in self.frozen.items()}


def plan_step(config: ModelConfig, optimizer: OptimizerConfig, train: TrainConfig, mesh,
              rules, objective: Objective | None = None) -> StepPlan:
  """The jitted train step of a model of `config` (nothing allocated): which parameters train,
  the optimizer over them, and every sharding. The trainer and `vidlada_jax.launch.memory_plan`
  share it. The objective defaults to the masked-diffusion loss."""
  graphdef, abstract_state = abstract_model(config)
  shapes = {path: v.get_value() for path, v in flat_params(abstract_state).items()}
  check_prefixes(optimizer, shapes)
  trainable = {p: x for p, x in shapes.items() if not is_frozen(optimizer, p)}
  frozen = {p: x for p, x in shapes.items() if is_frozen(optimizer, p)}
  if not trainable:
    raise ValueError('every parameter is frozen: nothing to train')
  tx, schedule = make_optimizer(optimizer, trainable, train.total_steps)
  functions = StepFunctions(graphdef, abstract_state, tx, schedule,
                            objective=objective or MaskedDiffusion(chunk=train.loss_chunk))
  shardings = sharding_lib.target_shardings(abstract_state, mesh, rules)
  param_shardings = {p: shardings[p] for p in trainable}
  frozen_shardings = {p: shardings[p] for p in frozen}
  train_shardings = state_shardings(functions, trainable, param_shardings, mesh)
  step_fn = make_train_step(functions, mesh, rules, train_shardings, frozen_shardings)
  return StepPlan(functions, trainable, frozen, param_shardings, frozen_shardings,
                  train_shardings, step_fn)


class Trainer:

  def __init__(self, config, workdir: str | Path, *, progress: bool = True):
    self.config = config
    self.workdir = Path(workdir).absolute()
    self.primary = jax.process_index() == 0
    self.progress = progress and self.primary
    self.train_config = TrainConfig(**config_section(config, 'train'))
    self.checkpoint_config = CheckpointConfig(**config_section(config, 'checkpoint'))
    self.optimizer_config = OptimizerConfig(**as_tuples(config_section(config, 'optimizer')))
    self.objective = objective_of(config_section(config, 'objective'), self.train_config)
    self.runtime = Runtime(**config_section(config, 'runtime'))
    mesh_config = config_section(config, 'mesh')
    rules = mesh_config.get('rules', 'fsdp')
    self.rules = sharding_lib.RULE_SETS[rules] if isinstance(rules, str) else tuple(rules)
    self.mesh = sharding_lib.make_mesh(mesh_config.get('shape', dict(fsdp=-1)))
    check_batch_divides(self.train_config, self.mesh, self.rules)
    if self.train_config.global_batch % jax.process_count():
      raise ValueError(f'global_batch {self.train_config.global_batch} does not divide over '
                       f'{jax.process_count()} processes')

    if self.primary:
      self.workdir.mkdir(parents=True, exist_ok=True)
    multihost_utils.sync_global_devices('vidlada_workdir')
    self.checkpointer = ocp.training.Checkpointer(
        self.workdir / checkpoint_lib.TRAINING_STEPS,
        save_decision_policy=ocp.training.save_decision_policies.FixedIntervalPolicy(
            self.checkpoint_config.every),
        preservation_policy=ocp.training.preservation_policies.LatestN(
            self.checkpoint_config.keep))

    latest = self.checkpointer.latest
    model = self._build_model(resume_from=latest)
    self.model_config = model.config
    self._setup_step(model)
    del model

    self.tokenizer = data_lib.load_tokenizer(config_section(config, 'data'), self.workdir)
    self.data = data_lib.make_iterator(
        config_section(config, 'data'), self.tokenizer, self.model_config,
        per_host_batch=self.train_config.global_batch // jax.process_count(),
        seed=self.train_config.seed, workdir=self.workdir)
    if latest is not None:
      self._restore(latest.step)
    else:
      self.state = self._initial_state()
    self._write_run_files()

  # --- Building ---------------------------------------------------------------------------

  def _build_model(self, resume_from):
    """The model to train: restored shapes only when resuming (the weights come from the
    checkpoint), else initialised or loaded as `model.init_checkpoint` says."""
    model_section = config_section(self.config, 'model')
    if resume_from is not None:
      manifest = checkpoint_lib.read_manifest(resume_from.path)
      config = manifest.model.replace(runtime=self.runtime)
      return nnx.eval_shape(lambda: VidLaDA(config, rngs=nnx.Rngs(0)))
    init = model_section.get('init_checkpoint')
    if init:
      log.info('initialising from %s', init)
      return from_pretrained(init, mesh=self.mesh, rules=self.rules, runtime=self.runtime,
                             progress=self.progress)
    if not model_section.get('architecture'):
      raise ValueError('config.model needs `architecture` (a named architecture) or '
                       '`init_checkpoint` (a checkpoint to start from)')
    config = architecture_of(model_section).replace(runtime=self.runtime)
    return init_model(config, seed=model_section.get('seed', 0), mesh=self.mesh,
                      rules=self.rules)

  def _setup_step(self, model) -> None:
    self.plan = plan_step(model.config, self.optimizer_config, self.train_config, self.mesh,
                          self.rules, self.objective)
    self.step_fn = self.plan.step_fn
    # Concrete weights (a fresh or loaded model); abstract when resuming.
    values = {path: v.get_value() for path, v in flat_params(nnx.state(model)).items()}
    self._initial_values = values
    self.frozen = {p: values[p] for p in self.plan.frozen}

  def _initial_state(self) -> TrainState:
    params = {p: self._initial_values[p] for p in self.plan.trainable}
    opt_state = jax.jit(self.plan.functions.tx.init,
                        out_shardings=self.plan.state_shardings.opt_state)(params)
    replicated = self.plan.state_shardings.step
    step = jax.device_put(jnp.int32(0), replicated)
    rng = jax.device_put(jax.random.PRNGKey(self.train_config.seed), replicated)
    self._initial_values = None
    return TrainState(params=params, opt_state=opt_state, step=step, rng=rng)

  # --- Checkpoints -----------------------------------------------------------------------

  def _restore(self, step: int) -> None:
    """Parameters, optimizer state, step, RNG and the data position of checkpoint `step`,
    each array read straight into this run's shardings."""
    abstract = self.plan.abstract_state()
    params = nest({**abstract.params, **self.plan.abstract_frozen()})
    train_state = dict(opt_state=abstract.opt_state, step=abstract.step, rng=abstract.rng)
    restored = self.checkpointer.load_checkpointables(step, {
        'state': {checkpoint_lib.PARAMS: params},
        'train_state': train_state,
        'data_iterator': self.data,
    })
    values = flatten(restored['state'][checkpoint_lib.PARAMS])
    train_state = restored['train_state']
    self.frozen = {p: values[p] for p in self.frozen}
    self.state = TrainState(params={p: values[p] for p in self.plan.trainable},
                            opt_state=train_state['opt_state'], step=train_state['step'],
                            rng=train_state['rng'])
    self._initial_values = None
    if self.primary:
      log.info('resumed from step %d in %s', step, self.workdir)

  def _save(self, step: int, *, force: bool = False):
    values = {**self.state.params, **self.frozen}
    checkpointables, metadata = checkpoint_lib.checkpointables(values, self.model_config)
    checkpointables['train_state'] = dict(opt_state=self.state.opt_state, step=self.state.step,
                                          rng=self.state.rng)
    checkpointables['data_iterator'] = self.data
    return self.checkpointer.save_checkpointables_async(
        step, checkpointables, force=force, custom_metadata=metadata)

  def _write_run_files(self) -> None:
    if not self.primary:
      return
    (self.workdir / 'config.json').write_text(self.config.to_json_best_effort(indent=2)
                                              if hasattr(self.config, 'to_json_best_effort')
                                              else json.dumps(dict(self.config), indent=2))
    tokenizer_file = self.workdir / 'tokenizer.json'
    if not tokenizer_file.exists():
      self.tokenizer.save(str(tokenizer_file))

  # --- The loop --------------------------------------------------------------------------

  def run(self) -> dict[str, Any]:
    """Trains to `total_steps` (or until preempted); returns a summary."""
    total = self.train_config.total_steps
    start_step = int(self.state.step)
    writer = MetricWriter(self.workdir / 'logs') if self.primary else None
    preempted = _PreemptionFlag()
    bar = tqdm(total=total, initial=start_step, unit='step', disable=not self.progress,
               desc='train', dynamic_ncols=True)
    summary = dict(start_step=start_step, preempted=False)
    step = start_step
    interval_start, interval_steps = time.perf_counter(), 0
    try:
      while step < total:
        host_batch = next(self.data)
        batch = data_lib.device_batch(host_batch, self.mesh, self.rules, self.train_config,
                                      pad_id=self.model_config.tokens.eos)
        self.state, metrics = self.step_fn(self.state, self.frozen, batch)
        step += 1
        interval_steps += 1
        logged = step % self.train_config.log_every == 0 or step == total
        saving = step < total and self.checkpointer.should_save(step)
        stopping = preempted.check(step)
        if logged or saving or stopping:
          # Replicated scalars: every process reads its own copy. Checked before anything is
          # saved, so every checkpoint on disk holds finite weights.
          scalars = {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}
          self._check_finite(scalars, step)
          del scalars['params_finite']
        if logged:
          # Over the interval since the last log: steps are dispatched asynchronously, so one
          # step's wall time would also hold the queued ones'.
          seconds = (time.perf_counter() - interval_start) / interval_steps
          tokens = int(np.prod(batch['input_ids'].shape))  # global
          scalars.update(step_time_s=seconds, tokens_per_s=tokens / seconds)
          if 'skipped' in host_batch:  # unreadable videos so far (this host's count)
            scalars['skipped_videos'] = int(np.asarray(host_batch['skipped']).reshape(-1)[0])
          if writer:
            writer.write(step, scalars)
          bar.set_postfix(loss=f'{scalars["loss"]:.4f}', lr=f'{scalars["learning_rate"]:.2e}')
          interval_start, interval_steps = time.perf_counter(), 0
        bar.update(1)
        if saving:
          self._save(step)
        if stopping:
          log.warning('preempted at step %d: saving a checkpoint and stopping', step)
          self._save(step, force=True)
          summary['preempted'] = True
          break
      else:
        if not any(c.step == step for c in self.checkpointer.checkpoints):
          self._save(step, force=True)
    finally:
      self.checkpointer.wait()  # saves in flight hold good states: let them finish
      preempted.restore()
      bar.close()
      if writer:
        writer.close()
    summary.update(end_step=step, workdir=str(self.workdir))
    return summary

  def _check_finite(self, scalars: dict[str, float], step: int) -> None:
    problem = (f'the loss is {scalars["loss"]}' if not math.isfinite(scalars['loss']) else
               'the weights are not finite' if not scalars['params_finite'] else None)
    if problem:
      raise NonFiniteLoss(
          f'{problem} at step {step}; stopping without saving. The last good checkpoint is '
          f'{self._latest_description()}. Lower the learning rate or check the data '
          '(config.optimizer, config.data).')

  def _latest_description(self) -> str:
    latest = self.checkpointer.latest
    return (f'step {latest.step} in {self.workdir / checkpoint_lib.TRAINING_STEPS}'
            if latest else 'none (no checkpoint was saved yet)')

  def close(self) -> None:
    self.checkpointer.close()


class _PreemptionFlag:
  """SIGTERM asks for a final checkpoint. One process: the signal's own flag. Several: JAX's
  preemption sync point, so that every process saves at the same step."""

  def __init__(self):
    self.requested = False
    self.multihost = jax.process_count() > 1
    self._previous = None
    if not self.multihost:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    self.requested = True

  def check(self, step: int) -> bool:
    if self.multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
