"""The demo model: a small VidLaDA trained from scratch on synthetic_video_qa, on a laptop CPU.

    python -m launch.train --config configs/demo.py --workdir /tmp/demo
    python -m launch.evaluate --checkpoint /tmp/demo --split test

This is how `assets/demo-vidlada` was made (see its PROVENANCE.md). The `demo` architecture
(`vidlada_jax.config.ARCHITECTURES`) is VidLaDA in miniature: a SigLIP-style tower on 64-px
frames (16-px patches, 2x2 pooled with row newlines: 6 tokens a frame), the two-layer GELU
projector, and a 4-layer LLaDA LM of width 128 over a ~1k-token BPE that keeps every LLaDA
special token (`fixtures.demo_tokenizer`). It trains on 16-frame clips with prompts exactly as
`launch.sample` renders them (no time instruction, "/no_think" appended), so the checkpoint
answers through the ordinary inference path.

Two curricula can precede the task, both off by default (the shipped checkpoint was trained
without them): `first_steps=N` trains the two flash questions alone, whose answer is one colour
in a few frames, N steps with the flashing square filling the frame (`synthetic_qa`
`object_scale=4`), N at 2x, then 1.5N at the task's size; `stage_steps=N` trains all six types N
steps at 4x, then N at 2x. From random weights, the model does not learn to find a small object
anywhere in the frames unless it has first learned to read the answer from big ones, but neither
curriculum has yet made the whole job learn (README, "The demo model").

Knobs: steps (all stages), first_steps (0: no flash-first stages), stage_steps, batch, lr,
train_size (clips in the task's train split), workers (decoding processes).
"""

from configs import common

OBJECT_SCALES = (4.0, 2.0)  # the curriculum's stages before the task's own sizes
FIRST_TYPES = ('middle_event', 'end_event')  # the questions the curriculum starts with


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, steps=2200, first_steps=0, stage_steps=0, batch=16, lr=1.5e-3,
                           train_size=16000, workers=1)
  # Each stage reads its own clips once.
  stage = lambda steps, **video_qa: dict(
      steps=steps, video_qa=dict(video_qa, train_size=steps * knobs.batch))
  stages = []
  if knobs.first_steps:
    stages += [stage(knobs.first_steps, object_scale=scale, question_types=FIRST_TYPES)
               for scale in OBJECT_SCALES]
    stages.append(stage(knobs.first_steps * 3 // 2, object_scale=1.0, question_types=FIRST_TYPES))
  if knobs.stage_steps:
    stages += [stage(knobs.stage_steps, object_scale=scale) for scale in OBJECT_SCALES]
  return common.base(
      model=dict(architecture='demo', seed=0),
      # Dense XLA attention: at ~200 tokens the score matrices are small, and on CPUs the dense
      # path trains faster than the chunked one `auto` picks.
      runtime=dict(dtype='float32', param_dtype='float32', remat='none', attention='xla'),
      mesh=common.mesh('fsdp'),
      data=dict(source='synthetic_video_qa',
                video_qa=dict(config='default', train_size=knobs.train_size),
                stages=tuple(stages), tokenizer='demo', num_frames=16, buckets=(112,),
                worker_count=knobs.workers, time_instruction=False, no_think=True),
      optimizer=dict(learning_rate=knobs.lr,
                     # From scratch, the tower learns at the same rate as the rest.
                     module_learning_rates=(), warmup_ratio=0.05, weight_decay=0.01),
      train=dict(total_steps=knobs.steps, global_batch=knobs.batch, micro_batch=knobs.batch,
                 log_every=10, loss_chunk=112),
      checkpoint=dict(every=max(knobs.steps // 4, 1), keep=2),
  )
