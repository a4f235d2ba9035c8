"""A web page that answers questions about videos and shows the answer denoising, step by step.

    python -m vidlada_jax.launch.app [--port 7860] [--host 127.0.0.1] [--checkpoint DIR]
        [--clips DIR] [--frames 64] [--gen-length 16 --steps 16 --block-length 16] [--cache none]
        [--think] [--replay-seconds 3]

Then open http://HOST:PORT. Upload a video or pick one of the bundled clips, type a question and
press "Answer". The model is a masked-diffusion LM: the answer starts as a canvas of mask tokens
(shown as ░) and each denoising step reveals some of them. The page replays the canvas after every
step, lets you scrub through the steps afterwards, lists every step, and shows the final answer
and the decoding speed. The cache policy (those of vidlada_jax.launch.sample --cache: none, mars,
dual, ...), the canvas length, the number of steps and the block length are controls on the page.

DIR defaults to the trained demo checkpoint (`vidlada_jax.assets.DEMO_CHECKPOINT`); any VidLaDA
checkpoint that `vidlada_jax.launch.sample` reads works. The bundled clips are
`assets/clips/clips.json` (`vidlada_jax.assets`); --clips points at another directory holding a
clips.json. Without one the page offers no examples.

The model is loaded once at start-up. Each new combination of settings, frame count and prompt
length compiles one decode program first (the page marks those timings "includes compilation").

In Python, without a browser:

    demo = Demo(checkpoint, frames=64)
    trace = demo.answer_with_trace('clip.mp4', 'What moves?', gen_length=16, steps=16,
                                   block_length=16, cache='none')
    trace.steps[0].text, trace.steps[-1].tokens, trace.answer, trace.tokens_per_s
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

import vidlada_jax as vj
from vidlada_jax import assets, policy_comparison, prompting, sampling
from vidlada_jax.answering import Answerer, Question
from vidlada_jax.input_pipeline import synthetic_qa
from vidlada_jax.launch import demo as demo_job
from vidlada_jax.policies import CACHE_POLICIES
from vidlada_jax.sampling import SamplerConfig
from vidlada_jax.video import VideoError

MASK_GLYPH = '░'  # how a still-masked canvas position is shown
CACHE_CHOICES = tuple(CACHE_POLICIES)
FRAMES = 64  # as vidlada_jax.launch.demo and vidlada_jax.launch.sample read videos


@dataclasses.dataclass
class Step:
  """The canvas after one denoising step (number 0: the blank canvas before the first step)."""

  number: int
  block: int  # the block this step decoded (0 for the blank canvas)
  tokens: np.ndarray  # [gen_length] int32; the mask id where still masked
  revealed: np.ndarray  # [gen_length] bool: positions this step revealed
  text: str  # the canvas as text, masked positions as MASK_GLYPH


@dataclasses.dataclass
class Trace:
  """One answered question: every canvas of the decode, the answer and how fast it came."""

  steps: list[Step]  # the blank canvas, then one per denoising step
  answer: str
  tokens: np.ndarray  # [gen_length] the final canvas (equals steps[-1].tokens)
  decoded_tokens: int  # canvas positions revealed (an answer ends at its stop token)
  seconds: float  # the decode, including compilation when `compiled`
  compiled: bool  # whether this decode compiled its program first
  num_frames: int
  prompt_tokens: int  # after splicing the visual tokens
  settings: SamplerConfig
  cache: str

  @property
  def tokens_per_s(self) -> float:
    return self.decoded_tokens / max(self.seconds, 1e-9)


def clip_question(record: dict) -> str:
  """The question of a bundled clip as the model was trained to see it (as vidlada_jax.launch.demo
  asks it): multiple-choice questions carry their lettered options and the answer instruction."""
  return synthetic_qa.question_text(record)


def load_clips(directory: str | os.PathLike | None = None) -> list[dict]:
  """The clips listed in `directory`/clips.json (default: the bundled assets/clips), with
  absolute video paths; [] when there is no clips.json, so the page simply offers no examples.
  Records whose video file is missing are left out."""
  directory = Path(directory) if directory is not None else assets.CLIPS
  listing = directory / 'clips.json'
  if not listing.exists():
    return []
  try:
    records = json.loads(listing.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{listing} is not valid JSON: {e}') from e
  well_formed = isinstance(records, list) and all(
      isinstance(record, dict) and {'video', 'question'} <= set(record) for record in records)
  if not well_formed:
    raise ValueError(f'{listing} must hold a JSON list of clip records, each with "video" and '
                     '"question"')
  clips = []
  for record in records:
    video = directory / record['video']
    if video.exists():
      clips.append(dict(record, video=str(video)))
  return clips


def missing_checkpoint_message(checkpoint: Path) -> str:
  message = f'checkpoint {checkpoint} does not exist'
  if checkpoint.resolve() == assets.DEMO_CHECKPOINT.resolve():
    message += (' (the trained demo checkpoint is not in this copy of the repository yet); pass '
                '--checkpoint DIR to use another VidLaDA checkpoint')
  return message


class Demo:
  """A loaded checkpoint answering one question at a time with a traced decode.

  Decodes through `vidlada_jax.Answerer` (loading, frame sampling, the prompt and the decode
  call), so an answer here equals what `vidlada_jax.launch.sample` or `Answerer.ask` gives with
  the same settings.
  """

  def __init__(self, checkpoint: str | os.PathLike, *, frames: int = FRAMES, think: bool = False,
               dtype: str | None = None, seed: int = 0):
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
      raise FileNotFoundError(missing_checkpoint_message(checkpoint))
    if frames < 1:
      raise ValueError(f'frames must be positive, got {frames}')
    self.checkpoint = checkpoint
    self.seed = seed
    # The settings are replaced per question (`settings`); these only have to be valid.
    self.answerer = Answerer(checkpoint, frames=frames, dtype=dtype, think=think, seed=seed)
    self.model = self.answerer.model
    self.tokenizer = self.answerer.tokenizer
    self.tokens = self.model.config.tokens  # this checkpoint's special ids (never LLaDA's)
    self._lock = threading.Lock()  # one decode at a time: the answerer's settings are shared
    self._compiled: set = set()

  def settings(self, gen_length: int, steps: int, block_length: int) -> SamplerConfig:
    """Greedy low-confidence decoding, stopping at this checkpoint's <|eot_id|>."""
    return SamplerConfig(gen_length=int(gen_length), steps=int(steps),
                         block_length=int(block_length), stop_ids=(self.tokens.eot,),
                         tokens=self.tokens)

  def answer_with_trace(self, video: str | os.PathLike, question: str, *, gen_length: int,
                        steps: int, block_length: int, cache: str = 'none') -> Trace:
    """Answers `question` about `video`, keeping the canvas after every denoising step.

    Raises ValueError (bad settings, empty question, prompt too long), FileNotFoundError or
    VideoError (unreadable video) with a message meant for the person asking.
    """
    if not question or not question.strip():
      raise ValueError('type a question about the video')
    if cache not in CACHE_POLICIES:
      raise ValueError(f'cache must be one of {CACHE_CHOICES}, got {cache!r}')
    settings = self.settings(gen_length, steps, block_length)
    with self._lock:
      self.answerer.settings = settings  # `prepare` checks the context length against it
      self.answerer.cache = cache
      clip, prompt = self.answerer.prepare(Question(Path(video), question))
      pixels = self.answerer.pixels([clip])
      # The key a fresh answerer uses for its first batch, so answers match vidlada-sample's.
      _, key = jax.random.split(jax.random.key(self.seed))
      multiple = self.answerer.pad_to_multiple_of
      program = (settings, cache, pixels.shape, sampling.padded_length(len(prompt), multiple))
      compiled = program not in self._compiled
      start = time.perf_counter()
      out = self.answerer.decode([prompt], pixels, rng=key, trace=True)
      final = np.asarray(out.tokens)[0]
      history = np.asarray(out.history)
      seconds = time.perf_counter() - start
      self._compiled.add(program)
    mask = self.tokens.mask
    canvases = [np.full(settings.gen_length, mask, np.int32)]
    blocks = [0]
    _, step_blocks, step_numbers = policy_comparison.trajectory(history, mask)
    for block, number in zip(step_blocks, step_numbers):
      canvases.append(history[block, number, 0])
      blocks.append(int(block))
    steps_out = []
    for number, (canvas, block) in enumerate(zip(canvases, blocks)):
      previous = canvases[number - 1] if number else canvas
      revealed = (canvas != mask) & (previous == mask)
      steps_out.append(Step(number=number, block=block, tokens=canvas, revealed=revealed,
                            text=canvas_text(self.tokenizer, canvas, mask)))
    return Trace(
        steps=steps_out,
        answer=prompting.decode_answer(self.tokenizer, final, settings.stop_ids),
        tokens=final, decoded_tokens=int((final != mask).sum()), seconds=seconds,
        compiled=compiled, num_frames=len(clip.frames),
        prompt_tokens=len(prompt) - 1 + len(clip.frames) * self.model.config.tokens_per_frame,
        settings=settings, cache=cache)


