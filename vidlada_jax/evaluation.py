"""Scoring answers the way the video benchmarks' reference evaluation does.

`parse_multiple_choice` is a port of lmms-eval 0.7.3's Video-MME rule, so that our accuracies
mean what lmms-eval's do: `extract_characters_regex` in lmms_eval/tasks/videomme/utils.py, which
does no preprocessing of its own and returns `extract_mcq_answer(response, choices=['A', 'B',
'C', 'D'])` from lmms_eval/tasks/_task_utils/mcq_extract.py. lmms-eval is an optional
dependency, hence a port rather than an import; tests/test_evaluation.py compares the two
whenever lmms-eval is installed. (lmms-eval's pipeline drops `<think>` blocks before the rule
runs; that step is not part of the rule and not done here.)

The rule, given the response:

1. Empty or blank: no choice ('').
2. Strip surrounding whitespace, then each of , . ! ? ; : ' " in that order, one character at a
   time (so 'A,.' keeps its comma), and pad the text with a space on each side.
3. Collect candidates (letter, position, format). For each option letter X: the last "(X)",
   "X.", "X:", "X)" and "X "; after the first occurrence of each answer phrase ("the answer is",
   "best answer is", "i choose", ..., matched ignoring case) the first X, even inside a word; X
   when the text starts with it and no letter follows, or ends with it and no letter precedes.
   Only if none of these exists, the last X anywhere.
4. Return the letter of the candidate in the most trusted format (start > end > phrase > "(X)" >
   "X." > "X:" > "X)" > "X " > anywhere), the latest among equals: models that discuss options
   before choosing put the choice last. "Answer: B" is B (it ends with a lone B); "The answer is
   A, but D fits too" is D (both follow the phrase, D later).

Option letters are upper case only ('b' is no choice). Video-MME allows A-D, our default
(`num_options=4`); other counts allow the first `num_options` letters, as lmms-eval does with the
`choices` it is given. `score` compares a free-form answer after the normalisation short-answer
benchmarks use (case, surrounding punctuation and whitespace, a leading article).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping

# What lmms-eval strips off both ends of a response, one character after the other, in order.
EDGE_PUNCTUATION = (',', '.', '!', '?', ';', ':', "'", '"')
# Phrases after which an option letter is taken as the answer (lmms-eval's `_ANSWER_PHRASES`,
# same order; lower case, matched against the lower-cased response).
ANSWER_PHRASES = (
    'the answer is', 'answer is', 'the correct answer is', 'correct answer is',
    'the best answer is', 'best answer is', 'the correct option is', 'correct option is',
    'the best option is', 'best option is', 'the choice is', 'choice is', 'the correct choice is',
    'correct choice is', 'i choose', 'i select', 'i pick', 'my answer is', 'my choice is',
    '옵션', '정답은', '답은', '답:', '答案是', '答案为', '选', '答えは')
# How much each way of writing a letter is trusted to be the choice (lmms-eval's
# `_FORMAT_PRIORITY`): a higher priority wins whatever its position.
FORMAT_PRIORITY = {
    'start': 10, 'end': 9, 'phrase': 7, 'parentheses': 6, 'period': 5, 'colon': 4,
    'right_paren': 3, 'space': 2, 'fallback': 0}
# A letter marked as an option: format and how it is written, in lmms-eval's order.
MARKED_LETTER = (
    ('parentheses', '({})'), ('period', '{}.'), ('colon', '{}:'), ('right_paren', '{})'),
    ('space', '{} '))


def option_letters(num_options: int) -> str:
  if not 1 <= num_options <= 26:
    raise ValueError(f'num_options must be in [1, 26], got {num_options}')
  return string.ascii_uppercase[:num_options]


def parse_multiple_choice(text: str, num_options: int = 4) -> str:
  """The option letter an answer chose ('A'...), or '' when it chose none, by lmms-eval's
  Video-MME rule (see the module docstring; with `num_options=4` it is that rule exactly)."""
  letters = option_letters(num_options)
  if not text or not text.strip():
    return ''
  text = text.strip()
  for char in EDGE_PUNCTUATION:
    text = text.strip(char)
  text = f' {text} '  # so that a letter at either end still has a space next to it
  candidates = []  # (priority, position, letter)

  for form, template in MARKED_LETTER:
    for letter in letters:
      position = text.rfind(template.format(letter))
      if position != -1:
        candidates.append((FORMAT_PRIORITY[form], position, letter))

  # Positions found in the lower-cased text index the original one, as in lmms-eval (they differ
  # only where lower-casing changes a string's length, as it does 'İ').
  lowered = text.lower()
  for phrase in ANSWER_PHRASES:
    found = lowered.find(phrase)
    if found != -1:
      for letter in letters:
        position = text.find(letter, found + len(phrase))
        if position != -1:
          candidates.append((FORMAT_PRIORITY['phrase'], position, letter))

  # A letter standing alone at either end: "B", "B. red", "... is C". (Nothing may be left:
  # "." is all punctuation.)
  bare = text.strip()
  if bare and bare[0] in letters and (len(bare) == 1 or not bare[1].isalpha()):
    candidates.append((FORMAT_PRIORITY['start'], 0, bare[0]))
  if bare and bare[-1] in letters and (len(bare) == 1 or not bare[-2].isalpha()):
    candidates.append((FORMAT_PRIORITY['end'], len(text) - 1, bare[-1]))

  if not candidates:  # any option letter at all, the last one
    for letter in letters:
      position = text.rfind(letter)
      if position != -1:
        candidates.append((FORMAT_PRIORITY['fallback'], position, letter))
  if not candidates:
    return ''
  # Ties in (priority, position) are one letter found twice, so which of them max keeps is moot.
  return max(candidates, key=lambda candidate: candidate[:2])[2]


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
