"""Named VidLaDA architectures.

`get_config("8b")` is the released VidLaDA-8B (SigLIP2 so400m tower with its last layer dropped,
mlp2x_gelu projector, LLaDA-8B language model); `vidlada_jax.model_config(name)` turns these into
the typed `ModelConfig`. The parameter count of "8b" is 8,434,837,024 (tests/test_config.py).
"""

import ml_collections

LLADA_8B = dict(
    vocab_size=126464,
    hidden_size=4096,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    intermediate_size=12288,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
)

# SigLIP2 so400m patch14 384 ("FixRes"), as VidLaDA uses it: 26 of its 27 layers.
SIGLIP2_SO400M = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_layers=26,
    num_heads=16,
    image_size=384,
    patch_size=14,
    layer_norm_eps=1e-6,
)

# Small enough for unit tests on a laptop CPU, but with the real vocabulary and special token ids
# (so prompts, stop tokens and suppression behave as in the real model) and the real frame
# geometry (384 px, patch 14, 27x27 -> 14x14, 210 tokens per frame).
TINY_LM = dict(
    vocab_size=126464,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    intermediate_size=128,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
)
TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    image_size=384,
    patch_size=14,
    layer_norm_eps=1e-6,
)

MODELS = {
    '8b': dict(lm=LLADA_8B, vision=SIGLIP2_SO400M),
    'llada-8b': dict(lm=LLADA_8B, vision=None),
    'siglip2-so400m': dict(lm=None, vision=SIGLIP2_SO400M),
    'tiny': dict(lm=TINY_LM, vision=TINY_VISION),
    'tiny-lm': dict(lm=TINY_LM, vision=None),
}


def get_config(arg: str = '8b') -> ml_collections.ConfigDict:
  """Architecture `arg` (one of MODELS) with float32 parameters and computation."""
  if arg not in MODELS:
    raise ValueError(f'unknown model {arg!r}; known: {", ".join(MODELS)}')
  spec = MODELS[arg]
  return ml_collections.ConfigDict(
      dict(
          lm=dict(spec['lm']) if spec['lm'] else None,
          vision=dict(spec['vision']) if spec['vision'] else None,
          projector='mlp2x_gelu',
          pool_stride=2,
          newline='grid',
          dtype='float32',
          param_dtype='float32',
          attention='auto',
          vision_attention='auto',
          interpret_kernels=False,
          remat=False,
      )
  )
