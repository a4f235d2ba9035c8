"""Answer scoring as the benchmarks' reference evaluation does it (hand-derived cases)."""

import pytest

from vidlada_jax import evaluation


@pytest.mark.parametrize('text, expected', [
    ('B', 'B'),
    ('(C) a red square', 'C'),
    ('The best answer is D.', 'D'),
    ('Answer: A', 'A'),
    ('The answer is B because the ball bounces', 'B'),
    ('  c  ', ''),  # lower case is not an option letter
    ('red', ''),
    # Long text naming no option is no choice at all...
    ('the square that moves to the left of the frame is the red one in this video', ''),
    # ...but a letter anywhere in a long answer counts, as in the reference.
    ('I think that after looking at every frame carefully the right option is C here', 'C'),
    ('E', ''),  # not among four options
])
def test_multiple_choice_parsing(text, expected):
  assert evaluation.parse_multiple_choice(text) == expected


def test_more_options_and_bad_counts():
  assert evaluation.parse_multiple_choice('E', num_options=5) == 'E'
  with pytest.raises(ValueError, match='num_options'):
    evaluation.parse_multiple_choice('A', num_options=0)


def test_free_form_and_scoring():
  assert evaluation.score(' Red. ', 'red', multiple_choice=False)
  assert evaluation.score('the ball', 'ball', multiple_choice=False)
  assert not evaluation.score('blue', 'red', multiple_choice=False)
  assert evaluation.score('The best answer is C', 'C', multiple_choice=True)
  assert not evaluation.score('C', 'B', multiple_choice=True)


def test_accuracy_by_type_counts_errors_as_wrong():
  results = [
      dict(question_type='count', correct=True),
      dict(question_type='count', correct=False),
      dict(question_type='colour', correct=True),
      dict(question_type='colour', correct=True, error='cannot read video'),
  ]
  assert evaluation.accuracy_by_type(results) == {'colour': 0.5, 'count': 0.5, 'overall': 0.5}
