"""Typed model configuration: the schema every job config fills in.

One small frozen dataclass per module describes the architecture (what a checkpoint holds);
`Runtime` holds how a model runs (dtypes, attention backends, rematerialisation), which each job
chooses. The named architectures ("8b", "tiny", ...) are written once, in `ARCHITECTURES` at the
bottom of this file; `model_config(name)` returns one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp


# The init std of the reference's configs (LLaDA's init_std, HF's initializer_range): what a
# checkpoint or config.json that does not say was initialised with.
REFERENCE_INITIALIZER_RANGE = 0.02


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """The LLaDA masked-diffusion language model (a bidirectional Llama-style decoder)."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  intermediate_size: int
  rope_theta: float
  rms_norm_eps: float
  # Std of the normal init of every weight matrix (HF's name). Only training from scratch reads
  # it: the reference's 0.02 suits width 4096; a narrow model needs about 1/sqrt(width) or its
  # attention stays uniform for hundreds of steps.
  initializer_range: float

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_heads '
                       f'{self.num_heads}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads {self.num_heads} is not a multiple of num_kv_heads '
                       f'{self.num_kv_heads}')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The SigLIP vision tower as the reference uses it: `num_layers` counts the layers *used*."""

  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  image_size: int
  patch_size: int
  layer_norm_eps: float
  initializer_range: float  # as LMConfig's

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'vision hidden_size {self.hidden_size} is not divisible by num_heads '
                       f'{self.num_heads}')
    if self.image_size < self.patch_size:
      raise ValueError(f'image_size {self.image_size} is smaller than patch_size {self.patch_size}')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patches_per_side(self) -> int:
    # VALID convolution: trailing pixels that do not fill a patch are never used.
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.patches_per_side ** 2


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """Special token ids of the LLaDA tokenizer (SPEC 5)."""

  bos: int = 126080  # <|startoftext|>
  eos: int = 126081  # <|endoftext|>, also the padding token
  mask: int = 126336  # <|mdm_mask|>
  start_header: int = 126346
  end_header: int = 126347
  eot: int = 126348  # <|eot_id|>, the stop token
  image: int = -200  # the <image> placeholder replaced by the visual tokens


REMAT_POLICIES = ('none', 'everything_saveable', 'nothing_saveable', 'dots_saveable',
                  'dots_with_no_batch_dims_saveable')
_DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class Runtime:
  """How a model runs, as opposed to what it is: chosen by each job, never stored in checkpoints.

  `dtype` is the computation dtype and `param_dtype` the storage dtype of the parameters.
  `attention` and `vision_attention` name the attention backends of the language model and of
  the vision tower (see `vidlada_jax.nn.attention`; "auto" picks from the platform when the
  model is built); `interpret_kernels` runs Pallas backends in interpret mode (CPU tests).
  `remat` names the activation-checkpoint policy of each scanned layer: "none" keeps every
  activation, the others are `jax.checkpoint_policies` (what the backward pass may keep).
  """

  dtype: str = 'float32'
  param_dtype: str = 'float32'
  attention: str = 'auto'
  vision_attention: str = 'auto'
  interpret_kernels: bool = False
  remat: str = 'none'

  def __post_init__(self):
    for field in ('dtype', 'param_dtype'):
      name = getattr(self, field)
      if name not in _DTYPES:
        raise ValueError(f'{field} must be float32, bfloat16 or float16, got {name!r}')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'unknown remat policy {self.remat!r}; known: {", ".join(REMAT_POLICIES)}')

  @property
  def remat_policy(self):
    """The `jax.checkpoint` policy, or None for no rematerialisation."""
    if self.remat == 'none':
      return None
    return getattr(jax.checkpoint_policies, self.remat)


RUNTIME_FIELDS = frozenset(f.name for f in dataclasses.fields(Runtime))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A whole VidLaDA model, or one of its halves (LM only, vision tower only).

  The architecture (what a checkpoint holds) plus the `Runtime` it runs with. Checkpoints and
  the named `ARCHITECTURES` store the architecture alone (`to_dict`).
  """

  lm: LMConfig | None
  vision: VisionConfig | None
  projector: str = 'mlp2x_gelu'
  pool_stride: int = 2
  newline: str = 'grid'
  tokens: TokenIds = TokenIds()
  runtime: Runtime = Runtime()

  def __post_init__(self):
    if self.lm is None and self.vision is None:
      raise ValueError('a model needs a language model, a vision tower, or both')
    if self.is_multimodal and self.projector != 'mlp2x_gelu':
      raise ValueError(f'unsupported projector type {self.projector!r}: '
                       'only "mlp2x_gelu" is implemented')
    if self.newline != 'grid':
      raise ValueError(f'unsupported newline position {self.newline!r}: only "grid" is implemented')

  @property
  def is_multimodal(self) -> bool:
    return self.lm is not None and self.vision is not None

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.runtime.dtype)

  @property
  def storage_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.runtime.param_dtype)

  @property
  def pooled_side(self) -> int:
    """Side of the per-frame grid after bilinear resampling: ceil(27 / 2) = 14 for the reference."""
    return math.ceil(self.vision.patches_per_side / self.pool_stride)

  @property
  def tokens_per_frame(self) -> int:
    """Visual tokens per frame: every pooled row followed by one `image_newline` (210)."""
    return self.pooled_side * (self.pooled_side + 1)

  def replace(self, **changes: Any) -> 'ModelConfig':
    """A copy with `changes`; run-time field names (`dtype`, `attention`, ...) go to `runtime`."""
    runtime = {k: changes.pop(k) for k in list(changes) if k in RUNTIME_FIELDS}
    if runtime:
      changes['runtime'] = dataclasses.replace(changes.get('runtime', self.runtime), **runtime)
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """The architecture alone (what checkpoints store)."""
    d = dataclasses.asdict(self)
    del d['runtime']
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any], runtime: Runtime = Runtime()) -> 'ModelConfig':
    d = dict(d)
    # Manifests of format version 1 stored run-time choices with the architecture; they are
    # the reader's to choose now.
    for name in RUNTIME_FIELDS:
      d.pop(name, None)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'unknown model config fields: {sorted(unknown)}')
    lm = d.pop('lm', None)
    vision = d.pop('vision', None)
    tokens = d.pop('tokens', None)
    # Checkpoints written before initializer_range was recorded were all initialised at the
    # reference's value.
    legacy = lambda part: None if part is None else {
        'initializer_range': REFERENCE_INITIALIZER_RANGE, **part}
    return cls(
        lm=_build(LMConfig, legacy(lm)),
        vision=_build(VisionConfig, legacy(vision)),
        tokens=_build(TokenIds, tokens) or TokenIds(),
        runtime=runtime,
        **d,
    )


