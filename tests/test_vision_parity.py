"""The vision tower against transformers' SiglipVisionModel: features = hidden_states[-2]."""

import numpy as np
import pytest

import vidlada_jax as vj
from tests import torch_reference as ref

TOLERANCE = 1e-5  # max |ours - torch| / max |torch|, float32


@pytest.fixture(scope='module')
def siglip():
  return ref.tiny_siglip(num_layers=3, seed=1)


@pytest.fixture(scope='module')
def pixels():
  return np.random.default_rng(1).uniform(-1, 1, size=(2, 384, 384, 3)).astype(np.float32)


@pytest.mark.parametrize('prefix', ['', 'vision_model.', ref.VISION_PREFIX])
def test_standalone_siglip_matches_transformers(tmp_path, siglip, pixels, prefix):
  tensors = {prefix + k.removeprefix('vision_model.'): v for k, v in siglip.state_dict().items()}
  assert any(k.startswith(prefix + 'head.') for k in tensors)  # the pooling head is present
  directory = ref.write_checkpoint(tmp_path / 'siglip', tensors, siglip.config.to_dict())
  model = vj.from_pretrained(directory, dtype='float32', progress=False)
  assert model.lm is None
  assert model.config.vision.num_layers == 2  # a standalone tower drops its last layer
  ours = np.asarray(model.vision_tower(pixels))
  expected = ref.siglip_features(siglip, pixels).numpy()
  error = ref.max_relative_error(ours, expected)
  print(f'vision parity (prefix {prefix!r}): max relative error {error:.2e}')
  assert ours.shape == (2, 729, 32)
  assert error < TOLERANCE


def test_full_siglip_model_text_tower_is_ignored(tmp_path, siglip, pixels):
  import torch

  tensors = {'vision_model.' + k.removeprefix('vision_model.'): v
             for k, v in siglip.state_dict().items()}
  tensors['text_model.embeddings.token_embedding.weight'] = torch.zeros(10, 4)
  tensors['logit_scale'] = torch.zeros(1)
  config = dict(model_type='siglip', vision_config=siglip.config.to_dict(), text_config={})
  directory = ref.write_checkpoint(tmp_path / 'full', tensors, config)
  model = vj.from_pretrained(directory, dtype='float32', progress=False)
  expected = ref.siglip_features(siglip, pixels).numpy()
  assert ref.max_relative_error(np.asarray(model.vision_tower(pixels)), expected) < TOLERANCE


def test_encode_video_needs_a_language_model(tmp_path, siglip, pixels):
  directory = ref.write_checkpoint(tmp_path / 's', siglip.state_dict(), siglip.config.to_dict())
  model = vj.from_pretrained(directory, dtype='float32', progress=False)
  with pytest.raises(ValueError, match='needs a language model'):
    model.encode_video(pixels)
  with pytest.raises(ValueError, match='needs a language model'):
    model.lm_logits(np.zeros((1, 4), np.int32))
