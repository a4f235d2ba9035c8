"""Independent PyTorch references and tiny checkpoints in every reference layout.

The reference LM is transformers' `LlamaForCausalLM` run with an all-zero 4-D attention mask (which
is exactly the bidirectional LLaDA LM); the reference tower is `SiglipVisionModel`, whose
`hidden_states[-2]` are the features VidLaDA uses. The multimodal glue (projector, bilinear
resampling, row newlines, splicing) is written here directly in torch from SPEC 1, independently of
the JAX code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

TINY_LM = dict(vocab_size=126464, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, rope_theta=500000.0,
               rms_norm_eps=1e-5)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, image_size=384,
                   patch_size=14, layer_norm_eps=1e-6)
VISION_PREFIX = 'model.vision_tower.vision_tower.vision_model.'

# The original LLaDA names of the LLaDA-V LM tensors (SPEC 2.3), written out independently.
_LLADA_RENAMES = (
    ('model.embed_tokens.weight', 'model.transformer.wte.weight'),
    ('model.norm.weight', 'model.transformer.ln_f.weight'),
    ('lm_head.weight', 'model.transformer.ff_out.weight'),
    ('self_attn.q_proj', 'q_proj'), ('self_attn.k_proj', 'k_proj'), ('self_attn.v_proj', 'v_proj'),
    ('self_attn.o_proj', 'attn_out'), ('mlp.gate_proj', 'ff_proj'), ('mlp.up_proj', 'up_proj'),
    ('mlp.down_proj', 'ff_out'), ('input_layernorm', 'attn_norm'),
    ('post_attention_layernorm', 'ff_norm'),
)


def _randomise(module: torch.nn.Module, seed: int) -> None:
  """Weights far from their init (unit-scale norms, O(0.1..1) matrices) so errors show."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim == 1 and ('norm' in name or 'layer_norm' in name) and name.endswith('weight'):
        p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
      else:
        fan_in = p.shape[-1] if p.ndim > 1 else 16
        p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / math.sqrt(fan_in)))


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
  config = LlamaConfig(**{**TINY_LM, **overrides}, tie_word_embeddings=False,
                       attn_implementation='eager')
  model = LlamaForCausalLM(config).eval()
  _randomise(model, seed)
  return model


def tiny_siglip(num_layers: int = 3, seed: int = 1, **overrides) -> SiglipVisionModel:
  config = SiglipVisionConfig(**{**TINY_VISION, **overrides}, num_hidden_layers=num_layers,
                              attn_implementation='eager')
  model = SiglipVisionModel(config).eval()
  _randomise(model, seed)
  return model


def bidirectional_logits(model: LlamaForCausalLM, input_ids=None, inputs_embeds=None) -> np.ndarray:
  """LLaDA = Llama with an all-zero additive 4-D mask: every token attends to every token."""
  ref = input_ids if input_ids is not None else inputs_embeds
  batch, length = ref.shape[:2]
  mask = torch.zeros(batch, 1, length, length, dtype=torch.float32)
  with torch.no_grad():
    out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask)
  return out.logits.float().numpy()


def siglip_features(model: SiglipVisionModel, pixels_nhwc: np.ndarray) -> torch.Tensor:
  """Output of the second-to-last layer, before post_layernorm: VidLaDA's visual features."""
  pixels = torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


