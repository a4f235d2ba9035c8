"""The released one-stage recipe (SPEC 7): fine-tune LLaDA-V on videos, everything trainable.

    python -m vidlada_jax.launch.train --workdir /shared/runs/llada_v_ft \
        --config configs/llada_v_finetune.py:init=ckpt/llada_v,mixture=videos.yaml,examples=N

Every number below is SPEC 7's (the released recipe): AdamW (0.9, 0.999, eps 1e-8),
weight decay 0, learning rate 1e-5 for the LM, projector and newline and 2e-6 for the vision
tower, cosine decay after a 3% linear warm-up, global batch 64, one epoch, gradient clipping 1.0,
bf16, 64 frames, a 32768-token context, activation checkpointing. `common.base` holds the
optimizer numbers; this file restates the rest.

Knobs as `configs/stage1.py`, plus `examples`: the dataset's size, from which one epoch's steps
follow (`steps` overrides). `init` is a LLaDA-V checkpoint (PyTorch as released, or converted
with `vidlada_jax.convert.hf_to_jax`); without it the model starts from random weights (memory
plans, smoke tests only).
"""

from vidlada_jax.configs import common
from vidlada_jax.configs.stage1 import video_data

FRAMES = 64  # SPEC 7: 64 frames
CONTEXT = 32768  # SPEC 7: context 32768
BATCH = 64  # SPEC 7: global batch 64


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, frames=FRAMES, steps=0, examples=0, init='', mixture='',
                           array_record='', tokenizer='', batch=BATCH, micro=BATCH)
  # SPEC 7: one epoch. Without the dataset's size, one step (the config still builds).
  steps = knobs.steps or max(-(-knobs.examples // knobs.batch), 1)
  return common.base(
      model=dict(architecture='8b', init_checkpoint=knobs.init),
      # SPEC 7: bf16, activation checkpointing (over float32 master weights)
      runtime=dict(dtype='bfloat16', param_dtype='float32', remat='nothing_saveable'),
      mesh=common.mesh('fsdp'),
      data=video_data(knobs, CONTEXT),
      optimizer=dict(
          learning_rate=1e-5,  # SPEC 7: the LM, projector and newline
          module_learning_rates=(('vision_tower', 2e-6),),  # SPEC 7: the vision tower
          frozen=(),  # SPEC 7: everything trainable
          warmup_ratio=0.03,  # SPEC 7: cosine decay with 3% linear warm-up
          clip_norm=1.0),  # SPEC 7: gradient clipping 1.0
      train=dict(total_steps=steps, global_batch=knobs.batch, micro_batch=knobs.micro),
  )
