"""The masked-diffusion loss against a direct float64 computation, its masking statistics, and
gradients."""

import dataclasses
import jax
import numpy as np
import pytest
import torch
from flax import nnx

import vidlada_jax as vj
from tests import torch_reference as ref
from vidlada_jax.objective import IGNORE, masked_diffusion_loss

MASK = vj.TokenIds().mask


def log_softmax64(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def expected_loss(logits: np.ndarray, labels: np.ndarray, masked: np.ndarray, p: np.ndarray):
  """SPEC 3 in float64: mean_b sum_{masked i} CE / (p_b * n_b)."""
  log_probs = log_softmax64(logits)
  per_sample = []
  for b in range(labels.shape[0]):
    n = (labels[b] != IGNORE).sum()
    ce = sum(-log_probs[b, i, labels[b, i]] for i in np.flatnonzero(masked[b]))
    per_sample.append(ce / (p[b] * n))
  return float(np.mean(per_sample))


@pytest.fixture(scope='module')
def llama():
  return ref.tiny_llama(seed=31)


@pytest.fixture(scope='module')
def lm(tmp_path_factory, llama):
  directory = ref.write_checkpoint(tmp_path_factory.mktemp('lm'), llama.state_dict(),
                                   llama.config.to_dict())
  return vj.from_pretrained(directory, dtype='float32', progress=False)


def text_batch(seed=0, batch=3, length=20):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 126000, size=(batch, length)).astype(np.int32)
  labels = np.where(rng.uniform(size=ids.shape) < 0.6, ids, IGNORE).astype(np.int32)
  return ids, labels


def test_text_loss_equals_float64_reference(lm, llama):
  ids, labels = text_batch()
  loss, aux = masked_diffusion_loss(lm, ids, labels, jax.random.key(0), chunk=7)
  masked, p = np.array(aux.masked), np.asarray(aux.p, np.float64)  # writable for torch
  assert masked.any() and not (masked & (labels == IGNORE)).any()

  with torch.no_grad():
    embeds = llama.model.embed_tokens(torch.from_numpy(ids).long())
    embeds[torch.from_numpy(masked)] = llama.model.embed_tokens.weight[MASK]
  logits = ref.bidirectional_logits(llama, inputs_embeds=embeds)
  expected = expected_loss(logits, labels, masked, p)
  print(f'loss {float(loss):.6f}, float64 reference {expected:.6f}')
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(aux.p), (1 - 1e-3) * np.asarray(aux.t) + 1e-3, rtol=1e-6)


def test_multimodal_loss_never_masks_visual_tokens(tmp_path):
  torch_model = ref.TinyVidLaDA(seed=13)
  directory = ref.write_checkpoint(tmp_path, torch_model.state_dict(), torch_model.config())
  model = vj.from_pretrained(directory, dtype='float32', progress=False)
  ids = np.array([[126080, 5, -200, 6, 7, 8, 9, 10], [126080, -200, 3, 4, 5, 6, 7, 8]], np.int32)
  labels = np.where(ids == -200, IGNORE, ids).astype(np.int32)
  labels[:, 1] = IGNORE
  pixels = np.random.default_rng(2).uniform(-1, 1, size=(2, 1, 384, 384, 3)).astype(np.float32)
  loss, aux = masked_diffusion_loss(model, ids, labels, jax.random.key(5), pixels)
  masked = np.array(aux.masked)  # writable for torch
  assert masked.shape == (2, 8 - 1 + 210)
  # visual tokens sit at [2, 212) and [1, 211): never masked
  assert not masked[0, 2:212].any() and not masked[1, 1:211].any()
  assert list(np.asarray(aux.num_labels)) == [6, 7]

  # float64 reference on the torch model: spliced labels, masked embeddings, CE.
  spliced_labels = []
  rows = []
  for b in range(2):
    at = int(np.flatnonzero(ids[b] == -200)[0])
    spliced_labels.append(
        np.concatenate([labels[b, :at], np.full(210, IGNORE), labels[b, at + 1:]]))
    with torch.no_grad():
      embed = torch_model.lm.model.embed_tokens
      row = torch.cat([embed(torch.from_numpy(ids[b, :at]).long()),
                       torch_model.visual_tokens(pixels[b]),
                       embed(torch.from_numpy(ids[b, at + 1:]).long())])
      row[torch.from_numpy(masked[b])] = embed.weight[MASK]
    rows.append(row)
  logits = ref.bidirectional_logits(torch_model.lm, inputs_embeds=torch.stack(rows))
  expected = expected_loss(logits, np.stack(spliced_labels), masked, np.asarray(aux.p, np.float64))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_masking_follows_p():
  model = vj.init_model(vj.ModelConfig(lm=dataclasses.replace(
      vj.config.TINY_LM, vocab_size=512, hidden_size=32, num_layers=1, num_heads=2,
      num_kv_heads=2, intermediate_size=64), vision=None))
  batch, length = 16, 4096
  ids = np.random.default_rng(1).integers(0, 512, size=(batch, length)).astype(np.int32)
  labels = ids.copy()
  labels[:, :1024] = IGNORE  # an ignored prompt
  _, aux = masked_diffusion_loss(model, ids, labels, jax.random.key(9))
  masked, p = np.asarray(aux.masked), np.asarray(aux.p)
  assert not masked[:, :1024].any()
  fraction = masked[:, 1024:].mean(axis=1)
  sigma = np.sqrt(p * (1 - p) / 3072)
  assert (np.abs(fraction - p) < 5 * sigma + 1e-9).all(), (fraction, p)
  assert np.unique(np.round(p, 6)).size == batch  # one t per sample


def test_chunking_does_not_change_the_loss(lm):
  ids, labels = text_batch(seed=2)
  full, _ = masked_diffusion_loss(lm, ids, labels, jax.random.key(1), chunk=4096)
  chunked, _ = masked_diffusion_loss(lm, ids, labels, jax.random.key(1), chunk=3)
  np.testing.assert_allclose(float(chunked), float(full), rtol=1e-6)


def test_gradients_reach_the_mask_embedding(lm):
  ids, labels = text_batch(seed=3)
  graphdef, params = nnx.split(lm)

  def loss_of(params):
    return masked_diffusion_loss(nnx.merge(graphdef, params), ids, labels, jax.random.key(2))[0]

  grads = jax.jit(jax.grad(loss_of))(params)
  embedding_grad = np.asarray(grads['lm']['embed_tokens']['embedding'][...])
  assert np.isfinite(embedding_grad).all()
  assert np.abs(embedding_grad[MASK]).sum() > 0  # the mask token's row learns
  unused = np.setdiff1d(np.arange(2000), np.concatenate([ids.ravel(), [MASK]]))
  assert np.abs(embedding_grad[unused]).sum() == 0  # rows never fed in get nothing
