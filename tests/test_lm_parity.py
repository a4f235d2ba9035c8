"""The LLaDA LM against transformers' LlamaForCausalLM with an all-zero 4-D mask (bidirectional)."""

import numpy as np
import pytest

import vidlada_jax as vj
from tests import torch_reference as ref

TOLERANCE = 1e-5  # max |ours - torch| / max |torch|, float32


@pytest.fixture(scope='module')
def llama():
  return ref.tiny_llama(seed=0)


@pytest.fixture(scope='module')
def input_ids():
  return np.random.default_rng(0).integers(0, 126464, size=(2, 24)).astype(np.int32)


@pytest.fixture(scope='module')
def torch_logits(llama, input_ids):
  import torch

  return ref.bidirectional_logits(llama, input_ids=torch.from_numpy(input_ids).long())


def test_mask_makes_it_bidirectional(llama, input_ids, torch_logits):
  # Guard on the reference itself: without the zero mask Llama is causal and differs.
  import torch

  with torch.no_grad():
    causal = llama(input_ids=torch.from_numpy(input_ids).long()).logits.numpy()
  assert ref.max_relative_error(causal, torch_logits) > 1e-2


@pytest.mark.parametrize('shards', [1, 3])
def test_llada_v_layout_matches_transformers(tmp_path, llama, input_ids, torch_logits, shards):
  directory = ref.write_checkpoint(
      tmp_path / 'llada_v', llama.state_dict(), llama.config.to_dict(), shards=shards)
  model = vj.from_pretrained(directory, dtype='float32', progress=False)
  assert model.vision_tower is None
  ours = np.asarray(model.lm_logits(input_ids))
  error = ref.max_relative_error(ours, torch_logits)
  print(f'LM parity (LLaDA-V names, {shards} shard(s)): max relative error {error:.2e}')
  assert ours.dtype == np.float32 and ours.shape == torch_logits.shape
  assert error < TOLERANCE


def test_original_llada_names_give_the_same_logits(tmp_path, llama, input_ids, torch_logits):
  llada_v = ref.write_checkpoint(tmp_path / 'v', llama.state_dict(), llama.config.to_dict())
  llada = ref.write_checkpoint(
      tmp_path / 'llada', ref.llada_names(llama.state_dict()), ref.llada_config(llama.config))
  a = np.asarray(vj.from_pretrained(llada_v, dtype='float32', progress=False).lm_logits(input_ids))
  b = np.asarray(vj.from_pretrained(llada, dtype='float32', progress=False).lm_logits(input_ids))
  print(f'LM parity (original LLaDA names): max relative error '
        f'{ref.max_relative_error(b, torch_logits):.2e}')
  np.testing.assert_array_equal(a, b)
  assert ref.max_relative_error(b, torch_logits) < TOLERANCE


def test_grouped_query_attention(tmp_path, input_ids):
  import torch

  llama = ref.tiny_llama(seed=3, num_key_value_heads=2)
  expected = ref.bidirectional_logits(llama, input_ids=torch.from_numpy(input_ids).long())
  directory = ref.write_checkpoint(tmp_path / 'gqa', llama.state_dict(), llama.config.to_dict())
  ours = np.asarray(
      vj.from_pretrained(directory, dtype='float32', progress=False).lm_logits(input_ids))
  assert ref.max_relative_error(ours, expected) < TOLERANCE


def test_bfloat16_is_as_accurate_as_the_reference_in_bfloat16(tmp_path, llama, input_ids,
                                                             torch_logits):
  """bfloat16 parameters and compute: our rounding error against the float32 result is no worse
  than that of transformers' own bfloat16 model (same weights, same zero mask)."""
  import copy

  import jax.numpy as jnp
  import torch

  directory = ref.write_checkpoint(tmp_path / 'bf16', llama.state_dict(), llama.config.to_dict())
  model = vj.from_pretrained(directory, dtype=jnp.bfloat16, progress=False)
  assert model.lm.layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  ours = np.asarray(model.lm_logits(input_ids))
  assert ours.dtype == np.float32  # logits are always returned in float32

  torch_bf16 = copy.deepcopy(llama).to(torch.bfloat16)
  mask = torch.zeros(*input_ids.shape, input_ids.shape[1], dtype=torch.bfloat16)[:, None]
  with torch.no_grad():
    theirs = torch_bf16(input_ids=torch.from_numpy(input_ids).long(),
                        attention_mask=mask).logits.float().numpy()
  our_error = np.abs(ours - torch_logits).mean()
  their_error = np.abs(theirs - torch_logits).mean()
  print(f'bfloat16 mean abs error vs float32: ours {our_error:.4f}, transformers {their_error:.4f}')
  assert their_error > 0  # bfloat16 really rounds
  assert our_error <= 1.1 * their_error