# --- Rendering -----------------------------------------------------------------------------------


def token_piece(tokenizer, token: int, mask_id: int) -> str:
  """The text of one canvas position: MASK_GLYPH while masked, special tokens spelled out, and
  ⟨id⟩ for an id the tokenizer lacks (a model's vocabulary may be padded past it)."""
  if token == mask_id:
    return MASK_GLYPH
  if tokenizer.id_to_token(token) is None:
    return f'⟨{token}⟩'
  return tokenizer.decode([token], skip_special_tokens=False)


def token_pieces(tokenizer, canvas: np.ndarray, mask_id: int) -> list[str]:
  return [token_piece(tokenizer, int(t), mask_id) for t in canvas]


def canvas_text(tokenizer, canvas: np.ndarray, mask_id: int) -> str:
  return ''.join(token_pieces(tokenizer, canvas, mask_id))


_STYLES = {
    'mask': 'color:#9ca3af',
    'new': 'background:#fde68a;color:#111827;border-radius:3px',
    'old': 'color:inherit',
}


def canvas_html(tokenizer, step: Step, mask_id: int, special_ids=()) -> str:
  """One canvas as HTML: masked positions grey, the ones this step revealed highlighted."""
  spans = []
  for position, (token, piece) in enumerate(zip(step.tokens,
                                                token_pieces(tokenizer, step.tokens, mask_id))):
    kind = 'mask' if int(token) == mask_id else 'new' if step.revealed[position] else 'old'
    style = _STYLES[kind] + (';font-style:italic;opacity:.7' if int(token) in special_ids else '')
    spans.append(f'<span class="tok {kind}" style="{style}" title="position {position}, '
                 f'token {int(token)}">{html.escape(piece)}</span>')
  return ('<div class="canvas" style="font-family:ui-monospace,monospace;font-size:1.05em;'
          f'white-space:pre-wrap;line-height:1.6">{"".join(spans)}</div>')


