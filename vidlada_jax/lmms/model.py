"""The lmms-eval model `vidlada_jax`: a VidLaDA checkpoint answering video questions.

    python -m vidlada_jax.lmms --model vidlada_jax --tasks videomme --batch_size 1 \\
        --model_args pretrained=CKPT,max_frames_num=64,gen_length=128,steps=128,block_length=128

`pretrained` is a vidlada-jax or PyTorch (LLaDA-V/VidLaDA) checkpoint directory holding
tokenizer.json (anything `vidlada_jax.from_pretrained` loads; default: the demo checkpoint in
assets/). Requests are answered by `vidlada_jax.Answerer`, so prompts, frame sampling and
decoding are exactly those of `python -m vidlada_jax.launch.sample`: each request's context (the
task's question text; an `<image>` in it is dropped, the chat template puts the video first) goes
into the chat template with "/no_think" appended, and the one video `doc_to_visual` names is read
at one frame per second, or `max_frames_num` evenly spread when that would be more.

Model arguments (`--model_args key=value,...`):
  pretrained      checkpoint directory
  max_frames_num  at most this many frames a video (64)
  gen_length, steps, block_length
                  the response canvas, denoising steps and block size (128, 128, 128); a task's
                  `max_new_tokens` replaces gen_length, rounded up to whole blocks, with steps
                  scaled to keep the steps per block (`--gen_kwargs max_new_tokens=N` overrides
                  the task's)
  cache           none | mars | mars-exact | dual (none: plain decoding, as the reference)
  dtype           float32 | bfloat16 (default: the checkpoint's)
  temperature, remasking, cfg_scale, threshold
                  the remaining `SamplerConfig` settings (0, low_confidence, 0, off)
  time_instruction, think, max_length, seed
                  as the `vidlada_jax.launch.sample` flags of the same names
The batch size is lmms-eval's `--batch_size` (an integer).

A task's `until` strings cut the answer at the first of them. A request whose video cannot be
read (missing, corrupt) or whose prompt does not fit the context gets an empty answer and a
warning naming the video; the run goes on. `loglikelihood` is not available: a masked-diffusion
LM has no left-to-right likelihood, so only `generate_until` tasks run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model
from loguru import logger as eval_logger
from tqdm import tqdm

from vidlada_jax import assets
from vidlada_jax.answering import CONTEXT_LENGTH, Answerer, Question
from vidlada_jax.policies import CACHE_POLICIES
from vidlada_jax.prompting import IMAGE_TOKEN
from vidlada_jax.sampling import SamplerConfig
from vidlada_jax.lmms import MODEL_NAME

# Items read into memory at once: a few batches, so a long benchmark shows progress and 64-frame
# clips of a whole task are never held together.
BATCHES_PER_CHUNK = 4
_NONE = ('', 'none', 'null', 'auto')


def _flag(name: str, value: Any) -> bool:
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ('1', 'true', 'yes', 'on'):
    return True
  if text in ('0', 'false', 'no', 'off'):
    return False
  raise ValueError(f'{name} must be true or false, got {value!r}')


def _positive_int(name: str, value: Any) -> int:
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = math.nan
  if not number.is_integer() or number < 1:
    raise ValueError(f'{name} must be a positive integer, got {value!r}')
  return int(number)


def _optional(value: Any) -> Any:
  return None if value is None or str(value).strip().lower() in _NONE else value


def stop_strings(until: Any) -> list[str]:
  """A task's `until` (a string, a list of strings, or None) as a list of non-empty strings."""
  if until is None:
    return []
  if isinstance(until, str):
    until = [until]
  return [stop for stop in until if isinstance(stop, str) and stop]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
  """`text` up to the first occurrence of any of `until`."""
  end = len(text)
  for stop in until:
    at = text.find(stop)
    if at != -1:
      end = min(end, at)
  return text[:end]


def settings_for(base: SamplerConfig, max_new_tokens: Any) -> SamplerConfig:
  """`base` with the canvas sized for `max_new_tokens`: rounded up to whole blocks, keeping the
  steps per block (a diffusion canvas decodes in blocks of `block_length`)."""
  if max_new_tokens is None:
    return base
  tokens = _positive_int('max_new_tokens', max_new_tokens)
  blocks = math.ceil(tokens / base.block_length)
  if blocks * base.block_length == base.gen_length:
    return base
  return dataclasses.replace(base, gen_length=blocks * base.block_length,
                             steps=base.steps_per_block * blocks)


def video_of(visuals: Any, where: str) -> Path:
  """The one video file of a request (`doc_to_visual`'s output)."""
  if not isinstance(visuals, (list, tuple)):
    visuals = [visuals]
  if len(visuals) != 1 or not isinstance(visuals[0], (str, os.PathLike)):
    kinds = ', '.join(type(v).__name__ for v in visuals) or 'nothing'
    raise ValueError(f'{where}: {MODEL_NAME} answers questions about one video file per request, '
                     f'but doc_to_visual gave {len(visuals)} visual(s) ({kinds})')
  return Path(visuals[0])


