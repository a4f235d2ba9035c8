"""Tokenization with <image>, answer decoding and the tokenizer loader (SPEC 5).

The chat template and SFT label tests are in test_input_pipeline.py."""

import pytest

from vidlada_jax import prompting
from vidlada_jax.config import TokenIds
from vidlada_jax.fixtures import tiny_tokenizer

T = TokenIds()


@pytest.fixture(scope='module')
def tokenizer():
  return tiny_tokenizer()


def encode(tokenizer, text):
  return tokenizer.encode(text, add_special_tokens=False).ids


def test_image_placeholder_becomes_minus_200(tokenizer):
  ids = prompting.tokenize(tokenizer, 'a<image>\nb')
  assert list(ids) == encode(tokenizer, 'a') + [-200] + encode(tokenizer, '\nb')
  assert prompting.tokenize(tokenizer, '<image>')[0] == -200


def test_decode_answer(tokenizer):
  answer = encode(tokenizer, 'The answer is red.')
  tokens = answer + [T.eot] + encode(tokenizer, 'ignored') + [T.mask, T.mask]
  assert prompting.decode_answer(tokenizer, tokens) == 'The answer is red'
  assert prompting.decode_answer(tokenizer, answer) == 'The answer is red'
  assert prompting.decode_answer(tokenizer, [T.bos] + encode(tokenizer, ' yes ') + [T.eot]) == 'yes'


def test_load_tokenizer_checks_special_tokens(tmp_path, tokenizer):
  tokenizer.save(str(tmp_path / 'tokenizer.json'))
  loaded = prompting.load_tokenizer(tmp_path)
  assert loaded.token_to_id('<|mdm_mask|>') == T.mask
  with pytest.raises(FileNotFoundError, match='no tokenizer.json'):
    prompting.load_tokenizer(tmp_path / 'missing')
