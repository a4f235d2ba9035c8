"""The demo model: a small VidLaDA trained from random weights on synthetic_video_qa, on a laptop
CPU.

Two stages, because real VidLaDA's tower (SigLIP2) is pretrained before its stage 1:

    python -m vidlada_jax.launch.train --config configs/demo.py:stage=tower \
        --workdir /tmp/demo-tower
    python -m vidlada_jax.launch.train --config configs/demo.py:init=/tmp/demo-tower \
        --workdir /tmp/demo
    python -m vidlada_jax.launch.evaluate --checkpoint /tmp/demo --split test

(`make demo-model` runs both, evaluates and packages the result.) This is how
`assets/demo-vidlada` was made (see its PROVENANCE.md). The `demo` architecture
(`vidlada_jax.config.ARCHITECTURES`) is VidLaDA in miniature: a SigLIP-style tower on 64-px
frames (16-px patches, 2x2 pooled with row newlines: 6 tokens a frame), the two-layer GELU
projector, and a 4-layer LLaDA LM of width 128 over a ~1k-token BPE that keeps every LLaDA
special token (`fixtures.demo_tokenizer`).

Stage 0 (`stage=tower`) trains the tower and projector alone with the cell-colour objective
(`vidlada_jax.tower_pretraining`): every pooled token learns which of the task's object colours
are in its region and in each of its four patches, read off the decoded frames. The LM is frozen
and never run. Stage 1 (the default, `init=` stage 0's work directory) trains the LM on the
task's questions with the masked-diffusion loss, the tower and projector frozen, on 16-frame
clips with prompts exactly as `vidlada_jax.launch.sample` renders them (no time instruction,
"/no_think" appended), so the checkpoint answers through the ordinary inference path. Without
`init` stage 1 starts from random weights: the recipe docs/demo-model.md measures staying at
chance.

Knobs: stage (tower | qa), init, steps, batch, lr, train_size (clips in the train split; default:
one pass), workers (decoding processes).
"""

from vidlada_jax.configs import common
from vidlada_jax.input_pipeline import synthetic_qa

STAGES = ('tower', 'qa')
STEPS = {'tower': 1000, 'qa': 4000}
LEARNING_RATES = {'tower': 2e-3, 'qa': 1.5e-3}
# Stage 0 reads 256 frames a step; 4,000 clips are 64,000 frames, read four times.
TOWER_CLIPS = 4000


def cell_colours():
  """The objective section of stage 0: the task's object colours on its background."""
  palette = [synthetic_qa.NEUTRAL_SQUARE,
             *(synthetic_qa.COLOURS[name] for name in sorted(synthetic_qa.COLOURS)),
             synthetic_qa.BALL]
  return dict(name='cell_colours', palette=palette, background=synthetic_qa.BACKGROUND)


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, stage='qa', init='', steps=0, batch=16, lr=0.0, train_size=0,
                           workers=1)
  if knobs.stage not in STAGES:
    raise ValueError(f'stage must be one of {", ".join(STAGES)}, got {knobs.stage!r}')
  tower = knobs.stage == 'tower'
  if tower and knobs.init:
    raise ValueError('stage=tower starts from random weights; init= is for stage qa')
  steps = knobs.steps or STEPS[knobs.stage]
  train_size = knobs.train_size or (TOWER_CLIPS if tower else steps * knobs.batch)
  config = common.base(
      model=dict(architecture='' if knobs.init else 'demo', init_checkpoint=knobs.init, seed=0),
      # Dense XLA attention: at ~200 tokens the score matrices are small, and on CPUs the dense
      # path trains faster than the chunked one `auto` picks.
      runtime=dict(dtype='float32', param_dtype='float32', remat='none', attention='xla',
                   vision_attention='xla'),
      mesh=common.mesh('fsdp'),
      data=dict(source='synthetic_video_qa',
                video_qa=dict(config='default', train_size=train_size),
                tokenizer='demo', num_frames=16, buckets=(112,), worker_count=knobs.workers,
                time_instruction=False, no_think=True),
      optimizer=dict(
          learning_rate=knobs.lr or LEARNING_RATES[knobs.stage], module_learning_rates=(),
          # Stage 0 trains the tower and projector alone; stage 1 keeps them as stage 0 left them.
          frozen=('lm', 'image_newline') if tower else ('vision_tower', 'mm_projector'),
          warmup_ratio=0.05, weight_decay=0.01),
      train=dict(total_steps=steps, global_batch=knobs.batch, micro_batch=knobs.batch,
                 log_every=10, loss_chunk=112),
      checkpoint=dict(every=max(steps // 4, 1), keep=2),
  )
  if tower:
    config.objective = cell_colours()
  return config