@register_model(MODEL_NAME)
class VidLaDAJax(lmms):
  """A VidLaDA checkpoint behind lmms-eval's simple-model interface (see the module docstring)."""

  is_simple = True

  def __init__(self, pretrained: str | os.PathLike | None = None, max_frames_num: int = 64,
               gen_length: int = 128, steps: int = 128, block_length: int = 128,
               cache: str = 'none', batch_size: int | str = 1, dtype: str | None = None,
               temperature: float = 0.0, remasking: str = 'low_confidence',
               cfg_scale: float = 0.0, threshold: float | None = None,
               time_instruction: bool = False, think: bool = False,
               max_length: int = CONTEXT_LENGTH, seed: int = 0, device: str | None = None,
               max_batch_size: int | None = None, **unknown) -> None:
    super().__init__()
    if unknown:
      raise ValueError(f'unknown {MODEL_NAME} model_args: {", ".join(sorted(unknown))} (known: '
                       'pretrained, max_frames_num, gen_length, steps, block_length, cache, '
                       'dtype, temperature, remasking, cfg_scale, threshold, time_instruction, '
                       'think, max_length, seed)')
    del device, max_batch_size  # JAX places the model itself; batches are fixed-size
    if str(cache) not in CACHE_POLICIES:
      raise ValueError(f'cache must be one of {", ".join(CACHE_POLICIES)}, got {cache!r}')
    if str(batch_size).startswith('auto'):
      raise ValueError(f'{MODEL_NAME} needs an integer --batch_size, got {batch_size!r}')
    self.batch_size_per_gpu = _positive_int('batch_size', batch_size)
    dtype = _optional(dtype)
    if dtype is not None and dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'dtype must be float32 or bfloat16 (or left out), got {dtype!r}')
    threshold = _optional(threshold)
    settings = SamplerConfig(
        gen_length=_positive_int('gen_length', gen_length),
        steps=_positive_int('steps', steps),
        block_length=_positive_int('block_length', block_length),
        temperature=float(temperature), remasking=str(remasking), cfg_scale=float(cfg_scale),
        threshold=None if threshold is None else float(threshold))
    checkpoint = Path(pretrained if _optional(pretrained) is not None
                      else assets.DEMO_CHECKPOINT).expanduser()
    if not checkpoint.is_dir():
      raise FileNotFoundError(f'pretrained={checkpoint}: no checkpoint directory there')
    self.answerer = Answerer(
        checkpoint, cache=str(cache), frames=_positive_int('max_frames_num', max_frames_num),
        settings=settings, dtype=dtype,
        time_instruction=_flag('time_instruction', time_instruction),
        think=_flag('think', think), max_length=_positive_int('max_length', max_length),
        seed=int(seed))
    # The answerer's settings carry the checkpoint's own special ids (stop token included).
    self.settings = self.answerer.settings
    self.checkpoint = checkpoint
    eval_logger.info(f'{MODEL_NAME}: loaded {checkpoint} in {self.answerer.load_seconds:.1f}s')

  @property
  def batch_size(self) -> int:
    return self.batch_size_per_gpu

  def generate_until(self, requests: list[Instance]) -> list[str]:
    """Answers each request: (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""
    # Requests decode in groups sharing one canvas size; within a group the answerer batches
    # clips of equal frame count.
    groups: dict[SamplerConfig, list[tuple[int, Question, list[str]]]] = {}
    for index, request in enumerate(requests):
      context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
      gen_kwargs = dict(gen_kwargs or {})
      video = video_of(doc_to_visual(self.task_dict[task][split][doc_id]),
                       f'task {task} ({split}) doc {doc_id}')
      question = context.replace(IMAGE_TOKEN, '').strip()
      settings = settings_for(self.settings, gen_kwargs.get('max_new_tokens'))
      groups.setdefault(settings, []).append(
          (index, Question(video, question, id=str(index)),
           stop_strings(gen_kwargs.get('until'))))
    responses = [''] * len(requests)
    progress = tqdm(total=len(requests), disable=self.rank != 0, desc='Model Responding')
    chunk = self.batch_size * BATCHES_PER_CHUNK
    try:
      for settings, entries in groups.items():
        self.answerer.settings = settings
        for start in range(0, len(entries), chunk):
          part = entries[start:start + chunk]
          answers = self.answerer.ask_batch([item for _, item, _ in part], self.batch_size,
                                            keep_going=True)
          for (index, item, until), answer in zip(part, answers):
            if answer.error:
              eval_logger.warning(f'{MODEL_NAME}: no answer for video {item.video} (request '
                                  f'{index}): {answer.error}; scoring an empty response')
              text = ''
            else:
              text = cut_at_stop(answer.answer, until)
            responses[index] = text
            context, gen_kwargs = requests[index].args[:2]
            self.cache_hook.add_partial('generate_until', (context, gen_kwargs), text)
          progress.update(len(part))
    finally:
      self.answerer.settings = self.settings
      progress.close()
    return responses

  def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
    raise NotImplementedError(
        f'{MODEL_NAME} cannot compute log-likelihoods: VidLaDA\'s LM is a masked-diffusion model '
        'with no left-to-right likelihood of a continuation, so loglikelihood and '
        'multiple_choice tasks are not supported; use a generate_until variant of the task')

  def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
    raise NotImplementedError(
        f'{MODEL_NAME} answers one question per video (generate_until); multi-round '
        'generation is not supported')
