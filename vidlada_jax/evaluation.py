"""Scoring answers the way the video benchmarks' reference evaluation does.

`parse_multiple_choice` follows lmms-eval's Video-MME rule (also used by MLVU-style tasks there):
drop the phrases models put before a choice ("The best answer is", "Answer:", ...), give up on
long answers that name no option, else take the first option letter in the text. `score` compares
a free-form answer after the normalisation short-answer benchmarks use (case, surrounding
punctuation and whitespace, a leading article).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping

ANSWER_PREFIXES = (
    'The best answer is', 'The correct answer is', 'The answer is', 'The answer',
    'The best option is', 'The correct option is', 'Best answer:', 'Best option:', 'Answer:',
    'Option:')
# Longer than this, an answer without an option letter is an explanation, not a choice.
MAX_WORDS_WITHOUT_LETTER = 10


def option_letters(num_options: int) -> str:
  if not 1 <= num_options <= 26:
    raise ValueError(f'num_options must be in [1, 26], got {num_options}')
  return string.ascii_uppercase[:num_options]


def parse_multiple_choice(text: str, num_options: int = 4) -> str:
  """The option letter an answer chose ('A'...), or '' when it chose none."""
  letters = option_letters(num_options)
  text = text.strip()
  for prefix in ANSWER_PREFIXES:
    text = text.replace(prefix, '')
  pattern = f'[{letters}]'
  if len(text.split()) > MAX_WORDS_WITHOUT_LETTER and not re.search(pattern, text):
    return ''
  found = re.search(pattern, text)
  return found.group(0) if found else ''


def normalize_free_form(text: str) -> str:
  text = text.strip().lower().strip(string.punctuation + string.whitespace)
  text = re.sub(r'^(the|a|an)\s+', '', text)
  return ' '.join(text.split())


def score(answer: str, target: str, *, multiple_choice: bool, num_options: int = 4) -> bool:
  """Whether `answer` (the model's text) is right: `target` is the option letter for multiple
  choice, else the expected short answer."""
  if multiple_choice:
    return parse_multiple_choice(answer, num_options) == target.strip().upper()
  return normalize_free_form(answer) == normalize_free_form(target)


def accuracy_by_type(results: Iterable[Mapping]) -> dict[str, float]:
  """Accuracy per `question_type` of result records ({'question_type', 'correct'}), plus
  'overall'. Records with an `error` count as wrong."""
  right: dict[str, int] = collections.Counter()
  total: dict[str, int] = collections.Counter()
  for result in results:
    correct = bool(result.get('correct')) and not result.get('error')
    for key in (result.get('question_type', 'all'), 'overall'):
      total[key] += 1
      right[key] += correct
  return {key: right[key] / total[key] for key in sorted(total)}
