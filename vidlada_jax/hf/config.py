"""`config.json` of the PyTorch checkpoints <-> `ModelConfig` (SPEC 2.3).

Which layout a directory holds is read from its config: the original LLaDA config uses `d_model,
n_layers, ...`; a LLaDA-V / VidLaDA config uses Llama-style names and, when multimodal, `mm_*`
fields; a SigLIP config has a `siglip*` model_type. Unsupported architecture variants (biases,
tied embeddings, RoPE scaling, other projectors or activations) are errors, never ignored.
"""

from __future__ import annotations

from typing import Any

from vidlada_jax.config import (REFERENCE_INITIALIZER_RANGE, SIGLIP2_SO400M, LMConfig, ModelConfig,
                                TokenIds, VisionConfig)
from vidlada_jax.hf import layouts

# transformers' `SiglipVisionConfig` defaults: older transformers wrote only non-default fields.
_SIGLIP_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act='gelu_pytorch_tanh')

_TANH_GELUS = ('gelu_pytorch_tanh', 'gelu_new', 'gelu_fast')

# The so400m-patch14-384 tower as VidLaDA uses it, for combined configs without `vision_config`.
_SO400M_USED = SIGLIP2_SO400M

DEFAULT_VISION_TOWER = 'google/siglip2-so400m-patch14-384'


class ConfigError(ValueError):
  """config.json describes something this implementation does not (or cannot) load."""


def _require(raw: dict[str, Any], *fields: str, where: str = 'config.json') -> list[Any]:
  missing = [f for f in fields if raw.get(f) is None]
  if missing:
    raise ConfigError(f'{where} lacks required field(s) {missing}')
  return [raw[f] for f in fields]


def detect_layout(raw: dict[str, Any]) -> str:
  model_type = str(raw.get('model_type', ''))
  if model_type.startswith('siglip') or ('vision_config' in raw and 'text_config' in raw):
    return layouts.SIGLIP
  if 'd_model' in raw or 'n_layers' in raw:
    return layouts.LLADA
  if 'hidden_size' in raw and 'vocab_size' in raw:
    return layouts.LLADA_V
  raise ConfigError(
      'config.json matches no known checkpoint layout: expected a LLaDA-V/VidLaDA config '
      '(hidden_size, vocab_size, ...), an original LLaDA config (d_model, n_layers, ...) or a '
      f'SigLIP config (model_type "siglip*"); got model_type={model_type!r} with fields '
      f'{sorted(raw)[:12]}')


def _rope_theta(raw: dict[str, Any]) -> float:
  scaling = raw.get('rope_scaling')
  params = raw.get('rope_parameters') or {}
  rope_type = ((scaling or {}).get('rope_type', (scaling or {}).get('type'))
               or params.get('rope_type'))
  if rope_type not in (None, 'default'):
    raise ConfigError(f'RoPE scaling {rope_type!r} is not supported (LLaDA uses plain RoPE)')
  theta = raw.get('rope_theta', params.get('rope_theta'))
  if theta is None:
    raise ConfigError('config.json lacks rope_theta (or rope_parameters.rope_theta)')
  return float(theta)


def _llama_style_lm(raw: dict[str, Any]) -> LMConfig:
  hidden, layers, heads, inter, vocab, eps = _require(
      raw, 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size',
      'vocab_size', 'rms_norm_eps')
  if raw.get('tie_word_embeddings'):
    raise ConfigError('tie_word_embeddings=true is not supported: LLaDA has an untied lm_head')
  if raw.get('attention_bias') or raw.get('mlp_bias'):
    raise ConfigError('attention/MLP biases are not supported: LLaDA has none')
  if raw.get('hidden_act', 'silu') != 'silu':
    raise ConfigError(f'hidden_act {raw["hidden_act"]!r} is not supported (LLaDA uses silu)')
  head_dim = raw.get('head_dim')
  if head_dim is not None and head_dim != hidden // heads:
    raise ConfigError(f'head_dim {head_dim} != hidden_size / num_attention_heads')
  return LMConfig(
      vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
      num_kv_heads=raw.get('num_key_value_heads') or heads, intermediate_size=inter,
      rope_theta=_rope_theta(raw), rms_norm_eps=float(eps),
      initializer_range=float(raw.get('initializer_range', REFERENCE_INITIALIZER_RANGE)))


