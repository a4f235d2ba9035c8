"""Stage 0 of the demo: per-cell colour presence as a tower objective, and the trainer running
it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vidlada_jax as vj
from vidlada_jax.params import flat_params
from vidlada_jax.tower_pretraining import CellColours
from vidlada_jax.training import TrainConfig, TrainState, train_step
from vidlada_jax.training.train_step import CellColourPretraining, MaskedDiffusion, StepFunctions
from vidlada_jax.training.trainer import objective_of

BACKGROUND = (20, 20, 20)
RED, GREY, BLUE = (220, 40, 40), (128, 128, 128), (40, 80, 230)
OBJECTIVE = CellColours(palette=(GREY, RED, BLUE), background=BACKGROUND)


def frame_with_objects() -> np.ndarray:
  """64 x 64 (16-px patches): an 8-px red square inside patch (1, 2), a grey 16-px square
  straddling patches (2, 0)-(3, 1), a 1-px blue line 3 pixels long in patch (0, 3), and the red
  square's colour off by up to 25 (what a video codec does)."""
  frame = np.zeros((64, 64, 3), np.uint8)
  frame[:] = BACKGROUND
  frame[20:28, 36:44] = np.asarray(RED) + np.array([25, -20, 10])
  frame[24:40, 8:24] = GREY
  frame[5, 52:55] = BLUE
  return frame


def test_patch_labels_are_the_colours_covering_enough_of_each_patch():
  labels = np.asarray(OBJECTIVE.patch_labels(jnp.asarray(frame_with_objects()[None]), 16))[0]
  expected = np.zeros((4, 4, 3), bool)
  expected[1, 2, 1] = True  # red, despite the colour shift
  # The grey square covers 8 x 8 pixels of each of the four patches it straddles.
  expected[1, 0, 0] = expected[1, 1, 0] = expected[2, 0, 0] = expected[2, 1, 0] = True
  # The blue line covers 3 pixels: fewer than min_pixels (4).
  np.testing.assert_array_equal(labels, expected)
  lenient = CellColours(palette=(GREY, RED, BLUE), background=BACKGROUND, min_pixels=3)
  assert np.asarray(lenient.patch_labels(jnp.asarray(frame_with_objects()[None]), 16))[0, 0, 3, 2]
  strict = CellColours(palette=(GREY, RED, BLUE), background=BACKGROUND, tolerance=20)
  assert not np.asarray(
      strict.patch_labels(jnp.asarray(frame_with_objects()[None]), 16))[0, 1, 2, 1]


def test_token_labels_hold_region_presence_then_each_pooled_patch():
  patches = np.zeros((1, 4, 4, 3), bool)
  patches[0, 1, 2, 1] = True  # pooled token (0, 1), its patch (1, 0) within the region
  patches[0, 3, 3, 2] = True  # pooled token (1, 1), its patch (1, 1)
  labels = np.asarray(OBJECTIVE.token_labels(jnp.asarray(patches), 2))
  assert labels.shape == (1, 2, 2, 3 * 5)
  expected = np.zeros((2, 2, 15), np.float32)
  expected[0, 1, 1] = 1  # region: red
  expected[0, 1, 3 + 2 * 3 + 1] = 1  # patch (1, 0) of the region, red
  expected[1, 1, 2] = 1
  expected[1, 1, 3 + 3 * 3 + 2] = 1  # patch (1, 1), blue
  np.testing.assert_array_equal(labels[0], expected)


def test_readout_is_fixed_orthonormal_and_scaled():
  readout = OBJECTIVE.readout(128, 2)
  assert readout.shape == (128, 15)
  np.testing.assert_allclose(readout.T @ readout, OBJECTIVE.readout_gain ** 2 * np.eye(15),
                             atol=1e-4)
  np.testing.assert_array_equal(readout, OBJECTIVE.readout(128, 2))  # seeded
  with pytest.raises(ValueError, match='cannot hold 15 independent labels'):
    OBJECTIVE.readout(8, 2)


def test_bad_settings_and_models_are_named():
  with pytest.raises(ValueError, match='RGB triples'):
    CellColours(palette=((300, 0, 0),), background=BACKGROUND)
  with pytest.raises(ValueError, match='at least one colour'):
    CellColours(palette=(), background=BACKGROUND)
  tiny = vj.init_model(vj.model_config('tiny'), seed=0)  # 27 patches a side, stride 2
  with pytest.raises(ValueError, match='27 patches a side do not divide by pool_stride 2'):
    OBJECTIVE.loss(tiny, jnp.zeros((1, 384, 384, 3), jnp.uint8))