def _build(cls, d):
  if d is None:
    return None
  d = dict(d)
  unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise ValueError(f'unknown {cls.__name__} fields: {sorted(unknown)}')
  return cls(**d)


# --- Named architectures: each written once, here --------------------------------------------

# LLaDA-8B (SPEC 2.1; `config.json` of GSAI-ML/LLaDA-8B-Instruct and of LLaDA-V's LM).
LLADA_8B = LMConfig(
    vocab_size=126464,
    hidden_size=4096,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    intermediate_size=12288,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    initializer_range=0.02,
)

# SigLIP2 so400m patch14 384 ("FixRes"), as VidLaDA uses it: 26 of its 27 layers (SPEC 2.2).
SIGLIP2_SO400M = VisionConfig(
    hidden_size=1152,
    intermediate_size=4304,
    num_layers=26,
    num_heads=16,
    image_size=384,
    patch_size=14,
    layer_norm_eps=1e-6,
    initializer_range=0.02,
)

# Small enough for unit tests on a laptop CPU, but with the real vocabulary and special token ids
# (so prompts, stop tokens and suppression behave as in the real model) and the real frame
# geometry (384 px, patch 14, 27x27 -> 14x14, 210 tokens per frame).
TINY_LM = LMConfig(
    vocab_size=126464,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    intermediate_size=128,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    initializer_range=0.02,
)
TINY_VISION = VisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    image_size=384,
    patch_size=14,
    layer_norm_eps=1e-6,
    initializer_range=0.02,
)

# The demo model (`configs/demo.py`, trained on synthetic_video_qa; shipped in assets/): small
# enough to train on a laptop CPU in minutes and to keep in the repository. Its tokenizer
# (`fixtures.demo_tokenizer`) is a ~1k byte-level BPE with the 269 LLaDA special tokens moved from
# 126080.. to 1024.., so the vocabulary (and with it the checkpoint) stays small; the ids travel
# with the checkpoint in `ModelConfig.tokens`.
LLADA_SPECIAL_START = 126080  # the first LLaDA special token id (<|startoftext|>)
DEMO_SPECIAL_START = 1024


def _demo_id(llada_id: int) -> int:
  return llada_id - LLADA_SPECIAL_START + DEMO_SPECIAL_START


DEMO_TOKENS = TokenIds(**{name: _demo_id(getattr(TokenIds(), name))
                          for name in ('bos', 'eos', 'mask', 'start_header', 'end_header', 'eot')})
DEMO_LM = LMConfig(
    vocab_size=DEMO_SPECIAL_START + 272,  # 269 special tokens, rounded up to a multiple of 8
    hidden_size=128,
    num_layers=4,
    # Head dim 32: four heads learned the mixture faster than two (54% against 48.5% of the
    # test split after 1,500 steps on the pretrained tower) for ~10% more step time.
    num_heads=4,
    num_kv_heads=4,
    intermediate_size=384,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    initializer_range=0.08,  # ~1/sqrt(128): at 0.02 the LM needs >400 steps to learn to copy
)
# 64-px frames in 16-px patches (one cell of the task's 4x4 grid each): 4x4 -> 2x2 pooled, 6
# visual tokens per frame.
DEMO_VISION = VisionConfig(
    hidden_size=64,
    intermediate_size=256,
    num_layers=2,
    num_heads=2,
    image_size=64,
    patch_size=16,
    layer_norm_eps=1e-6,
    initializer_range=0.08,
)

ARCHITECTURES = {
    # VidLaDA-8B: 8,434,837,024 parameters (tests/test_config.py).
    '8b': ModelConfig(lm=LLADA_8B, vision=SIGLIP2_SO400M),
    'llada-8b': ModelConfig(lm=LLADA_8B, vision=None),
    'siglip2-so400m': ModelConfig(lm=None, vision=SIGLIP2_SO400M),
    'tiny': ModelConfig(lm=TINY_LM, vision=TINY_VISION),
    'tiny-lm': ModelConfig(lm=TINY_LM, vision=None),
    'demo': ModelConfig(lm=DEMO_LM, vision=DEMO_VISION, tokens=DEMO_TOKENS),
}


def model_config(name: str, **overrides: Any) -> ModelConfig:
  """A named architecture, e.g. `model_config("8b", dtype="bfloat16")` (see `ModelConfig.replace`
  for what `overrides` may name)."""
  if name not in ARCHITECTURES:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(ARCHITECTURES)}')
  return ARCHITECTURES[name].replace(**overrides)


def model_config_names() -> tuple[str, ...]:
  return tuple(ARCHITECTURES)