def trace_html(tokenizer, trace: Trace, mask_id: int, special_ids=()) -> str:
  """Every canvas of a decode, one table row per step."""
  rows = []
  for step in trace.steps:
    revealed = int(step.revealed.sum())
    rows.append(
        f'<tr class="step"><td>{step.number}</td><td>{step.block + 1 if step.number else ""}</td>'
        f'<td>{revealed if step.number else ""}</td>'
        f'<td>{canvas_html(tokenizer, step, mask_id, special_ids)}</td></tr>')
  return ('<table class="trace"><thead><tr><th>step</th><th>block</th><th>revealed</th>'
          f'<th>canvas</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def stats_text(trace: Trace) -> str:
  settings = trace.settings
  timing = ' (includes compilation; run again for the steady speed)' if trace.compiled else ''
  return (f'**{trace.tokens_per_s:.1f} tokens/s**: {trace.decoded_tokens} tokens in '
          f'{len(trace.steps) - 1} denoising steps, {trace.seconds:.2f} s{timing}.  \n'
          f'{trace.num_frames} frames, {trace.prompt_tokens} prompt tokens; canvas '
          f'{settings.gen_length}, {settings.steps} steps, blocks of {settings.block_length}, '
          f'cache {trace.cache}.')


# --- The page ------------------------------------------------------------------------------------


def build_app(demo: Demo | str | os.PathLike | None = None, *,
              clips_dir: str | os.PathLike | None = None, frames: int = FRAMES,
              gen_length: int = demo_job.GEN_LENGTH, steps: int = demo_job.STEPS,
              block_length: int = demo_job.BLOCK_LENGTH,
              cache: str = 'none', replay_seconds: float = 3.0):
  """The page as a `gr.Blocks` (launch it with `.launch()`).

  Args:
    demo: a loaded `Demo`, or a checkpoint directory to load (default: the demo checkpoint).
    clips_dir: the directory of clips.json offered as examples (default: assets/clips).
    frames: at most this many frames per video (when `demo` is a path).
    gen_length, steps, block_length, cache: the controls' initial values.
    replay_seconds: how long replaying the steps of an answer takes on the page (0: no pause).
  """
  import gradio as gr  # only the page needs it

  if not isinstance(demo, Demo):
    demo = Demo(assets.DEMO_CHECKPOINT if demo is None else demo, frames=frames)
  clips = load_clips(clips_dir)
  mask_id = demo.tokens.mask
  special_ids = {demo.tokens.eot, demo.tokens.eos, demo.tokens.bos}

  def run(video, question, cache_policy, gen, num_steps, block):
    if not video:
      raise gr.Error('Upload a video or pick one of the clips first.')
    yield ('Decoding…', gr.skip(), gr.skip(), '', gr.skip(), None)
    try:
      trace = demo.answer_with_trace(video, question, gen_length=gen, steps=num_steps,
                                     block_length=block, cache=cache_policy)
    except (ValueError, FileNotFoundError, VideoError) as e:
      raise gr.Error(str(e)) from e
    last = len(trace.steps) - 1
    pause = replay_seconds / max(last, 1)
    for step in trace.steps[:-1]:
      yield (f'Replaying step {step.number} of {last}…',
             canvas_html(demo.tokenizer, step, mask_id, special_ids),
             gr.skip(), gr.skip(), gr.skip(), gr.skip())
      if pause:
        time.sleep(pause)
    yield (stats_text(trace), canvas_html(demo.tokenizer, trace.steps[-1], mask_id, special_ids),
           gr.Slider(minimum=0, maximum=last, value=last, step=1, interactive=True),
           trace.answer, trace_html(demo.tokenizer, trace, mask_id, special_ids), trace)

  def show_step(trace, number):
    if trace is None:
      return gr.skip()
    number = int(min(max(number, 0), len(trace.steps) - 1))
    return canvas_html(demo.tokenizer, trace.steps[number], mask_id, special_ids)

  with gr.Blocks(title='VidLaDA: watch an answer denoise', analytics_enabled=False) as app:
    gr.Markdown(
        '## VidLaDA: watch an answer denoise\n'
        f'`{demo.checkpoint}`. The answer starts as a canvas of masks ({MASK_GLYPH}); each '
        'denoising step reveals the positions the model is most confident about, block by '
        'block. Newly revealed tokens are highlighted.')
    with gr.Row():
      with gr.Column(scale=1):
        video = gr.Video(label='Video', sources=['upload'], elem_id='video')
        question = gr.Textbox(label='Question', lines=2, elem_id='question',
                              placeholder='What happens in the video?')
        if clips:
          gr.Examples(examples=[[clip['video'], clip_question(clip)] for clip in clips],
                      inputs=[video, question], cache_examples=False, elem_id='clips',
                      label='Bundled clips',
                      example_labels=[f'{clip.get("id", i)}: {clip["question"]}'
                                      for i, clip in enumerate(clips)])
        with gr.Accordion('Decoding settings', open=True):
          cache_policy = gr.Radio(list(CACHE_CHOICES), value=cache, label='Cache policy',
                                  elem_id='cache')
          gen = gr.Slider(1, 512, value=gen_length, step=1, label='Canvas (gen) length',
                          elem_id='gen_length')
          num_steps = gr.Slider(1, 512, value=steps, step=1, label='Denoising steps',
                                elem_id='steps',
                                info='a multiple of the number of blocks')
          block = gr.Slider(1, 512, value=block_length, step=1, label='Block length',
                            elem_id='block_length', info='divides the canvas length')
        button = gr.Button('Answer', variant='primary', elem_id='run')
      with gr.Column(scale=2):
        stats = gr.Markdown('', elem_id='stats')
        canvas = gr.HTML(label='Canvas', elem_id='canvas')
        step = gr.Slider(0, 1, value=0, step=1, label='Step (drag to replay)', elem_id='step')
        answer = gr.Textbox(label='Answer', interactive=False, elem_id='answer')
        with gr.Accordion('Every step', open=False):
          trace_table = gr.HTML(elem_id='trace')
    state = gr.State(None)
    button.click(run, [video, question, cache_policy, gen, num_steps, block],
                 [stats, canvas, step, answer, trace_table, state], concurrency_limit=1)
    step.change(show_step, [state, step], canvas, trigger_mode='always_last',
                show_progress='hidden')
  return app


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.app', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', default=str(assets.DEMO_CHECKPOINT),
                      help='a VidLaDA checkpoint directory with tokenizer.json '
                      '(default: %(default)s)')
  parser.add_argument('--clips', help='directory with clips.json (default: the bundled clips)')
  parser.add_argument('--host', default='127.0.0.1', help='0.0.0.0 to serve other machines')
  parser.add_argument('--port', type=int, default=7860)
  parser.add_argument('--frames', type=int, default=FRAMES,
                      help='at most this many frames (%(default)s)')
  # The controls start at what the demo model was evaluated with (vidlada_jax.launch.demo).
  parser.add_argument('--gen-length', type=int, default=demo_job.GEN_LENGTH)
  parser.add_argument('--steps', type=int, default=demo_job.STEPS)
  parser.add_argument('--block-length', type=int, default=demo_job.BLOCK_LENGTH)
  parser.add_argument('--cache', default='none', choices=CACHE_CHOICES)
  parser.add_argument('--think', action='store_true', help='do not append /no_think')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), help="default: the checkpoint's")
  parser.add_argument('--replay-seconds', type=float, default=3.0,
                      help='how long the page takes to replay the steps of an answer')
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
  try:
    demo = Demo(args.checkpoint, frames=args.frames, think=args.think, dtype=args.dtype)
    app = build_app(demo, clips_dir=args.clips, gen_length=args.gen_length, steps=args.steps,
                    block_length=args.block_length, cache=args.cache,
                    replay_seconds=args.replay_seconds)
  except (ValueError, FileNotFoundError, vj.CheckpointError, vj.ConfigError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  clips = Path(args.clips) if args.clips else assets.CLIPS
  app.launch(server_name=args.host, server_port=args.port, ssr_mode=False,
             allowed_paths=[str(clips.resolve())] if clips.exists() else None)
  return 0


if __name__ == '__main__':
  sys.exit(main())
