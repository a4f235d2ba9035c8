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

`stage_steps=N` adds a curriculum of object sizes: N steps on clips whose objects are drawn 4x
their task size (`synthetic_qa` `object_scale`; at 4x the flashing square fills the frame), N at
2x, then the task itself for the rest. It is off by default (the shipped checkpoint was trained
without it). On the flash question alone such a curriculum takes the model from chance to 0.96;
on the six question types mixed it does not yet: after 300 steps at 4x the model is at 0.30 on
4x clips (README, "The demo model").

Knobs: steps (all stages), stage_steps (each big-object stage; 0: no curriculum), batch, lr,
train_size (clips in the task's train split), workers (decoding processes).
"""

from configs import common

OBJECT_SCALES = (4.0, 2.0)  # the curriculum's stages before the task's own sizes


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, steps=2200, stage_steps=0, batch=16, lr=1.5e-3,
                           train_size=16000, workers=1)
  # Each big-object stage reads its own clips once.
  stages = tuple(dict(steps=knobs.stage_steps,
                      video_qa=dict(object_scale=scale, train_size=knobs.stage_steps * knobs.batch))
                 for scale in OBJECT_SCALES if knobs.stage_steps)
  return common.base(
      model=dict(architecture='demo', seed=0),
      # Dense XLA attention: at ~200 tokens the score matrices are small, and on CPUs the dense
      # path trains faster than the chunked one `auto` picks.
      runtime=dict(dtype='float32', param_dtype='float32', remat='none', attention='xla'),
      mesh=common.mesh('fsdp'),
      data=dict(source='synthetic_video_qa',
                video_qa=dict(config='default', train_size=knobs.train_size),
                stages=stages, tokenizer='demo', num_frames=16, buckets=(112,),
                worker_count=knobs.workers, time_instruction=False, no_think=True),
      optimizer=dict(learning_rate=knobs.lr,
                     # From scratch, the tower learns at the same rate as the rest.
                     module_learning_rates=(), warmup_ratio=0.05, weight_decay=0.01),
      train=dict(total_steps=knobs.steps, global_batch=knobs.batch, micro_batch=knobs.batch,
                 log_every=10, loss_chunk=112),
      checkpoint=dict(every=max(knobs.steps // 4, 1), keep=2),
  )