def _llada_lm(raw: dict[str, Any]) -> LMConfig:
  d_model, layers, heads, inter = _require(raw, 'd_model', 'n_layers', 'n_heads', 'mlp_hidden_size')
  # LLaDA's own config class calls it rms_layer_norm_eps; accept either spelling.
  eps = raw.get('rms_norm_eps', raw.get('rms_layer_norm_eps'))
  if eps is None:
    raise ConfigError('config.json lacks rms_norm_eps (or rms_layer_norm_eps)')
  if raw.get('layer_norm_type', 'rms') != 'rms':
    raise ConfigError(f'layer_norm_type {raw["layer_norm_type"]!r} is not supported (RMSNorm)')
  if raw.get('weight_tying'):
    raise ConfigError('weight_tying=true is not supported: LLaDA-8B has an untied ff_out')
  if raw.get('include_bias') or raw.get('include_qkv_bias'):
    raise ConfigError('biases are not supported: LLaDA-8B has none')
  if raw.get('attention_layer_norm'):
    raise ConfigError('attention_layer_norm (q/k norms) is not supported')
  if raw.get('activation_type', 'silu') not in ('silu', 'swiglu'):
    raise ConfigError(f'activation_type {raw["activation_type"]!r} is not supported')
  vocab = raw.get('embedding_size') or raw.get('vocab_size')
  if vocab is None:
    raise ConfigError('config.json lacks vocab_size / embedding_size')
  return LMConfig(
      vocab_size=vocab, hidden_size=d_model, num_layers=layers, num_heads=heads,
      num_kv_heads=raw.get('n_kv_heads') or heads, intermediate_size=inter,
      rope_theta=_rope_theta(raw), rms_norm_eps=float(eps),
      initializer_range=float(raw.get('init_std', REFERENCE_INITIALIZER_RANGE)))


def _vision(raw: dict[str, Any], *, used_layers: int) -> VisionConfig:
  if raw.get('hidden_act', 'gelu_pytorch_tanh') not in _TANH_GELUS:
    raise ConfigError(f'vision hidden_act {raw["hidden_act"]!r} is not supported (tanh GELU)')
  if raw.get('num_channels', 3) != 3:
    raise ConfigError('only 3-channel (RGB) vision towers are supported')
  return VisionConfig(
      hidden_size=raw['hidden_size'], intermediate_size=raw['intermediate_size'],
      num_layers=used_layers, num_heads=raw['num_attention_heads'],
      image_size=raw['image_size'], patch_size=raw['patch_size'],
      layer_norm_eps=float(raw['layer_norm_eps']),
      initializer_range=float(raw.get('initializer_range', REFERENCE_INITIALIZER_RANGE)))


def _combined_vision(raw: dict[str, Any]) -> VisionConfig:
  vision_raw = raw.get('vision_config')
  if vision_raw is None:
    vision = _SO400M_USED
  else:
    fields = ('hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
              'image_size', 'patch_size', 'layer_norm_eps')
    _require(vision_raw, *fields, where='config.json vision_config')
    # In a combined checkpoint the tower is stored as used: num_hidden_layers counts used layers.
    vision = _vision(vision_raw, used_layers=vision_raw['num_hidden_layers'])
  mm_hidden = raw.get('mm_hidden_size')
  if mm_hidden is not None and mm_hidden != vision.hidden_size:
    raise ConfigError(f'mm_hidden_size {mm_hidden} != vision tower width {vision.hidden_size}')
  return vision


def is_multimodal(raw: dict[str, Any]) -> bool:
  return any(k in raw for k in ('mm_projector_type', 'mm_vision_tower', 'mm_hidden_size'))


def parse(raw: dict[str, Any]) -> tuple[str, ModelConfig, dict[str, Any]]:
  """(layout, model config, facts the loader needs) of a checkpoint's config.json."""
  layout = detect_layout(raw)
  facts: dict[str, Any] = {}
  if layout == layouts.LLADA:
    return layout, ModelConfig(lm=_llada_lm(raw), vision=None), facts
  if layout == layouts.SIGLIP:
    full_model = 'vision_config' in raw
    vision_raw = {**_SIGLIP_VISION_DEFAULTS, **(raw['vision_config'] if full_model else raw)}
    stored = vision_raw['num_hidden_layers']
    if stored < 2:
      raise ConfigError(f'a SigLIP tower with {stored} layer(s) cannot drop its last layer')
    # The reference drops the last layer of a standalone tower: features = hidden_states[-2].
    facts['text_tower'] = full_model
    return layout, ModelConfig(lm=None, vision=_vision(vision_raw, used_layers=stored - 1)), facts
  lm = _llama_style_lm(raw)
  if not is_multimodal(raw):
    return layout, ModelConfig(lm=lm, vision=None), facts
  projector = raw.get('mm_projector_type', 'mlp2x_gelu')
  if projector != 'mlp2x_gelu':
    raise ConfigError(f'mm_projector_type {projector!r} is not supported (only mlp2x_gelu)')
  pool_mode = raw.get('mm_spatial_pool_mode', 'bilinear')
  if pool_mode != 'bilinear':
    raise ConfigError(f'mm_spatial_pool_mode {pool_mode!r} is not supported (only bilinear)')
  newline = raw.get('mm_newline_position', 'grid')
  if newline != 'grid':
    raise ConfigError(f'mm_newline_position {newline!r} is not supported (only grid)')
  config = ModelConfig(
      lm=lm, vision=_combined_vision(raw), projector=projector,
      pool_stride=int(raw.get('mm_spatial_pool_stride', 2)), newline=newline)
  return layout, config, facts


