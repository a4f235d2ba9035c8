"""Tokens: `<image>` -> -200, the LLaDA tokenizer and its special tokens, answer decoding (SPEC 5).

The real 126k-token tokenizer is loaded from a checkpoint's `tokenizer.json` with the Hugging Face
`tokenizers` library. Without one (tests, the demo), `vidlada_jax.fixtures.tiny_tokenizer()`
builds a small one with the LLaDA special tokens at their real ids. The chat template and the
training labels live in `vidlada_jax.input_pipeline.chat`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from vidlada_jax.config import TokenIds

IMAGE_TOKEN = '<image>'
NO_THINK = '/no_think'

BOS, EOT = '<|startoftext|>', '<|eot_id|>'
START_HEADER, END_HEADER = '<|start_header_id|>', '<|end_header_id|>'


def tokenize(tokenizer: Tokenizer, text: str, image_id: int = TokenIds().image) -> np.ndarray:
  """Token ids of `text`, each `<image>` becoming `image_id` (-200). The pieces between
  placeholders are tokenized separately, as the reference does; no BOS/EOS is added."""
  ids: list[int] = []
  for i, piece in enumerate(text.split(IMAGE_TOKEN)):
    if i:
      ids.append(image_id)
    if piece:
      ids.extend(tokenizer.encode(piece, add_special_tokens=False).ids)
  return np.asarray(ids, np.int32)


def decode_answer(tokenizer: Tokenizer, tokens: Sequence[int], stop_ids=(TokenIds().eot,)) -> str:
  """SPEC 1 step 9: cut at the first stop token, drop special tokens, strip one trailing '.'."""
  tokens = [int(t) for t in tokens]
  for i, t in enumerate(tokens):
    if t in stop_ids:
      tokens = tokens[:i]
      break
  text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
  return text[:-1].rstrip() if text.endswith('.') else text


def load_tokenizer(path: str | Path) -> Tokenizer:
  """The tokenizer of a checkpoint directory (its tokenizer.json), or a tokenizer.json file."""
  path = Path(path)
  file = path / 'tokenizer.json' if path.is_dir() else path
  if not file.exists():
    raise FileNotFoundError(f'no tokenizer.json at {path}')
  tokenizer = Tokenizer.from_file(str(file))
  missing = [t for t in (BOS, EOT, START_HEADER, END_HEADER, '<|mdm_mask|>')
             if tokenizer.token_to_id(t) is None]
  if missing:
    raise ValueError(f'{file} lacks the LLaDA special tokens {missing}')
  return tokenizer


def llada_special_tokens() -> dict[int, str]:
  """id -> content of every special token of the LLaDA-8B tokenizer."""
  data = json.loads(
      (resources.files('vidlada_jax') / 'data' / 'llada_special_tokens.json').read_text())
  return {int(k): v for k, v in data['tokens'].items()}
