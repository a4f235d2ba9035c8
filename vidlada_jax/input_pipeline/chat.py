"""The chat template and the training labels of VidLaDA's conversations (SPEC 3, SPEC 5).

`video_question` renders an inference prompt; `sft_example` tokenizes and labels a training
conversation as the reference does; `with_time_instruction` puts the training-time frame times
into its first human turn; `collate` pads a batch with EOS.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from vidlada_jax.config import TokenIds
from vidlada_jax.prompting import (BOS, END_HEADER, EOT, IMAGE_TOKEN, NO_THINK, START_HEADER,
                                   tokenize)

SYSTEM_PROMPT = (
    'You are a helpful language and vision assistant. You are able to understand the visual '
    'content that the user provides, and assist the user with a variety of tasks using natural '
    'language.')


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How a training conversation becomes a prompt: by default as the reference trains (SPEC 3).

  system: the system prompt prepended to conversations that have none.
  time_instruction: put the video's duration and frame times into the first human turn, as the
    reference trains (`with_time_instruction`; inference adds them only on request).
  no_think: end the first human turn with "/no_think", as inference prompts do by default
    (`video_question(no_think=True)`), so a model trained this way sees at inference exactly
    the prompts it was trained on.
  tokens: the special token ids of the model being trained (they label the prompt's specials).
  """

  system: str = SYSTEM_PROMPT
  time_instruction: bool = True
  no_think: bool = False
  tokens: TokenIds = TokenIds()


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


def with_time_instruction(conversation: Sequence[dict], time_info: str) -> list[dict]:
  """The conversation with `time_info` in its first human turn, as the reference trains.

  The reference rewrites the first human value to `f'<image>\\n{time_info}\\n{value}'` with the
  `<image>` removed from `value` (not stripped), so "<image>\\nQ?" becomes
  "<image>\\n{time_info}\\n\\nQ?" (two newlines: the one that followed `<image>` stays).
  Inference (`video_question`) puts a single newline there instead. The input is not modified.
  """
  conversation = [dict(message) for message in conversation]
  first = next((m for m in conversation if m.get('from', m.get('role')) in ('human', 'user')), None)
  if first is None:
    raise ValueError('the conversation has no human turn to put the time instruction in')
  key = 'value' if 'value' in first else 'content'
  first[key] = f'{IMAGE_TOKEN}\n{time_info}\n{first[key].replace(IMAGE_TOKEN, "")}'
  return conversation


def with_no_think(conversation: Sequence[dict]) -> list[dict]:
  """The conversation with "/no_think" ending its first human turn, as `video_question` ends an
  inference prompt. The input is not modified."""
  conversation = [dict(message) for message in conversation]
  first = next((m for m in conversation if m.get('from', m.get('role')) in ('human', 'user')), None)
  if first is None:
    raise ValueError('the conversation has no human turn to end with /no_think')
  key = 'value' if 'value' in first else 'content'
  first[key] = first[key].strip() + NO_THINK
  return conversation
