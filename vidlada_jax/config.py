"""Typed model configuration: one small frozen dataclass per module.

The named architectures ("8b", "tiny", ...) live in `configs/models.py` as ml_collections
configs; `model_config(name)` turns one into the `ModelConfig` the modules take.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """The LLaDA masked-diffusion language model (a bidirectional Llama-style decoder)."""

  vocab_size: int = 126464
  hidden_size: int = 4096
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  intermediate_size: int = 12288
  rope_theta: float = 500000.0
  rms_norm_eps: float = 1e-5

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The SigLIP vision tower as the reference uses it: `num_layers` counts the layers *used*."""

  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 26
  num_heads: int = 16
  image_size: int = 384
  patch_size: int = 14
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'vision hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}')
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


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A whole VidLaDA model, or one of its halves (LM only, vision tower only).

  `dtype` is the computation dtype and `param_dtype` the storage dtype of the parameters.
  `attention` and `vision_attention` name the attention backends of the language model and of
  the vision tower (see `vidlada_jax.nn.attention`; "auto" picks from the platform when the
  model is built); `interpret_kernels` runs Pallas backends in interpret mode (CPU tests).
  """

  lm: LMConfig | None = LMConfig()
  vision: VisionConfig | None = VisionConfig()
  projector: str = 'mlp2x_gelu'
  pool_stride: int = 2
  newline: str = 'grid'
  tokens: TokenIds = TokenIds()
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  attention: str = 'auto'
  vision_attention: str = 'auto'
  interpret_kernels: bool = False
  remat: bool = False

  def __post_init__(self):
    if self.lm is None and self.vision is None:
      raise ValueError('a model needs a language model, a vision tower, or both')
    if self.is_multimodal and self.projector != 'mlp2x_gelu':
      raise ValueError(f'unsupported projector type {self.projector!r}: only "mlp2x_gelu" is implemented')
    if self.newline != 'grid':
      raise ValueError(f'unsupported newline position {self.newline!r}: only "grid" is implemented')
    for field in ('dtype', 'param_dtype'):
      name = getattr(self, field)
      if name not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f'{field} must be float32, bfloat16 or float16, got {name!r}')

  @property
  def is_multimodal(self) -> bool:
    return self.lm is not None and self.vision is not None

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def pooled_side(self) -> int:
    """Side of the per-frame grid after bilinear resampling: ceil(27 / 2) = 14 for the reference."""
    return math.ceil(self.vision.patches_per_side / self.pool_stride)

  @property
  def tokens_per_frame(self) -> int:
    """Visual tokens per frame: every pooled row followed by one `image_newline` (210)."""
    return self.pooled_side * (self.pooled_side + 1)

  def replace(self, **changes: Any) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'ModelConfig':
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'unknown model config fields: {sorted(unknown)}')
    lm = d.pop('lm', None)
    vision = d.pop('vision', None)
    tokens = d.pop('tokens', None)
    return cls(
        lm=_build(LMConfig, lm),
        vision=_build(VisionConfig, vision),
        tokens=_build(TokenIds, tokens) or TokenIds(),
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


def model_config(name: str, **overrides: Any) -> ModelConfig:
  """A named architecture from `configs/models.py`, e.g. `model_config("8b", dtype="bfloat16")`."""
  from configs import models  # the configs/ folder is the single source of the named architectures

  return ModelConfig.from_dict(models.get_config(name).to_dict()).replace(**overrides)


def model_config_names() -> tuple[str, ...]:
  from configs import models

  return tuple(models.MODELS)
