"""Answering questions about videos with a VidLaDA checkpoint, one at a time or in batches.

    answerer = vj.Answerer('assets/demo-vidlada', cache='mars', frames=16)
    reply = answerer.ask('clip.mp4', 'What colour is the ball?')
    print(reply.answer)
    replies = answerer.ask_batch([vj.Question('a.mp4', 'What happens?'), ...], batch_size=8)

This is the path every front end takes (`vidlada-sample`, `vidlada-evaluate`, the web page, the
lmms-eval model), so an answer is the same whichever asked it. Frames are sampled as the
reference evaluates (one per second, or `frames` evenly spread when that would be more) and
resized to the checkpoint's tower resolution; the question goes into the chat template with
"/no_think" appended unless `think`; `time_instruction` adds the video's duration and frame
times. Questions whose videos have the same frame count are decoded together, `batch_size` rows
at a time, each row left-padded to a multiple of `pad_to_multiple_of` prompt tokens so that
questions of nearby lengths share one compiled program (padding does not change an answer).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from vidlada_jax import policies, prompting, sampling
from vidlada_jax.config import TokenIds
from vidlada_jax.input_pipeline import chat
from vidlada_jax.loading import from_pretrained
from vidlada_jax.preprocess import preprocess_frames
from vidlada_jax.sampling import SampleOutput, SamplerConfig
from vidlada_jax.video import Clip, VideoError, read_video

CONTEXT_LENGTH = 32768  # VidLaDA's training context
PROMPT_MULTIPLE = 64  # default left-padding multiple of prompts, in text tokens
# The reference evaluation's decoding: 128 tokens, one revealed per step, one block.
DEFAULT_SETTINGS = SamplerConfig(gen_length=128, steps=128, block_length=128)


class PromptTooLong(ValueError):
  """A prompt (text and frames) and its canvas do not fit the context: bad input, not a bug."""


# What describes a question that cannot be answered, as opposed to a bug: `ask_batch` with
# `keep_going` records these as the question's error and lets anything else propagate.
INPUT_ERRORS = (VideoError, FileNotFoundError, PromptTooLong)


@dataclasses.dataclass
class Question:
  video: str | os.PathLike
  question: str
  id: str = '0'


@dataclasses.dataclass
class Answer:
  id: str
  video: str
  question: str
  answer: str
  tokens: list[int]  # the decoded canvas
  num_frames: int
  prompt_tokens: int  # after splicing the visual tokens
  error: str | None = None  # why this question has no answer


def describe_layout(prompt: np.ndarray, num_frames: int, tokens_per_frame: int,
                    gen_length: int, image_id: int = TokenIds().image) -> str:
  """The spliced sequence, segment by segment: text, visual tokens, text, response canvas."""
  at = int(np.flatnonzero(np.asarray(prompt) == image_id)[0])
  visual = num_frames * tokens_per_frame
  end = len(prompt) - 1 + visual
  rows = [('text', 0, at, f'{at} prompt tokens before <image>'),
          ('visual', at, at + visual, f'{num_frames} frames x {tokens_per_frame} tokens'),
          ('text', at + visual, end, f'{len(prompt) - at - 1} prompt tokens after <image>'),
          ('canvas', end, end + gen_length, f'{gen_length} x <|mdm_mask|> to decode')]
  return '\n'.join(f'  {kind:<7} positions [{start:>6}, {stop:>6})  {what}'
                   for kind, start, stop, what in rows)


class Answerer:
  """A loaded checkpoint and tokenizer answering video questions with fixed decoding settings.

  `cache` names the cache policy (`vidlada_jax.policies`: none, mars, mars-exact, dual, ...);
  `settings` the decoding (`SamplerConfig`; its special token ids are replaced by the
  checkpoint's own, which a small demo vocabulary moves). Both may be reassigned between calls.
  Each call draws a fresh key from `seed`'s stream; with greedy decoding the key is unused.
  `timings` describes the last `ask`/`ask_batch` call.
  """

  def __init__(self, checkpoint: str | os.PathLike, *, cache: str = 'none', frames: int = 64,
               settings: SamplerConfig | None = None, dtype=None, time_instruction: bool = False,
               think: bool = False, max_length: int = CONTEXT_LENGTH, seed: int = 0,
               pad_to_multiple_of: int = PROMPT_MULTIPLE, progress: bool = False):
    if frames < 1:
      raise ValueError(f'frames must be positive, got {frames}')
    sampling.padded_length(1, pad_to_multiple_of)  # validates it
    self.cache = cache
    self.frames = frames
    self.time_instruction = time_instruction
    self.think = think
    self.max_length = max_length
    self.pad_to_multiple_of = pad_to_multiple_of
    self.rng = jax.random.key(seed)
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
      raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    self.tokenizer = prompting.load_tokenizer(checkpoint)
    start = time.perf_counter()
    self.model = from_pretrained(checkpoint, dtype=dtype, progress=progress)
    self.load_seconds = time.perf_counter() - start
    if self.model.vision_tower is None or self.model.lm is None:
      raise ValueError(f'{checkpoint} is not a combined VidLaDA checkpoint (it lacks '
                       f'{"a vision tower" if self.model.vision_tower is None else "an LM"})')
    self.settings = settings or DEFAULT_SETTINGS
    self.timings: dict = {}

  @property
  def cache(self) -> str:
    return self._cache

  @cache.setter
  def cache(self, name: str) -> None:
    self.policy = policies.cache_policy(name)
    self._cache = name

  @property
  def settings(self) -> SamplerConfig:
    return self._settings

  @settings.setter
  def settings(self, settings: SamplerConfig) -> None:
    tokens = self.model.config.tokens
    self._settings = dataclasses.replace(settings, tokens=tokens, stop_ids=(tokens.eot,))

  @property
  def tokens_per_frame(self) -> int:
    return self.model.config.tokens_per_frame

  def prepare(self, question: Question) -> tuple[Clip, np.ndarray]:
    """The question's sampled frames and its tokenized prompt (with the <image> placeholder)."""
    clip = read_video(question.video, self.frames)
    time_info = (chat.time_instruction(clip.duration_s, clip.times_s)
                 if self.time_instruction else None)
    text = chat.video_question(question.question, time_info=time_info, no_think=not self.think)
    prompt = prompting.tokenize(self.tokenizer, text)
    length = len(prompt) - 1 + len(clip.frames) * self.tokens_per_frame
    if length + self.settings.gen_length > self.max_length:
      raise PromptTooLong(
          f'{question.video}: the prompt is {length} tokens ({len(prompt) - 1} text + '
          f'{len(clip.frames)} frames x {self.tokens_per_frame} visual) and with a gen_length '
          f'of {self.settings.gen_length} exceeds the {self.max_length}-token context; use '
          'fewer frames or a shorter gen_length')
    return clip, prompt

  def pixels(self, clips: Sequence[Clip]) -> np.ndarray:
    """[B, F, size, size, 3] tower inputs of clips with the same frame count."""
    size = self.model.config.vision.image_size
    return np.stack([preprocess_frames(clip.frames, size) for clip in clips])

  def decode(self, prompts: Sequence[np.ndarray], pixels: np.ndarray, *, rng=None,
             trace: bool = False) -> SampleOutput:
    """One `vj.generate` call with this answerer's settings, policy and padding; `rng` defaults
    to the next key of the answerer's stream."""
    if rng is None:
      self.rng, rng = jax.random.split(self.rng)
    return sampling.generate(
        self.model, list(prompts), pixels, rng=rng, cache=self.policy, trace=trace,
        pad_to_multiple_of=self.pad_to_multiple_of,
        **{f.name: getattr(self.settings, f.name)
           for f in dataclasses.fields(self.settings) if f.name != 'tokens'})

  def ask(self, video: str | os.PathLike, question: str) -> Answer:
    """The answer to one question; bad input (an unreadable video, a prompt that does not fit)
    raises one of `INPUT_ERRORS`."""
    return self.ask_batch([Question(video, question)], batch_size=1)[0]

  def ask_batch(self, questions: Sequence[Question], batch_size: int = 8, *,
                keep_going: bool = False,
                on_layout: Callable[[str], None] | None = None) -> list[Answer]:
    """The answers to `questions`, in their order.

    With `keep_going`, a question that cannot be prepared (one of `INPUT_ERRORS`) gets an
    `Answer` with its `error` and the others are answered; any other exception propagates.
    `on_layout` receives each batch's spliced-sequence layout (`describe_layout`).
    `self.timings` then holds load_s, video_s, generate_s, generated_tokens, tokens_per_s and
    `programs`: the shape (rows, padded prompt tokens, frames) of every batch decoded, which is
    what each compiled program depends on.
    """
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    timings = dict(load_s=self.load_seconds, video_s=0.0, generate_s=0.0, generated_tokens=0,
                   programs=[])
    answers: dict[int, Answer] = {}
    by_frames: dict[int, list] = {}
    for index, question in enumerate(questions):
      start = time.perf_counter()
      try:
        clip, prompt = self.prepare(question)
      except INPUT_ERRORS as e:
        if not keep_going:
          raise
        answers[index] = Answer(id=question.id, video=str(question.video),
                                question=question.question, answer='', tokens=[], num_frames=0,
                                prompt_tokens=0, error=str(e))
        continue
      finally:
        timings['video_s'] += time.perf_counter() - start
      by_frames.setdefault(len(clip.frames), []).append((index, question, clip, prompt))
    for num_frames, group in by_frames.items():
      for i in range(0, len(group), batch_size):
        batch = group[i:i + batch_size]
        prompts = [prompt for *_, prompt in batch]
        if on_layout:
          on_layout(describe_layout(prompts[0], num_frames, self.tokens_per_frame,
                                    self.settings.gen_length))
        pixels = self.pixels([clip for _, _, clip, _ in batch])
        timings['programs'].append((len(batch), sampling.padded_length(
            max(len(p) for p in prompts), self.pad_to_multiple_of), num_frames))
        start = time.perf_counter()
        out = self.decode(prompts, pixels)
        tokens = np.asarray(out.tokens)
        timings['generate_s'] += time.perf_counter() - start
        timings['generated_tokens'] += int(np.asarray(out.lengths).sum())
        for (index, question, _, prompt), row in zip(batch, tokens):
          answers[index] = Answer(
              id=question.id, video=str(question.video), question=question.question,
              answer=prompting.decode_answer(self.tokenizer, row, self.settings.stop_ids),
              tokens=row.tolist(), num_frames=num_frames,
              prompt_tokens=len(prompt) - 1 + num_frames * self.tokens_per_frame)
    timings['tokens_per_s'] = timings['generated_tokens'] / max(timings['generate_s'], 1e-9)
    self.timings = timings
    return [answers[index] for index in range(len(questions))]
