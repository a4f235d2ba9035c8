"""Prompts: the LLaDA chat template, `<image>` -> -200, tokenizers and answer decoding (SPEC 5).

The real 126k-token tokenizer is loaded from a checkpoint's `tokenizer.json` with the Hugging Face
`tokenizers` library. Without one (tests, the demo), `tiny_tokenizer()` trains a small byte-level
BPE in memory and places the 269 LLaDA special tokens at their real ids, so prompts, stop tokens
and the sampler's id suppression behave exactly as with the real vocabulary.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from vidlada_jax.config import TokenIds

SYSTEM_PROMPT = (
    'You are a helpful language and vision assistant. You are able to understand the visual '
    'content that the user provides, and assist the user with a variety of tasks using natural '
    'language.')
IMAGE_TOKEN = '<image>'
NO_THINK = '/no_think'

BOS, EOT = '<|startoftext|>', '<|eot_id|>'
START_HEADER, END_HEADER = '<|start_header_id|>', '<|end_header_id|>'


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
  """The LLaDA chat template (Llama-3 style): BOS, then each turn's header, stripped content and
  `<|eot_id|>`; finally an open assistant header."""
  text = BOS
  for message in messages:
    text += f'{START_HEADER}{message["role"]}{END_HEADER}\n\n{message["content"].strip()}{EOT}'
  if add_generation_prompt:
    text += f'{START_HEADER}assistant{END_HEADER}\n\n'
  return text


def time_instruction(duration_s: float, frame_times_s: Sequence[float]) -> str:
  times = ','.join(f'{t:.2f}s' for t in frame_times_s)
  return (f'The video lasts for {duration_s:.2f} seconds, and {len(frame_times_s)} frames are '
          f'uniformly sampled from it. These frames are located at {times}. Please answer the '
          'following questions related to this video.')


def video_question(question: str, *, time_info: str | None = None, no_think: bool = False,
                   system: str = SYSTEM_PROMPT) -> str:
  """The prompt text of one question about one video (the `<image>` stands for all its frames)."""
  question = question.strip() + (NO_THINK if no_think else '')
  user = IMAGE_TOKEN + '\n' + (f'{time_info}\n' if time_info else '') + question
  return render_chat([{'role': 'system', 'content': system}, {'role': 'user', 'content': user}])


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


_ROLES = {'human': 'user', 'gpt': 'assistant', 'user': 'user', 'assistant': 'assistant',
          'system': 'system'}
IGNORE = -100


def _turns(conversation: Sequence[dict]) -> list[tuple[str, str]]:
  """(role, content) pairs from LLaVA ({from, value}) or chat ({role, content}) messages."""
  turns = []
  for message in conversation:
    role = message.get('role', message.get('from'))
    if role not in _ROLES:
      raise ValueError(f'unknown conversation role {role!r}; expected one of {sorted(_ROLES)}')
    turns.append((_ROLES[role], message.get('content', message.get('value', ''))))
  return turns


def sft_example(tokenizer: Tokenizer, conversation: Sequence[dict], *,
                system: str = SYSTEM_PROMPT, tokens: TokenIds = TokenIds()
                ) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, labels) of one training conversation, labelled as the reference does (SPEC 3).

  Every token of an assistant turn carries its label, header and closing `<|eot_id|>` included;
  in system and user turns only `<|startoftext|>`, `<|start_header_id|>`, `<|end_header_id|>`
  and `<|eot_id|>` do; all other prompt tokens and the `<image>` placeholder get IGNORE (-100).
  The system prompt is prepended unless the conversation starts with one.
  """
  turns = _turns(conversation)
  if not turns or turns[0][0] != 'system':
    turns = [('system', system)] + turns
  if not any(role == 'assistant' for role, _ in turns):
    raise ValueError('a training conversation needs at least one assistant turn')
  specials = np.asarray([tokens.bos, tokens.start_header, tokens.end_header, tokens.eot])
  ids, labels = [], []
  for i, (role, content) in enumerate(turns):
    text = (BOS if i == 0 else '') + f'{START_HEADER}{role}{END_HEADER}\n\n{content.strip()}{EOT}'
    piece = tokenize(tokenizer, text, tokens.image)
    keep = np.ones(len(piece), bool) if role == 'assistant' else np.isin(piece, specials)
    keep &= piece != tokens.image
    ids.append(piece)
    labels.append(np.where(keep, piece, IGNORE).astype(np.int32))
  return np.concatenate(ids), np.concatenate(labels)


def collate(examples: Sequence[tuple[np.ndarray, np.ndarray]], length: int,
            pad_id: int = TokenIds().eos) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads (or truncates) examples to `length`. Padding is EOS as input and as label: the
  reference attends to the pads and trains them to predict EOS."""
  ids = np.full((len(examples), length), pad_id, np.int32)
  labels = np.full((len(examples), length), pad_id, np.int32)
  for row, (example_ids, example_labels) in enumerate(examples):
    n = min(len(example_ids), length)
    ids[row, :n] = example_ids[:n]
    labels[row, :n] = example_labels[:n]
  return ids, labels


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


_CORPUS = """
The video shows a red square moving from the left side of the frame to the right side.
A blue circle bounces up and down while a green triangle appears in the middle of the clip.
What colour is the object that moves? How many objects are there? Which object appears first?
Where does the ball end up at the end of the video? Describe what happens in the video.
The answer is yes. The answer is no. There are two objects, then three objects, then four.
Please answer the following questions related to this video. The video lasts for seconds,
and frames are uniformly sampled from it. These frames are located at the given times.
You are a helpful language and vision assistant. You are able to understand the visual content
that the user provides, and assist the user with a variety of tasks using natural language.
system user assistant A B C D option left right top bottom up down first last red green blue
yellow black white orange purple small large fast slow one two three four five six seven eight
nine ten 0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ( ) - /no_think
"""


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 512) -> Tokenizer:
  """A small deterministic byte-level BPE with every LLaDA special token at its real id."""
  trainer_tokenizer = Tokenizer(models.BPE())
  trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  trainer_tokenizer.train_from_iterator(_CORPUS.split('\n'), trainer)
  model = json.loads(trainer_tokenizer.to_str())['model']
  vocab = dict(model['vocab'])
  special = llada_special_tokens()
  vocab.update({content: token_id for token_id, content in special.items()})
  merges = [tuple(m) if isinstance(m, list) else tuple(m.split(' ')) for m in model['merges']]
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens(
      [AddedToken(content, special=True, normalized=False) for content in special.values()])
  return tokenizer
