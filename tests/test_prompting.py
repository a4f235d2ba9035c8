"""Chat template, tokenization with <image>, SFT labels (SPEC 3) and answer decoding."""

import numpy as np
import pytest

from vidlada_jax import prompting
from vidlada_jax.config import TokenIds

T = TokenIds()
IGNORE = prompting.IGNORE


@pytest.fixture(scope='module')
def tokenizer():
  return prompting.tiny_tokenizer()


def encode(tokenizer, text):
  return tokenizer.encode(text, add_special_tokens=False).ids


def test_image_placeholder_becomes_minus_200(tokenizer):
  ids = prompting.tokenize(tokenizer, 'a<image>\nb')
  assert list(ids) == encode(tokenizer, 'a') + [-200] + encode(tokenizer, '\nb')
  assert prompting.tokenize(tokenizer, '<image>')[0] == -200


def test_video_question_prompt(tokenizer):
  text = prompting.video_question('  What moves? ', no_think=True,
                                  time_info=prompting.time_instruction(2.0, [0.0, 1.0]))
  assert text.startswith('<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n')
  assert ('<|start_header_id|>user<|end_header_id|>\n\n<image>\nThe video lasts for 2.00 seconds, '
          'and 2 frames are uniformly sampled from it. These frames are located at 0.00s,1.00s. '
          'Please answer the following questions related to this video.\nWhat moves?/no_think'
          '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n') in text
  ids = prompting.tokenize(tokenizer, text)
  assert ids[0] == T.bos and (ids == -200).sum() == 1 and ids[-3] == T.end_header


def test_sft_labels_by_hand(tokenizer):
  conversation = [{'from': 'human', 'value': '<image>\nQ?'}, {'from': 'gpt', 'value': 'A.'}]
  ids, labels = prompting.sft_example(tokenizer, conversation, system='S.')
  e = lambda text: encode(tokenizer, text)
  system = [T.bos, T.start_header] + e('system') + [T.end_header] + e('\n\nS.') + [T.eot]
  user = [T.start_header] + e('user') + [T.end_header] + e('\n\n') + [-200] + e('\nQ?') + [T.eot]
  assistant = [T.start_header] + e('assistant') + [T.end_header] + e('\n\nA.') + [T.eot]
  assert list(ids) == system + user + assistant
  specials = {T.bos, T.start_header, T.end_header, T.eot}
  keep_specials = lambda part: [t if t in specials else IGNORE for t in part]
  assert list(labels) == keep_specials(system) + keep_specials(user) + assistant


def test_multi_turn_and_roles(tokenizer):
  conversation = [{'role': 'system', 'content': 'Sys'}, {'role': 'user', 'content': 'q1'},
                  {'role': 'assistant', 'content': 'a1'}, {'role': 'user', 'content': 'q2'},
                  {'role': 'assistant', 'content': 'a2'}]
  ids, labels = prompting.sft_example(tokenizer, conversation)
  assert (ids == T.bos).sum() == 1 and (ids == T.eot).sum() == 5
  assert tokenizer.decode([int(i) for i in ids], skip_special_tokens=False).startswith(
      '<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>')
  labelled = labels != IGNORE
  assert labelled.sum() > 0 and (labels[labelled] == ids[labelled]).all()
  with pytest.raises(ValueError, match='unknown conversation role'):
    prompting.sft_example(tokenizer, [{'from': 'robot', 'value': 'x'}])
  with pytest.raises(ValueError, match='at least one assistant turn'):
    prompting.sft_example(tokenizer, [{'from': 'human', 'value': 'x'}])


def test_collate_pads_with_eos_as_input_and_label():
  ids, labels = prompting.collate([(np.array([1, 2, 3]), np.array([IGNORE, 2, 3])),
                                   (np.arange(10), np.arange(10))], length=5)
  assert ids.tolist() == [[1, 2, 3, T.eos, T.eos], [0, 1, 2, 3, 4]]
  assert labels.tolist() == [[IGNORE, 2, 3, T.eos, T.eos], [0, 1, 2, 3, 4]]


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
