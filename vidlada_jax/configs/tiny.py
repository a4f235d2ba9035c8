"""The tiny model on generated moving-square clips: the whole training path in about a minute.

    python -m vidlada_jax.launch.train --config configs/tiny.py --workdir /tmp/tiny
    python -m vidlada_jax.launch.train --config configs/tiny.py:stage=2,init=/tmp/tiny1 \
        --workdir /tmp/tiny2

`stage=1|2|3` is the curriculum in miniature (stage 1: short clips, few frames; stage 2: more
frames; stage 3: the vision tower frozen), each a handful of steps starting from `init` (the
previous stage's work directory); `stage=0` (the default) is one longer run whose loss falls
clearly. Everything runs on a laptop CPU: float32, no remat, one process.
"""

from vidlada_jax.configs import common

FRAMES = {0: 4, 1: 2, 2: 4, 3: 4}


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, stage=0, steps=0, frames=0, init='', batch=8, lr=3e-3,
                           clips=48, workers=0)
  if knobs.stage not in FRAMES:
    raise ValueError(f'stage must be 0, 1, 2 or 3, got {knobs.stage}')
  frames = knobs.frames or FRAMES[knobs.stage]
  steps = knobs.steps or (60 if knobs.stage == 0 else 6)
  return common.base(
      # The tiny architecture with a 112-px tower (8x8 patches, 20 visual tokens per frame)
      # keeps a step near a second on a laptop CPU.
      model=dict(architecture='' if knobs.init else 'tiny', init_checkpoint=knobs.init,
                 overrides={} if knobs.init else dict(vision=dict(image_size=112))),
      runtime=dict(dtype='float32', param_dtype='float32', remat='none'),
      mesh=common.mesh('fsdp'),
      data=dict(source='synthetic', synthetic_clips=knobs.clips, synthetic_video_frames=16,
                tokenizer='tiny', num_frames=frames, buckets=(128,),
                worker_count=knobs.workers),
      optimizer=dict(learning_rate=knobs.lr,
                     # as the recipe: the tower at a fifth of the rest's learning rate
                     module_learning_rates=(('vision_tower', knobs.lr / 5),),
                     frozen=('vision_tower',) if knobs.stage == 3 else (),
                     warmup_ratio=0.1),
      train=dict(total_steps=steps, global_batch=knobs.batch, micro_batch=knobs.batch // 2,
                 log_every=1, loss_chunk=128),
      checkpoint=dict(every=max(steps // 3, 2), keep=2),
  )
