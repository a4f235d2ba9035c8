"""Answer scoring as the benchmarks' reference evaluation does it: hand-derived cases, and, where
lmms-eval is installed, agreement with its Video-MME answer parser on generated answers."""

import collections
import random

import pytest

from vidlada_jax import evaluation

# Expected letters worked out by hand from the rule in vidlada_jax/evaluation.py's docstring.
HAND_CASES = [
    ('B', 'B'),  # the whole answer
    ('Answer: B', 'B'),  # ends with a lone letter
    ('Best answer: C', 'C'),
    ('The Answer: B', 'B'),  # not the A of "Answer"
    ('Answer:B', 'B'),  # ':' is no letter, so B still stands alone at the end
    ('(D)', 'D'),
    ('A. red', 'A'),  # starts with a lone letter
    ('A: red', 'A'),
    ('The answer is A', 'A'),
    ('The best answer is D.', 'D'),  # the full stop is stripped first
    ('"C"', 'C'),
    ('D!', 'D'),
    ('Option C', 'C'),
    ('Reasoning: the ball moves left.\nAnswer: C', 'C'),
    ('The answer is B because the ball bounces', 'B'),  # after an answer phrase
    ('答案是B', 'B'),  # '是' is a letter to isalpha, so only the phrase finds B
    ('I think that after looking at every frame carefully the right option is C here', 'C'),
    # Several letters: the most trusted format wins, then the last one in it.
    ('A or B', 'A'),  # start beats end
    ('Options B and C are wrong, the answer is D', 'D'),
    ('The answer is A, but D fits too', 'D'),  # both follow the phrase; D is later
    ('Between (A) and (C), the answer is (B)', 'B'),  # the phrase beats parentheses
    ('It is (A), not (C) as some think', 'C'),  # the later parenthesised letter
    ('I pick (B) over (D) clearly', 'D'),  # "I pick" is a phrase; D is the later letter after it
    # Letters inside words.
    ('BANANA', 'A'),  # "A " once padded, though neither end is a lone letter
    ('Apple', 'A'),  # nothing better, so any option letter anywhere
    # Lower case is no option letter.
    ('b', ''),
    ('  c  ', ''),
    ('the answer is b', ''),
    # Nothing there.
    ('', ''),
    ('   \n', ''),
    ('.', ''),  # all punctuation, stripped away
    ('red', ''),
    ('the square that moves to the left of the frame is the red one in this video', ''),
    ('E', ''),  # not among four options
]


@pytest.mark.parametrize('text, expected', HAND_CASES)
def test_multiple_choice_parsing(text, expected):
  assert evaluation.parse_multiple_choice(text) == expected


def test_more_options_and_bad_counts():
  assert evaluation.parse_multiple_choice('E', num_options=5) == 'E'
  assert evaluation.parse_multiple_choice('The answer is F', num_options=5) == ''
  assert evaluation.parse_multiple_choice('B or A', num_options=1) == 'A'
  for bad in (0, 27):
    with pytest.raises(ValueError, match='num_options'):
      evaluation.parse_multiple_choice('A', num_options=bad)


PREFIXES = ('', 'Answer:', 'answer:', 'ANSWER -', 'The answer is', 'the answer is',
            'The best answer is', 'Best answer:', 'best answer is', 'The correct option is',
            'Option', 'option', 'I choose', 'I think', 'My answer is', 'Correct choice is',
            'The Answer:', '答案是', 'Based on the video,', 'After watching the clip')
LETTER_FORMS = ('{}', '{}', '({})', '{}.', '{}:', '{})', '[{}]', '"{}"', "'{}'", '**{}**', '{},')
OPTION_WORDS = ('red', 'Blue', 'a CD', 'BANANA', 'Apple', 'the left one', 'Circle', 'Dog',
                'none of them', 'both A and B', 'İstanbul')
PUNCTUATION = ('', '', '.', ',', '!', '?', ';', ':', '"', "'", '.,', ',.', '...', ' .', ')')
SEPARATORS = (' ', ' ', '', '\n', ', ', '. ', ' - ', '\n\n')
CASES = (str, str, str, str.lower, str.upper, str.swapcase, str.title)


def generated_answers(count: int, seed: int = 0) -> list[str]:
  """Answers mixing what models write around a choice: phrases, marked letters A-F (E and F are
  not Video-MME options), option words, punctuation, line breaks and changes of case."""
  rng = random.Random(seed)
  answers = []
  for _ in range(count):
    clauses = []
    for _ in range(rng.randint(1, 3)):
      parts = [rng.choice(PREFIXES)]
      if rng.random() < 0.85:
        parts.append(rng.choice(LETTER_FORMS).format(rng.choice('ABCDEF')))
      if rng.random() < 0.5:
        parts.append(rng.choice(OPTION_WORDS))
      clauses.append(rng.choice(SEPARATORS).join(part for part in parts if part))
    answer = rng.choice(SEPARATORS).join(clauses) + rng.choice(PUNCTUATION)
    answer = rng.choice(CASES)(answer)
    answers.append(rng.choice(('', ' ', '\n')) + answer + rng.choice(('', ' ', '\n')))
  return answers


def test_matches_lmms_eval_videomme():
  """Our parser against lmms-eval's own Video-MME entry point, on the hand cases and on 400
  generated answers; also, with six options, against the extractor it calls given A-F."""
  mcq_extract = pytest.importorskip('lmms_eval.tasks._task_utils.mcq_extract')
  from lmms_eval.tasks.videomme import utils as videomme  # its Video-MME answer parser

  generated = generated_answers(400)
  assert len(set(generated)) > 350  # the generator does not repeat itself
  answers = [text for text, _ in HAND_CASES] + generated
  expected = [videomme.extract_characters_regex(text) for text in answers]
  got = [evaluation.parse_multiple_choice(text) for text in answers]
  mismatches = [(text, want, have) for text, want, have in zip(answers, expected, got)
                if want != have]
  assert not mismatches, f'{len(mismatches)} of {len(answers)} differ, e.g. {mismatches[:5]}'
  # The generated answers exercise every outcome, not just one easy case.
  outcomes = collections.Counter(expected[len(HAND_CASES):])
  assert set(outcomes) == {'', 'A', 'B', 'C', 'D'} and min(outcomes.values()) >= 20, outcomes

  six = list('ABCDEF')
  mismatches = [text for text in answers
                if evaluation.parse_multiple_choice(text, num_options=6)
                != mcq_extract.extract_mcq_answer(text, choices=six)]
  assert not mismatches, mismatches[:5]


def test_free_form_and_scoring():
  assert evaluation.score(' Red. ', 'red', multiple_choice=False)
  assert evaluation.score('the ball', 'ball', multiple_choice=False)
  assert not evaluation.score('blue', 'red', multiple_choice=False)
  assert evaluation.score('The best answer is C', 'C', multiple_choice=True)
  assert evaluation.score('Best answer: c', 'c', multiple_choice=True) is False  # 'c' is no letter
  assert evaluation.score('Best answer: C', ' c ', multiple_choice=True)
  assert not evaluation.score('C', 'B', multiple_choice=True)
  assert evaluation.score('E', 'E', multiple_choice=True, num_options=5)
  assert not evaluation.score('E', 'E', multiple_choice=True)


def test_accuracy_by_type_counts_errors_as_wrong():
  results = [
      dict(question_type='count', correct=True),
      dict(question_type='count', correct=False),
      dict(question_type='colour', correct=True),
      dict(question_type='colour', correct=True, error='cannot read video'),
  ]
  assert evaluation.accuracy_by_type(results) == {'colour': 0.5, 'count': 0.5, 'overall': 0.5}
