"""vidlada_jax.launch.app: the traced answer in Python, and the page in a headless Chromium.

The model is the demo architecture with random weights and the demo tokenizer, whose special
tokens sit at moved ids (1024..), so nothing may assume LLaDA's 126k ids.

The browser test drives Debian's chromium through playwright (no bundled browser download):
install it with `apt-get install -y chromium`. Without it that test fails and says so.
"""

import json
import socket
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import vidlada_jax as vj
from vidlada_jax.launch import app
from vidlada_jax import prompting
from vidlada_jax.fixtures import demo_tokenizer
from vidlada_jax.input_pipeline.synthetic import synthetic_clip
from vidlada_jax.video import read_video, write_video

FAST = {'gen_length': 8, 'steps': 8, 'block_length': 8}
FRAMES = 2
QUESTION = 'Which way does the red square move?'
CHROMIUM = Path('/usr/bin/chromium')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('app')
  tokenizer = demo_tokenizer()
  model = vj.init_model(vj.model_config('demo'), seed=3)
  # A random model tends to propose one special token everywhere, which decodes to nothing;
  # zeroing the head's columns of every id that is not a word makes its answers words.
  words = np.zeros(model.config.lm.vocab_size, bool)
  words[[i for i in tokenizer.get_vocab().values() if i < model.config.tokens.bos]] = True
  model.lm.lm_head.kernel[...] = jnp.where(words, model.lm.lm_head.kernel[...], 0.0)
  checkpoint = vj.save_checkpoint(model, root / 'ckpt', tokenizer=tokenizer)
  clips = root / 'clips'
  clips.mkdir()
  clip = write_video(clips / 'square.mp4', synthetic_clip('red', 'right', 8), fps=4)  # 2 frames
  (clips / 'clips.json').write_text(json.dumps([
      {'id': 'square', 'video': 'square.mp4', 'question': QUESTION,
       'options': ['left', 'right', 'up', 'down'], 'answer': 'right', 'answer_letter': 'B',
       'question_type': 'direction', 'format': 'free_form'},
      {'id': 'gone', 'video': 'missing.mp4', 'question': 'Q?', 'format': 'free_form'}]))
  return checkpoint, clip, clips


@pytest.fixture(scope='module')
def demo(files):
  return app.Demo(files[0], frames=FRAMES)


def test_trace_steps_end_at_the_untraced_answer(files, demo):
  _, clip, _ = files
  trace = demo.answer_with_trace(clip, QUESTION, cache='none', **FAST)
  mask = demo.tokens.mask
  _, prompt = demo.answerer.prepare(vj.Question(clip, QUESTION))
  pixels = vj.preprocess_frames(read_video(clip, FRAMES).frames,
                                demo.model.config.vision.image_size)[None]
  plain = vj.generate(demo.model, [prompt], pixels, stop_ids=(demo.tokens.eot,), **FAST)

  # The blank canvas, then one canvas per denoising step.
  assert len(trace.steps) == int(plain.forwards) + 1
  assert (trace.steps[0].tokens == mask).all()
  assert trace.steps[0].text == app.MASK_GLYPH * FAST['gen_length']
  np.testing.assert_array_equal(trace.steps[-1].tokens, np.asarray(plain.tokens)[0])
  for before, after in zip(trace.steps, trace.steps[1:]):
    assert after.revealed.sum() >= 1  # every step reveals something, and nothing is re-masked
    np.testing.assert_array_equal(after.tokens[before.tokens != mask],
                                  before.tokens[before.tokens != mask])
  assert trace.answer == prompting.decode_answer(demo.tokenizer, np.asarray(plain.tokens)[0],
                                                 (demo.tokens.eot,))
  assert trace.tokens_per_s > 0 and trace.compiled and trace.num_frames == FRAMES


def test_bad_requests_are_explained(files, demo):
  _, clip, _ = files
  with pytest.raises(ValueError, match='multiple of block_length'):
    demo.answer_with_trace(clip, QUESTION, gen_length=8, steps=8, block_length=3)
  with pytest.raises(ValueError, match='type a question'):
    demo.answer_with_trace(clip, '  ', **FAST)
  with pytest.raises(FileNotFoundError, match='nowhere.mp4 does not exist'):
    demo.answer_with_trace(clip.parent / 'nowhere.mp4', QUESTION, **FAST)


