"""Curriculum stage 2 [paper only, SPEC 7]: medium clips, 64 frames, 16K context, from stage 1.

    python -m vidlada_jax.launch.train --workdir /shared/runs/stage2 \
        --config configs/stage2.py:mixture=data/stage2.yaml,init=/shared/runs/stage1

Knobs as `configs/stage1.py`; `init` is stage 1's work directory (its latest checkpoint and its
tokenizer.json). Without `init` the model starts from random weights: only for memory plans and
smoke tests.
"""

from vidlada_jax.configs import common
from vidlada_jax.configs.stage1 import BATCH, video_data

CLIPS = 500_000  # [paper] stage 2 trains on 500K medium-length clips (SPEC 7)
FRAMES = 64  # [paper] stage 2: 64 frames (SPEC 7)
CONTEXT = 16384  # [paper] stage 2: 16K context (SPEC 7)


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, frames=FRAMES, steps=0, init='', mixture='', array_record='',
                           tokenizer='', batch=BATCH, micro=BATCH)
  steps = knobs.steps or -(-CLIPS // knobs.batch)  # one epoch, as stage 1
  return common.base(
      model=dict(architecture='8b', init_checkpoint=knobs.init),
      runtime=dict(dtype='bfloat16', param_dtype='float32', remat='nothing_saveable'),
      mesh=common.mesh('fsdp'),
      data=video_data(knobs, CONTEXT),
      optimizer=dict(frozen=()),  # [paper] everything trainable until stage 3 (SPEC 7)
      train=dict(total_steps=steps, global_batch=knobs.batch, micro_batch=knobs.micro),
  )
