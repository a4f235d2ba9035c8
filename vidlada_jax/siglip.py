"""The SigLIP(2) so400m vision tower as VidLaDA uses it (SPEC 2.2).

SigLIP v1 architecture (transformers `SiglipVisionModel`): a VALID 14x14 patch convolution, learned
position embeddings in raster order, pre-LayerNorm encoder layers with tanh-GELU MLPs. The features
are the output of the last *used* layer, before `post_layernorm` (which is kept only so checkpoints
round-trip) and without the pooling head.
"""

from __future__ import annotations

import functools

import jax
from flax import linen, nnx

from vidlada_jax.config import VisionConfig
from vidlada_jax.nn.attention import Attention
from vidlada_jax.nn.layers import ACTIVATION_AXES, logical, scan_layers, stacked

_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()


def _layer_norm(cfg: VisionConfig, *, dtype, param_dtype, rngs):
  # Two-pass variance, as torch computes it (flax's default fast variance loses precision).
  return nnx.LayerNorm(
      cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False,
      dtype=dtype, param_dtype=param_dtype,
      scale_init=logical(_ONES, 'norm'), bias_init=logical(_ZEROS, 'norm'), rngs=rngs)


class SiglipAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, attend: Attention, *, dtype, param_dtype, rngs):
    self.attend = attend
    heads, head_dim = cfg.num_heads, cfg.head_dim
    weights = nnx.initializers.normal(cfg.initializer_range)
    common = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def project_in():
      return nnx.LinearGeneral(
          cfg.hidden_size, (heads, head_dim),
          kernel_init=logical(weights, 'vision_embed', 'vision_heads', 'head_dim'),
          bias_init=logical(_ZEROS, 'vision_heads', 'head_dim'), **common)

    self.q_proj, self.k_proj, self.v_proj = project_in(), project_in(), project_in()
    self.out_proj = nnx.LinearGeneral(
        (heads, head_dim), cfg.hidden_size, axis=(-2, -1),
        kernel_init=logical(weights, 'vision_heads', 'head_dim', 'vision_embed'),
        bias_init=logical(_ZEROS, 'vision_embed'), **common)

  def __call__(self, x):
    return self.out_proj(self.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x)))


class SiglipMLP(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs):
    weights = nnx.initializers.normal(cfg.initializer_range)
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = nnx.Linear(
        cfg.hidden_size, cfg.intermediate_size,
        kernel_init=logical(weights, 'vision_embed', 'vision_mlp'),
        bias_init=logical(_ZEROS, 'vision_mlp'), **common)
    self.fc2 = nnx.Linear(
        cfg.intermediate_size, cfg.hidden_size,
        kernel_init=logical(weights, 'vision_mlp', 'vision_embed'),
        bias_init=logical(_ZEROS, 'vision_embed'), **common)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class SiglipEncoderLayer(nnx.Module):

  def __init__(self, cfg: VisionConfig, attend: Attention, *, dtype, param_dtype, rngs):
    norm = functools.partial(_layer_norm, cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layer_norm1 = norm()
    self.self_attn = SiglipAttention(cfg, attend, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layer_norm2 = norm()
    self.mlp = SiglipMLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.mlp(self.layer_norm2(x))


class SiglipVisionTower(nnx.Module):
  """pixels [N, H, W, 3] in [-1, 1] -> patch features [N, patches, hidden]."""

  def __init__(
      self, cfg: VisionConfig, attend: Attention, *, dtype, param_dtype, remat_policy=None,
      rngs: nnx.Rngs):
    weights = nnx.initializers.normal(cfg.initializer_range)
    self.config = cfg
    self.remat_policy = remat_policy
    self.patch_embedding = nnx.Conv(
        3, cfg.hidden_size, kernel_size=(cfg.patch_size, cfg.patch_size),
        strides=(cfg.patch_size, cfg.patch_size), padding='VALID',
        dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(weights, None, None, None, 'vision_embed'),
        bias_init=logical(_ZEROS, 'vision_embed'), rngs=rngs)
    self.position_embedding = nnx.Embed(
        cfg.num_patches, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=logical(weights, 'vision_positions', 'vision_embed'), rngs=rngs)
    self.layers = stacked(
        lambda r: SiglipEncoderLayer(cfg, attend, dtype=dtype, param_dtype=param_dtype, rngs=r),
        cfg.num_layers, rngs)
    # Unused by VidLaDA (features are taken before it); kept so checkpoints round-trip.
    self.post_layernorm = _layer_norm(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    cfg = self.config
    if pixel_values.shape[1:] != (cfg.image_size, cfg.image_size, 3):
      raise ValueError(
          f'pixel_values must be [frames, {cfg.image_size}, {cfg.image_size}, 3] (channels last), '
          f'got shape {tuple(pixel_values.shape)}')
    patches = self.patch_embedding(pixel_values)  # [N, 27, 27, hidden]
    x = patches.reshape(patches.shape[0], -1, cfg.hidden_size)  # raster order
    x = x + self.position_embedding.embedding[...].astype(x.dtype)
    # Frames split over the batch devices under the trainer's rules (a no-op without them).
    x = linen.with_logical_constraint(x, ACTIVATION_AXES)
    return scan_layers(self.layers, x, remat_policy=self.remat_policy, carry_axes=ACTIVATION_AXES)