def test_objective_section_of_a_job_config():
  train = TrainConfig(total_steps=1, global_batch=1, micro_batch=1, loss_chunk=32)
  assert objective_of({}, train) == MaskedDiffusion(chunk=32)
  colours = objective_of({'name': 'cell_colours', 'palette': [[1, 2, 3]],
                          'background': [0, 0, 0], 'min_pixels': 2}, train)
  assert colours == CellColourPretraining(CellColours(palette=((1, 2, 3),), background=(0, 0, 0),
                                                      min_pixels=2))
  with pytest.raises(ValueError, match='unknown: colours'):
    objective_of({'name': 'cell_colours', 'colours': []}, train)
  with pytest.raises(ValueError, match='must be one of masked_diffusion, cell_colours'):
    objective_of({'name': 'siglip'}, train)
  with pytest.raises(ValueError, match='takes no settings'):
    objective_of({'name': 'masked_diffusion', 'palette': []}, train)


def test_demo_stage_zero_reads_every_colour_the_task_draws():
  """configs/demo.py:stage=tower labels the square, the six flash colours and the ball, each
  distinct from the background beyond the tolerance, and freezes the LM."""
  from vidlada_jax.configs import demo
  from vidlada_jax.input_pipeline import synthetic_qa

  config = demo.get_config('stage=tower')
  objective = objective_of(dict(config.objective), TrainConfig(
      total_steps=1, global_batch=1, micro_batch=1, loss_chunk=32)).objective
  drawn = {synthetic_qa.NEUTRAL_SQUARE, synthetic_qa.BALL, *synthetic_qa.COLOURS.values()}
  assert set(objective.palette) == {tuple(c) for c in drawn} and len(objective.palette) == 8
  background = np.array(objective.background)
  assert min(np.linalg.norm(np.array(c) - background)
             for c in objective.palette) > objective.tolerance
  assert tuple(config.optimizer.frozen) == ('lm', 'image_newline')
  qa = demo.get_config('init=/runs/demo-tower')
  assert qa.model.init_checkpoint == '/runs/demo-tower' and qa.objective.name == 'masked_diffusion'
  assert tuple(qa.optimizer.frozen) == ('vision_tower', 'mm_projector')
  with pytest.raises(ValueError, match='stage=tower starts from random weights'):
    demo.get_config('stage=tower,init=/runs/x')


def test_train_step_teaches_the_tower_and_leaves_the_lm_alone():
  """Steps of the cell-colour objective through the trainer's step function: the loss and the
  wrong labels fall on a fixed batch, only the tower and projector are given to the optimizer,
  and the wrong-label count is what the objective computes."""
  model = vj.init_model(vj.model_config('demo'), seed=0)
  graphdef, state = nnx.split(model)
  values = {p: v.get_value() for p, v in flat_params(state).items()}
  trainable = {p: v for p, v in values.items() if p.startswith(('vision_tower', 'mm_projector'))}
  frozen = {p: v for p, v in values.items() if p not in trainable}
  tx = optax.adam(3e-3)
  functions = StepFunctions(graphdef, nnx.split(nnx.eval_shape(lambda: model))[1], tx,
                            lambda step: 3e-3, objective=CellColourPretraining(OBJECTIVE))
  assert functions.metric_names[-2:] == ('label_errors', 'params_finite')
  frames = np.stack([np.roll(frame_with_objects(), shift, axis=(0, 1))
                     for shift in [(0, 0), (16, 16), (32, 0), (0, 32)]])
  batch = {'frames': jnp.asarray(frames[None])}  # [accumulation, micro, H, W, 3]
  state = TrainState(params=trainable, opt_state=tx.init(trainable), step=jnp.int32(0),
                     rng=jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: train_step(functions, s, frozen, b))
  first_loss, first_errors = OBJECTIVE.loss(functions.model(values), jnp.asarray(frames))
  history = []
  for _ in range(40):
    state, metrics = step(state, batch)
    history.append((float(metrics['loss']), int(metrics['label_errors'])))
  assert history[0] == pytest.approx((float(first_loss), int(first_errors)), rel=1e-5)
  assert history[-1][0] < 0.5 * history[0][0] and history[-1][1] < history[0][1]
  assert set(state.params) == set(trainable)
