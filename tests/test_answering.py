"""vj.Answerer: the library's one way to answer video questions, single or batched."""

import subprocess
import sys

import numpy as np
import pytest

import vidlada_jax as vj
from vidlada_jax.answering import INPUT_ERRORS, PROMPT_MULTIPLE
from vidlada_jax.fixtures import tiny_tokenizer
from vidlada_jax.input_pipeline.synthetic import synthetic_clip
from vidlada_jax.params import randomise
from vidlada_jax.sampling import SamplerConfig
from vidlada_jax.video import write_video

SETTINGS = SamplerConfig(gen_length=8, steps=8, block_length=8)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('answering')
  # A randomised tiny model: its answers depend on the video and the question, so a mix-up of
  # batch rows would show.
  model = vj.init_model(vj.model_config('tiny'), seed=5)
  checkpoint = vj.save_checkpoint(randomise(model, seed=5), root / 'ckpt',
                                  tokenizer=tiny_tokenizer())
  # At 4 fps: read at one frame a second, 6, 6 and 3 frames.
  videos = [write_video(root / f'{name}.mp4', synthetic_clip(colour, direction, frames), fps=4)
            for name, colour, direction, frames in [('a', 'red', 'right', 24),
                                                    ('b', 'blue', 'left', 24),
                                                    ('c', 'green', 'right', 12)]]
  return checkpoint, videos


def test_policies_are_named_once():
  assert set(vj.CACHE_POLICIES) == {'none', 'mars', 'mars-exact', 'mars-refresh', 'mars-chunk',
                                    'mars-anchors', 'dual'}
  assert isinstance(vj.cache_policy('none'), vj.FullRecompute)
  assert vj.cache_policy('mars') == vj.MarsCache()
  assert vj.cache_policy('mars-exact') == vj.MarsCache.exact()
  assert vj.cache_policy('mars-refresh').frame_window is None
  assert vj.MarsCacheConfig is vj.MarsCache  # the 0.1 name keeps working
  with pytest.raises(ValueError, match="unknown cache policy 'mars2'; expected one of none, mars"):
    vj.cache_policy('mars2')


def test_batched_answers_equal_single_ones_in_order(files):
  """Batching (rows of one frame count together, others apart) changes no answer and keeps the
  questions' order and ids."""
  checkpoint, (a, b, c) = files
  answerer = vj.Answerer(checkpoint, settings=SETTINGS, frames=8)
  questions = [vj.Question(a, 'What moves?', id='a'), vj.Question(c, 'Which colour?', id='c'),
               vj.Question(b, 'Where does it go?', id='b')]
  batched = answerer.ask_batch(questions, batch_size=2)
  assert [r.id for r in batched] == ['a', 'c', 'b']
  assert [r.num_frames for r in batched] == [6, 3, 6]
  # a and b (6 frames) shared one batch, c (3 frames) had its own.
  programs = answerer.timings['programs']
  assert sorted((rows, frames) for rows, _, frames in programs) == [(1, 3), (2, 6)]
  assert all(length % PROMPT_MULTIPLE == 0 for _, length, _ in programs)
  singles = [answerer.ask(q.video, q.question) for q in questions]
  for single, row in zip(singles, batched):
    assert single.tokens == row.tokens and single.answer == row.answer
  assert len({tuple(r.tokens) for r in batched}) > 1  # the rows really are different answers


def test_cache_policy_by_name_and_exact_mode(files):
  checkpoint, (a, _, _) = files
  answerer = vj.Answerer(checkpoint, settings=SETTINGS, frames=8, cache='mars-exact')
  exact = answerer.ask(a, 'What moves?')
  answerer.cache = 'none'
  assert answerer.policy == vj.FullRecompute()
  assert answerer.ask(a, 'What moves?').tokens == exact.tokens  # exact mode is plain decoding
  with pytest.raises(ValueError, match='unknown cache policy'):
    answerer.cache = 'fast'
  with pytest.raises(ValueError, match='unknown cache policy'):
    vj.Answerer(checkpoint, cache='fast')


def test_settings_take_the_checkpoints_special_ids(files):
  checkpoint, _ = files
  answerer = vj.Answerer(checkpoint, settings=SETTINGS)
  tokens = answerer.model.config.tokens
  assert answerer.settings.tokens == tokens and answerer.settings.stop_ids == (tokens.eot,)
  assert answerer.settings.gen_length == 8
  with pytest.raises(FileNotFoundError, match='does not exist'):
    vj.Answerer(checkpoint.parent / 'missing')


def test_bad_video_is_an_input_error(files, tmp_path):
  checkpoint, (a, _, _) = files
  answerer = vj.Answerer(checkpoint, settings=SETTINGS, frames=8)
  corrupt = tmp_path / 'corrupt.mp4'
  corrupt.write_bytes(b'not a video')
  with pytest.raises(INPUT_ERRORS):
    answerer.ask(corrupt, 'What moves?')
  replies = answerer.ask_batch([vj.Question(corrupt, 'Q?', id='x'), vj.Question(a, 'Q?', id='y')],
                               keep_going=True)
  assert replies[0].error and replies[0].tokens == []
  assert replies[1].error is None and len(replies[1].tokens) == 8


def test_importing_the_package_or_its_plugin_does_not_start_jax():
  """lmms-eval loads the plugin's entry point while it builds its registry: it stays cheap."""
  code = ('import sys, vidlada_jax, vidlada_jax.lmms, vidlada_jax.configs; '
          'print("jax" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == 'False'
  assert np.isin(['Answerer', 'MarsCache', 'generate'], dir(vj)).all()