class TinyVidLaDA:
  """A tiny VidLaDA in torch: Llama LM, SigLIP tower, mlp2x_gelu projector, image_newline."""

  def __init__(self, seed: int = 0, used_vision_layers: int = 2):
    self.lm = tiny_llama(seed)
    self.tower = tiny_siglip(num_layers=used_vision_layers + 1, seed=seed + 1)
    hidden, vision_hidden = TINY_LM['hidden_size'], TINY_VISION['hidden_size']
    self.projector = torch.nn.Sequential(
        torch.nn.Linear(vision_hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    _randomise(self.projector, seed + 2)
    self.image_newline = torch.randn(hidden, generator=torch.Generator().manual_seed(seed + 3))
    self.used_vision_layers = used_vision_layers

  def visual_tokens(self, pixels_nhwc: np.ndarray) -> torch.Tensor:
    """[F, H, W, 3] -> [F * 210, hidden] following SPEC 1 steps 3-6."""
    with torch.no_grad():
      feats = self.projector(siglip_features(self.tower, pixels_nhwc))  # [F, 729, hidden]
      frames, patches, hidden = feats.shape
      side = int(math.isqrt(patches))
      grid = feats.view(frames, side, side, hidden).permute(0, 3, 1, 2)
      pooled_side = math.ceil(side / 2)
      grid = F.interpolate(grid, size=(pooled_side, pooled_side), mode='bilinear',
                           align_corners=False)
      grid = grid.permute(0, 2, 3, 1)  # [F, 14, 14, hidden]
      newline = self.image_newline.view(1, 1, 1, hidden).expand(frames, pooled_side, 1, hidden)
      return torch.cat([grid, newline], dim=2).reshape(-1, hidden)

  def logits(self, input_ids: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """ids [B, L] with one -200 each, pixels [B, F, H, W, 3] -> logits of the spliced sequence."""
    rows = []
    for ids, frames in zip(input_ids, pixels):
      at = int(np.flatnonzero(ids == -200)[0])
      embed = self.lm.model.embed_tokens
      with torch.no_grad():
        before = embed(torch.from_numpy(ids[:at]).long())
        after = embed(torch.from_numpy(ids[at + 1:]).long())
        rows.append(torch.cat([before, self.visual_tokens(frames), after]))
    return bidirectional_logits(self.lm, inputs_embeds=torch.stack(rows))

  def state_dict(self, include_extra_layer: bool = True) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in self.lm.state_dict().items()}
    for k, v in self.tower.state_dict().items():
      k = k.removeprefix('vision_model.')
      if k.startswith(f'encoder.layers.{self.used_vision_layers}.') and not include_extra_layer:
        continue
      tensors[VISION_PREFIX + k] = v
    tensors['model.mm_projector.0.weight'] = self.projector[0].weight
    tensors['model.mm_projector.0.bias'] = self.projector[0].bias
    tensors['model.mm_projector.2.weight'] = self.projector[2].weight
    tensors['model.mm_projector.2.bias'] = self.projector[2].bias
    tensors['model.image_newline'] = self.image_newline
    return tensors

  def config(self) -> dict:
    lm = self.lm.config
    return dict(
        architectures=['LlavaLLaDAModelLM'], model_type='llava_llada',
        hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
        num_hidden_layers=lm.num_hidden_layers, num_attention_heads=lm.num_attention_heads,
        num_key_value_heads=lm.num_key_value_heads, vocab_size=lm.vocab_size,
        rope_theta=TINY_LM['rope_theta'], rms_norm_eps=lm.rms_norm_eps, tie_word_embeddings=False,
        hidden_act='silu', attention_bias=False,
        mm_projector_type='mlp2x_gelu', mm_hidden_size=TINY_VISION['hidden_size'],
        mm_patch_merge_type='spatial_unpad', mm_newline_position='grid',
        mm_spatial_pool_mode='bilinear', mm_spatial_pool_stride=2,
        mm_vision_tower='google/siglip2-so400m-patch14-384',
        vision_config=dict(TINY_VISION, num_hidden_layers=self.used_vision_layers),
        torch_dtype='float32')


def llada_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """LLaDA-V LM tensor names -> the original LLaDA-8B names."""
  out = {}
  for name, value in tensors.items():
    name = name.replace('model.layers.', 'model.transformer.blocks.')
    for old, new in _LLADA_RENAMES:
      name = name.replace(old, new)
    out[name] = value
  return out


def llada_config(llama_config: LlamaConfig) -> dict:
  return dict(
      model_type='llada', architectures=['LLaDAModelLM'], d_model=llama_config.hidden_size,
      n_layers=llama_config.num_hidden_layers, n_heads=llama_config.num_attention_heads,
      n_kv_heads=llama_config.num_key_value_heads, mlp_hidden_size=llama_config.intermediate_size,
      vocab_size=llama_config.vocab_size, embedding_size=llama_config.vocab_size,
      rope_theta=TINY_LM['rope_theta'], rms_norm_eps=llama_config.rms_norm_eps,
      mask_token_id=126336, weight_tying=False, include_bias=False, activation_type='silu',
      block_type='llama', torch_dtype='float32')


def write_checkpoint(directory, tensors: dict[str, torch.Tensor], config: dict,
                     shards: int = 1) -> Path:
  """Saves tensors as the reference does: one model.safetensors, or shards plus an index."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'config.json').write_text(json.dumps(config, indent=2))
  tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
  if shards == 1:
    save_file(tensors, str(directory / 'model.safetensors'))
    return directory
  names = sorted(tensors)
  weight_map = {}
  for s in range(shards):
    file = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
    part = {n: tensors[n] for n in names[s::shards]}
    save_file(part, str(directory / file))
    weight_map.update({n: file for n in part})
  total = sum(v.numel() * v.element_size() for v in tensors.values())
  (directory / 'model.safetensors.index.json').write_text(
      json.dumps({'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=2))
  return directory


def max_relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected| (the figure every parity test reports)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
