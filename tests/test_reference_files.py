"""Our name tables and config parser against the real LLaDA-V 8B files (tests/data/reference)."""

import json
from pathlib import Path

import jinja2

import vidlada_jax as vj
from vidlada_jax import prompting
from vidlada_jax.fixtures import tiny_tokenizer
from vidlada_jax.input_pipeline.chat import SYSTEM_PROMPT, render_chat, video_question
from vidlada_jax.hf import config as hf_config
from vidlada_jax.hf import layouts

REFERENCE = Path(__file__).parent / 'data' / 'reference'


def test_real_lm_config_parses_to_the_8b_language_model():
  raw = json.loads((REFERENCE / 'llada_v_lm_config.json').read_text())
  layout, config, _ = hf_config.parse(raw)
  assert layout == layouts.LLADA_V
  assert config.vision is None
  assert config.lm == vj.model_config('8b').lm


def test_real_index_names_are_exactly_our_table():
  index = json.loads((REFERENCE / 'llada_v_lm_model.safetensors.index.json').read_text())
  config = vj.model_config('llada-8b')
  table = layouts.tensor_table(config, layouts.LLADA_V)
  ours = {name for name, _, _ in layouts.expected_names(config, table)}
  assert ours == set(index['weight_map'])
  # bfloat16: two bytes per parameter
  assert index['metadata']['total_size'] == 2 * vj.count_params(config)


def test_chat_template_matches_the_reference_jinja_template():
  tokenizer_config = json.loads((REFERENCE / 'llada_v_lm_tokenizer_config.json').read_text())
  template = jinja2.Template(tokenizer_config['chat_template'])
  messages = [{'role': 'system', 'content': SYSTEM_PROMPT},
              {'role': 'user', 'content': '  <image>\nWhat happens?  '}]
  expected = template.render(messages=messages, bos_token=tokenizer_config['bos_token'])
  assert render_chat(messages) == expected
  assert video_question('What happens?') == expected


def test_special_token_ids_match_the_reference_tokenizer():
  tokenizer_config = json.loads((REFERENCE / 'llada_v_lm_tokenizer_config.json').read_text())
  content = {int(k): v['content'] for k, v in tokenizer_config['added_tokens_decoder'].items()}
  ids = vj.TokenIds()
  assert content[ids.bos] == '<|startoftext|>'
  assert content[ids.eos] == '<|endoftext|>'
  assert content[ids.mask] == '<|mdm_mask|>'
  assert content[ids.start_header] == '<|start_header_id|>'
  assert content[ids.end_header] == '<|end_header_id|>'
  assert content[ids.eot] == '<|eot_id|>'
  assert prompting.llada_special_tokens() == content
  tokenizer = tiny_tokenizer()
  for token_id, text in content.items():
    assert tokenizer.token_to_id(text) == token_id
