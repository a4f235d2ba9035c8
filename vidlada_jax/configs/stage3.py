"""Curriculum stage 3 [paper only, SPEC 7]: long videos (2-30 min), vision tower frozen, 32K
context, from stage 2.

    python -m vidlada_jax.launch.train --workdir /shared/runs/stage3 \
        --config configs/stage3.py:mixture=data/stage3.yaml,init=/shared/runs/stage2

Knobs as `configs/stage1.py`; `init` is stage 2's work directory. The paper names no frame count
for stage 3; 64 is the reference's default (the released recipe's, SPEC 7) and stage 2's, so the
projector and LM see the same number of visual tokens per video as before. With the tower frozen
it costs no backward pass and no optimizer state (`vidlada_jax.training.optimizer`).
"""

from vidlada_jax.configs import common
from vidlada_jax.configs.stage1 import BATCH, video_data

VIDEOS = 500_000  # [paper] stage 3 trains on 500K long videos of 2-30 minutes (SPEC 7)
FRAMES = 64  # not in the paper: the reference's default (SPEC 7's released recipe)
CONTEXT = 32768  # [paper] stage 3: 32K context (SPEC 7)


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, frames=FRAMES, steps=0, init='', mixture='', array_record='',
                           tokenizer='', batch=BATCH, micro=BATCH)
  steps = knobs.steps or -(-VIDEOS // knobs.batch)  # one epoch, as stage 1
  return common.base(
      model=dict(architecture='8b', init_checkpoint=knobs.init),
      runtime=dict(dtype='bfloat16', param_dtype='float32', remat='nothing_saveable'),
      mesh=common.mesh('fsdp'),
      data=video_data(knobs, CONTEXT),
      # [paper] stage 3 freezes the vision tower (SPEC 7); its learning rate group is then empty.
      optimizer=dict(frozen=('vision_tower',), module_learning_rates=()),
      train=dict(total_steps=steps, global_batch=knobs.batch, micro_batch=knobs.micro),
  )