def test_missing_checkpoint_and_clips(tmp_path, capsys):
  assert app.main(['--checkpoint', str(tmp_path / 'absent')]) == 2
  assert f'checkpoint {tmp_path / "absent"} does not exist' in capsys.readouterr().err
  if not app.assets.DEMO_CHECKPOINT.exists():  # until the trained one is committed
    with pytest.raises(FileNotFoundError, match='pass --checkpoint DIR'):
      app.Demo(app.assets.DEMO_CHECKPOINT)
  assert app.load_clips(tmp_path) == []  # no clips.json: no examples
  (tmp_path / 'clips.json').write_text('[{"question": "Q?"}]')
  with pytest.raises(ValueError, match='each with "video" and "question"'):
    app.load_clips(tmp_path)


def test_clip_questions():
  record = {'question': 'What colour is it?', 'options': ['red', 'blue', 'green', 'pink'],
            'format': 'multiple_choice'}
  assert app.clip_question(record) == ('What colour is it?\nA. red\nB. blue\nC. green\nD. pink\n'
                                       "Answer with the option's letter.")
  assert app.clip_question(dict(record, format='free_form')) == 'What colour is it?'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_page_in_a_browser(files, demo, monkeypatch):
  if not CHROMIUM.exists():
    pytest.fail(f'the browser test needs Debian\'s chromium at {CHROMIUM}: '
                'install it with `apt-get install -y chromium`')
  from playwright.sync_api import expect, sync_playwright

  checkpoint, clip, clips_dir = files
  clips = app.load_clips(clips_dir)
  assert [c['id'] for c in clips] == ['square']  # the record without its video is left out
  direct = vj.Answerer(checkpoint, settings=demo.settings(**FAST), frames=FRAMES)
  expected = direct.ask(clip, QUESTION)
  _, prompt = direct.prepare(vj.Question(clip, QUESTION))
  pixels = vj.preprocess_frames(read_video(clip, FRAMES).frames,
                                demo.model.config.vision.image_size)[None]
  steps = int(vj.generate(direct.model, [prompt], pixels, stop_ids=(demo.tokens.eot,),
                          **FAST).forwards)

  monkeypatch.setenv('GRADIO_ANALYTICS_ENABLED', 'False')
  page_app = app.build_app(demo, clips_dir=clips_dir, replay_seconds=0, **FAST)
  port = free_port()
  page_app.launch(server_name='127.0.0.1', server_port=port, prevent_thread_lock=True,
                  quiet=True, ssr_mode=False)
  try:
    with sync_playwright() as playwright:
      browser = playwright.chromium.launch(
          executable_path=str(CHROMIUM), headless=True,
          args=['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])
      try:
        page = browser.new_page()

        def ask(choose_video):
          page.goto(f'http://127.0.0.1:{port}/')
          choose_video()
          expect(page.locator('#video video')).to_have_count(1, timeout=30_000)
          page.locator('#run').click()
          expect(page.locator('#stats')).to_contain_text('tokens/s', timeout=60_000)
          page.get_by_text('Every step').click()  # the accordion renders its table when open
          expect(page.locator('#trace tr.step')).to_have_count(steps + 1)
          return page.locator('#answer textarea').input_value()

        def upload():
          page.locator('#video input[type=file]').set_input_files(str(clip))
          page.locator('#question textarea').fill(QUESTION)

        def pick_clip():
          page.get_by_text(f'square: {QUESTION}').click()
          expect(page.locator('#question textarea')).to_have_value(QUESTION)

        assert expected.answer, 'the test model should answer with words'
        assert ask(upload) == expected.answer
        # Scrubbing back to step 0 shows the blank canvas again.
        step = page.locator('#step input[type=number]')
        step.fill('0')
        step.press('Enter')
        expect(page.locator('#canvas')).to_have_text(app.MASK_GLYPH * FAST['gen_length'])
        assert ask(pick_clip) == expected.answer
      finally:
        browser.close()
  finally:
    page_app.close()
