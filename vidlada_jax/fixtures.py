"""Small stand-ins for the real assets, for tests, the demo and the tiny training config.

`tiny_tokenizer()` trains a small byte-level BPE in memory and places the 269 LLaDA special tokens
at their real ids, so prompts, training labels, stop tokens and the sampler's id suppression
behave exactly as with the real 126k vocabulary (which is not available here).
"""

from __future__ import annotations

import functools
import json

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from vidlada_jax.prompting import llada_special_tokens

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
