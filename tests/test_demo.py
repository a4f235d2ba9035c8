"""The trained demo: its tokenizer and prompts, the bundled checkpoint and clips, the main job."""

import json

import numpy as np
import pytest

import vidlada_jax as vj
from vidlada_jax import assets
from vidlada_jax.launch import demo
from vidlada_jax import fixtures, prompting
from vidlada_jax.config import DEMO_TOKENS
from vidlada_jax.input_pipeline import chat, load_mixture, synthetic_qa
from vidlada_jax.input_pipeline.sources import VideoSource
from vidlada_jax.video import read_video


def test_demo_tokenizer_puts_the_special_tokens_at_the_demo_ids():
  tokenizer = fixtures.demo_tokenizer()
  assert tokenizer.token_to_id('<|startoftext|>') == DEMO_TOKENS.bos == 1024
  assert tokenizer.token_to_id('<|endoftext|>') == DEMO_TOKENS.eos
  assert tokenizer.token_to_id('<|mdm_mask|>') == DEMO_TOKENS.mask
  assert tokenizer.token_to_id('<|start_header_id|>') == DEMO_TOKENS.start_header
  assert tokenizer.token_to_id('<|end_header_id|>') == DEMO_TOKENS.end_header
  assert tokenizer.token_to_id('<|eot_id|>') == DEMO_TOKENS.eot
  assert max(tokenizer.get_vocab().values()) < vj.model_config('demo').lm.vocab_size
  # Every answer of the task is one token, so a one-token canvas could hold it.
  for word in [*synthetic_qa.COLOURS, *synthetic_qa.SIDES, '1', '2', '3', '4', 'A', 'D']:
    assert len(tokenizer.encode(word).ids) == 1, word


def test_training_prompt_is_the_inference_prompt(tmp_path):
  """configs/demo.py trains on exactly the tokens `vidlada_jax.launch.sample` puts before the
  answer."""
  tokenizer = fixtures.demo_tokenizer()
  examples = [synthetic_qa.make_example(0, 'validation', i, num_frames=8, size=64)
              for i in range(4)]
  assert {e['format'] for e in examples} == {'multiple_choice', 'free_form'}
  records = load_mixture(synthetic_qa.export_videos(examples, tmp_path), seed=0)
  prompt_format = chat.PromptFormat(time_instruction=False, no_think=True, tokens=DEMO_TOKENS)
  source = VideoSource(records, tokenizer, num_frames=8, image_size=64, prompt=prompt_format)
  by_id = {e['id']: e for e in examples}
  for index in range(len(source)):
    example = source[index]
    question = synthetic_qa.question_text(by_id[example['id']])
    inference = prompting.tokenize(tokenizer, chat.video_question(question, no_think=True))
    np.testing.assert_array_equal(example['input_ids'][:len(inference)], inference)
    reply = tokenizer.decode(example['input_ids'][len(inference):].tolist(),
                             skip_special_tokens=True)
    assert reply == synthetic_qa.reply_text(by_id[example['id']])
    # Before the assistant turn only the special tokens carry labels (at the demo ids); the
    # assistant turn, its header included, carries them all.
    assistant = int(np.flatnonzero(inference == DEMO_TOKENS.start_header)[-1])
    labelled = example['labels'] != chat.IGNORE
    np.testing.assert_array_equal(
        labelled[:assistant], np.isin(inference[:assistant], [
            DEMO_TOKENS.bos, DEMO_TOKENS.start_header, DEMO_TOKENS.end_header, DEMO_TOKENS.eot]))
    assert np.all(labelled[assistant:])


def test_bundled_clips_match_the_test_split():
  clips = assets.demo_clips()
  # Every question type in each format, the type's first test clip of that format.
  assert [(c['question_type'], c['format']) for c in clips] == [
      (kind, form) for kind in synthetic_qa.QUESTION_TYPES
      for form in ('free_form', 'multiple_choice')]
  # Each test example drawn once, up to the last bundled one.
  examples = [synthetic_qa.make_example(0, 'test', i, num_frames=16, size=64)
              for i in range(1 + max(int(c['id'].split('_')[1]) for c in clips))]
  first = {}
  for example in examples:
    first.setdefault((example['question_type'], example['format']), example['id'])
  assert [c['id'] for c in clips] == [first[(c['question_type'], c['format'])] for c in clips]
  for clip in clips:
    example = examples[int(clip['id'].split('_')[1])]
    assert (clip['answer'], clip['answer_letter'], clip['options']) == (
        example['answer'], example['answer_letter'], example['options'])
    frames = read_video(clip["video"], 16).frames
    assert frames.shape == (16, 64, 64, 3)


def test_bundled_checkpoint_is_small_and_the_demo_architecture():
  config = vj.from_pretrained(assets.DEMO_CHECKPOINT, progress=False).config
  assert config.to_dict() == vj.model_config('demo').to_dict()
  size = sum(f.stat().st_size for f in assets.DEMO_CHECKPOINT.rglob('*') if f.is_file())
  assert size < 8 * 2**20
  assert (assets.DEMO_CHECKPOINT / 'PROVENANCE.md').exists()


def test_main_job_answers_the_bundled_clip(capsys):
  """The main job answers through the ordinary inference path: its plain answer is the one
  `vidlada_jax.launch.sample` gives for the same clip, question and settings, and it reports
  both policies."""
  from vidlada_jax.sampling import SamplerConfig

  code = demo.main([])
  out = capsys.readouterr().out
  assert code == 0, out
  clip = {c['id']: c for c in assets.demo_clips()}[demo.DEFAULT_CLIP]
  question = synthetic_qa.question_text(clip)
  answerer = vj.Answerer(assets.DEMO_CHECKPOINT, frames=64, settings=SamplerConfig(
      gen_length=demo.GEN_LENGTH, steps=demo.STEPS, block_length=demo.BLOCK_LENGTH))
  expected = answerer.ask(clip['video'], question)
  answers = [line for line in out.splitlines() if line.startswith('answer (')]
  assert answers[0] == f'answer (plain decoding): {expected.answer or "(empty answer)"}'
  assert answers[1].startswith('answer (MARS-Cache): ')
  shown = (f'{clip["answer_letter"]} ({clip["answer"]})'
           if clip['format'] == 'multiple_choice' else clip['answer'])
  assert f'expected: {shown}  -> ' in out
  assert 'MARS-Cache' in out and 'speedup' in out
  # The table of every bundled clip: one row each, and a total that counts the rows marked right.
  clips = assets.demo_clips()
  rows = [line.split() for line in out.splitlines()
          if line.split()[:1] and line.split()[0] in {c['id'] for c in clips}]
  assert [row[0] for row in rows] == [c['id'] for c in clips]
  assert all(row[-1] in ('right', 'wrong') for row in rows)
  assert f'{sum(row[-1] == "right" for row in rows)} of {len(clips)} right' in out