# --- Writing config.json for an export -----------------------------------------------------------


def _llama_style_fields(lm: LMConfig, dtype: str) -> dict[str, Any]:
  return dict(
      hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
      num_hidden_layers=lm.num_layers, num_attention_heads=lm.num_heads,
      num_key_value_heads=lm.num_kv_heads, vocab_size=lm.vocab_size, rope_theta=lm.rope_theta,
      rms_norm_eps=lm.rms_norm_eps, rope_scaling=None, tie_word_embeddings=False,
      attention_bias=False, attention_dropout=0.0, hidden_act='silu',
      initializer_range=lm.initializer_range,
      max_position_embeddings=16384, pretraining_tp=1, use_cache=False,
      bos_token_id=TokenIds().bos, eos_token_id=TokenIds().eos, torch_dtype=dtype)


def _siglip_fields(vision: VisionConfig, num_hidden_layers: int) -> dict[str, Any]:
  return dict(
      hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
      num_hidden_layers=num_hidden_layers, num_attention_heads=vision.num_heads,
      image_size=vision.image_size, patch_size=vision.patch_size,
      layer_norm_eps=vision.layer_norm_eps, hidden_act='gelu_pytorch_tanh', num_channels=3)


def export_config(config: ModelConfig, layout: str, dtype: str) -> dict[str, Any]:
  """A config.json for `config` in `layout` that the reference code reads.

  llada_v: the LLaDA-V LM config (Llama-style names), plus the LLaVA `mm_*` fields and a
  `vision_config` (counting the layers used) when multimodal. llada: the original LLaDA config.
  siglip: a standalone `SiglipVisionModel` config, which counts the layer the reference drops.
  """
  if layout == layouts.LLADA:
    lm = config.lm
    return dict(
        architectures=['LLaDAModelLM'], model_type='llada', d_model=lm.hidden_size,
        n_layers=lm.num_layers, n_heads=lm.num_heads, n_kv_heads=lm.num_kv_heads,
        mlp_hidden_size=lm.intermediate_size, vocab_size=lm.vocab_size,
        init_std=lm.initializer_range, embedding_size=lm.vocab_size, rope_theta=lm.rope_theta,
        rms_norm_eps=lm.rms_norm_eps,
        rms_layer_norm_eps=lm.rms_norm_eps, rope=True, block_type='llama',
        activation_type='silu', layer_norm_type='rms', weight_tying=False, include_bias=False,
        attention_layer_norm=False, input_emb_norm=False, scale_logits=False,
        mask_token_id=TokenIds().mask, eos_token_id=TokenIds().eos, pad_token_id=TokenIds().eos,
        max_sequence_length=4096, use_cache=False, torch_dtype=dtype)
  if layout == layouts.SIGLIP:
    return dict(architectures=['SiglipVisionModel'], model_type='siglip_vision_model',
                **_siglip_fields(config.vision, config.vision.num_layers + 1), torch_dtype=dtype)
  fields = _llama_style_fields(config.lm, dtype)
  if not config.is_multimodal:
    return dict(architectures=['LLaDAModelLM'], model_type='llada', **fields)
  return dict(
      architectures=['LlavaLLaDAModelLM'], model_type='llava_llada', **fields,
      mm_projector_type=config.projector, mm_hidden_size=config.vision.hidden_size,
      mm_vision_tower=DEFAULT_VISION_TOWER, mm_vision_select_layer=-2,
      mm_vision_select_feature='patch', mm_patch_merge_type='spatial_unpad',
      mm_newline_position=config.newline, mm_spatial_pool_mode='bilinear',
      mm_spatial_pool_stride=config.pool_stride,
      vision_config=_siglip_fields(config.vision, config.vision.num_layers))
