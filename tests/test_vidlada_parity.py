"""The whole model on a combined LLaDA-V/VidLaDA checkpoint against an independent torch
pipeline."""

import numpy as np
import pytest

import vidlada_jax as vj
from tests import torch_reference as ref

TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def torch_model():
  return ref.TinyVidLaDA(seed=0)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory, torch_model):
  directory = tmp_path_factory.mktemp('combined')
  return ref.write_checkpoint(directory, torch_model.state_dict(), torch_model.config(), shards=2)


@pytest.fixture(scope='module')
def model(checkpoint):
  return vj.from_pretrained(checkpoint, dtype='float32', progress=False)


@pytest.fixture(scope='module')
def pixels():
  return np.random.default_rng(2).uniform(-1, 1, size=(2, 2, 384, 384, 3)).astype(np.float32)


def test_encode_video_matches_torch(model, torch_model, pixels):
  ours = np.asarray(model.encode_video(pixels[0]))
  expected = torch_model.visual_tokens(pixels[0]).numpy()
  assert ours.shape == (2 * 210, 64)
  error = ref.max_relative_error(ours, expected)
  print(f'encode_video parity: max relative error {error:.2e}')
  assert error < TOLERANCE


def test_multimodal_logits_match_torch(model, torch_model, pixels):
  ids = np.array([[126080, 5, 17, -200, 9, 126348, 126336, 126336],
                  [126080, -200, 3, 4, 5, 6, 126336, 126336]], np.int32)
  ours = np.asarray(model(ids, pixels))
  expected = torch_model.logits(ids, pixels)
  assert ours.shape == (2, 8 - 1 + 2 * 210, 126464)
  error = ref.max_relative_error(ours, expected)
  print(f'multimodal logits parity: max relative error {error:.2e}')
  assert error < TOLERANCE


def test_stored_27th_layer_is_optional(tmp_path, torch_model, model, pixels):
  directory = ref.write_checkpoint(
      tmp_path / 'no_extra', torch_model.state_dict(include_extra_layer=False),
      torch_model.config())
  trimmed = vj.from_pretrained(directory, dtype='float32', progress=False)
  np.testing.assert_array_equal(
      np.asarray(trimmed.encode_video(pixels[0])), np.asarray(model.encode_video(pixels[0])))


def test_prompt_without_image_placeholder_is_an_error(model, pixels):
  with pytest.raises(ValueError, match='exactly one'):
    model(np.array([[1, 2, 3]], np.int32), pixels[:1])
  with pytest.raises(ValueError, match='row 0 .* 2 <image>'):
    model(np.array([[1, -200, -200]], np.int32), pixels[:1])
