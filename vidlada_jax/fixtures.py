"""Small stand-ins for the real assets, for tests, the demo and the tiny training config.

`tiny_tokenizer()` trains a small byte-level BPE in memory and places the 269 LLaDA special tokens
at their real ids, so prompts, training labels, stop tokens and the sampler's id suppression
behave exactly as with the real 126k vocabulary (which is not available here).
`demo_tokenizer()` is the demo model's: the special tokens moved down to 1024.., so its
vocabulary and checkpoint stay small.
"""

from __future__ import annotations

import functools
import json

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from vidlada_jax import config
from vidlada_jax.prompting import NO_THINK, llada_special_tokens

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
  return _bpe_with_special_tokens(_CORPUS.split('\n'), vocab_size, llada_special_tokens())


@functools.lru_cache(maxsize=None)
def demo_tokenizer() -> Tokenizer:
  """The demo model's tokenizer: a byte-level BPE of under 1024 tokens learned from the demo's
  prompts (the system prompt, the synthetic_video_qa questions, options and answers), with the
  LLaDA special tokens moved to 1024.. (`config.DEMO_TOKENS`)."""
  from vidlada_jax.input_pipeline import chat, synthetic_qa  # pylint: disable=g-import-not-at-top

  words = [*synthetic_qa.COLOURS, *synthetic_qa.SIDES, '1', '2', '3', '4']
  lines = [chat.SYSTEM_PROMPT, NO_THINK, synthetic_qa.OPTIONS_INSTRUCTION,
           *synthetic_qa.QUESTIONS.values(), *(f'{letter}. {word}' for letter in 'ABCD'
                                                for word in words),
           *words, 'system', 'user', 'assistant']  # answers and roles start a line
  # Repeated so that every word of the prompts becomes one token or a few.
  corpus = lines * 8 + _CORPUS.split('\n')
  special = {config.DEMO_SPECIAL_START + token_id - config.LLADA_SPECIAL_START: content
             for token_id, content in llada_special_tokens().items()}
  return _bpe_with_special_tokens(corpus, config.DEMO_SPECIAL_START, special)


def _bpe_with_special_tokens(corpus, vocab_size: int, special: dict[int, str]) -> Tokenizer:
  trainer_tokenizer = Tokenizer(models.BPE())
  trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  trainer_tokenizer.train_from_iterator(corpus, trainer)
  model = json.loads(trainer_tokenizer.to_str())['model']
  vocab = dict(model['vocab'])
  if max(vocab.values()) >= min(special):
    raise ValueError(f'the BPE vocabulary ({len(vocab)} tokens) overlaps the special token ids')
  vocab.update({content: token_id for token_id, content in special.items()})
  merges = [tuple(m) if isinstance(m, list) else tuple(m.split(' ')) for m in model['merges']]
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens(
      [AddedToken(content, special=True, normalized=False) for content in special.values()])
  return tokenizer
