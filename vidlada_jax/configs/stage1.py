"""Curriculum stage 1 [paper only, SPEC 7]: LLaDA-8B + SigLIP2 on short clips, 32 frames, 8K
context.

    python -m vidlada_jax.launch.train --workdir /shared/runs/stage1 \
        --config configs/stage1.py:mixture=data/stage1.yaml,init=ckpt/llada_v

Knobs (`configs/stage1.py:frames=32,batch=64`):
  mixture     the mixture YAML of LLaVA-Video-178K-style annotation files (decoded with PyAV)
  array_record  a pre-decoded set (`input_pipeline.build_array_record_dataset`) instead
  init        a combined LLaDA-V/VidLaDA checkpoint (PyTorch or converted) to start from; empty
              initialises the 8B architecture at random (for memory plans and smoke tests: the
              paper starts from the pretrained LLaDA-8B and SigLIP2)
  tokenizer   a tokenizer.json or checkpoint directory (default: `init`'s)
  frames, steps, batch (global), micro (global micro-batch: accumulation = batch / micro)

The mesh is FSDP over every device (`--config.mesh.shape.fsdp=...` to change); `micro` must
divide over the devices that split the batch: 64 on a 64-chip slice is one sequence per chip,
on one 8-GPU node pass `micro=8` (one per GPU, 8 accumulation steps).
"""

from vidlada_jax.configs import common

CLIPS = 1_800_000  # [paper] stage 1 trains on 1.8M short clips (SPEC 7)
FRAMES = 32  # [paper] stage 1: 32 frames per clip (SPEC 7)
CONTEXT = 8192  # [paper] stage 1: 8K context (SPEC 7)
BATCH = 64  # SPEC 7 (released recipe): global batch 64; the paper gives no per-stage batch


def get_config(arg: str | None = None):
  knobs = common.parse_arg(arg, frames=FRAMES, steps=0, init='', mixture='', array_record='',
                           tokenizer='', batch=BATCH, micro=BATCH)
  # One epoch over the stage's clips, as the released recipe trains one epoch (SPEC 7); the
  # paper gives no step count.
  steps = knobs.steps or -(-CLIPS // knobs.batch)
  return common.base(
      # The architecture is what `vidlada_jax.launch.memory_plan` compiles and what `init` must
      # hold.
      model=dict(architecture='8b', init_checkpoint=knobs.init),
      # bf16 compute over float32 master weights, remat of every scanned layer (SPEC 7:
      # bf16, activation checkpointing); attention backends chosen from the platform.
      runtime=dict(dtype='bfloat16', param_dtype='float32', remat='nothing_saveable'),
      mesh=common.mesh('fsdp'),
      data=video_data(knobs, CONTEXT),
      optimizer=dict(frozen=()),  # [paper] stages 1 and 2 train everything (SPEC 7)
      train=dict(total_steps=steps, global_batch=knobs.batch, micro_batch=knobs.micro),
  )


def video_data(knobs, context: int) -> dict:
  """The data section every 8B job shares (stages 2, 3 and the LLaDA-V recipe import it): a
  mixture or a pre-decoded source, and text buckets that fill `context` beside the visual tokens
  (210 per frame, SPEC 2.2)."""
  source = 'array_record' if knobs.array_record else 'mixture'
  return dict(source=source, mixture=knobs.mixture, array_record=knobs.array_record,
              tokenizer=knobs.tokenizer or knobs.init, num_frames=knobs.frames,
              buckets=common.text_buckets(context, knobs.frames))
