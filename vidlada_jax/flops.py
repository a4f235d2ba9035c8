"""Analytic FLOPs of a denoising step: plain decoding and any recompute plan, counted the same way.

Matrix products count 2 FLOPs per multiply-add. Per recomputed row and layer: the q/k/v/o
projections and the SwiGLU MLP; per attended (query, key) pair: the two attention products. Under
chunk attention the pairs are those of the key blocks the block table visits (what the op really
computes), plus the anchors; the anchor search adds its proxy scores. Logits are computed for the
current block only, by every policy. Elementwise work (norms, RoPE, softmax) is left out.
"""

from __future__ import annotations

import numpy as np

from vidlada_jax.attention_backends import block_sparse
from vidlada_jax.attention_backends.block_sparse import GLOBAL, FrameWindowMask
from vidlada_jax.cache import Recompute, RowWindow
from vidlada_jax.config import LMConfig


def row_flops(lm: LMConfig) -> int:
  """One row through one layer, without attention scores."""
  heads, kv_heads, d = lm.num_heads * lm.head_dim, lm.num_kv_heads * lm.head_dim, lm.hidden_size
  return 2 * d * (2 * heads + 2 * kv_heads) + 2 * 3 * d * lm.intermediate_size


def pair_flops(lm: LMConfig) -> int:
  """One (query, key) pair in one layer: q.k over every head, then p * v."""
  return 4 * lm.num_heads * lm.head_dim


def head_flops(lm: LMConfig, rows: int) -> int:
  return 2 * rows * lm.hidden_size * lm.vocab_size


def window_flops(lm: LMConfig, window: RowWindow, length: int, frame_ids: np.ndarray | None,
                 blocks: tuple[int, int] = (block_sparse.BLOCK_Q, block_sparse.BLOCK_K)
                 ) -> tuple[int, float]:
  """(FLOPs of one layer recomputing `window`, fraction of attention key blocks visited), with
  chunk attention computed in `blocks` = (query block, key block) tiles."""
  rows = window.size
  if window.frame_window is None:
    return rows * row_flops(lm) + rows * length * pair_flops(lm), 1.0
  start = int(window.start)
  q_frame = frame_ids[start:start + rows]
  visual = q_frame != GLOBAL
  block_q, block_k = blocks
  table = block_sparse.block_table(
      FrameWindowMask(q_frame[visual], frame_ids, window.frame_window).padded(block_q, block_k),
      block_q, block_k)
  key_blocks = -(-length // block_k)
  pairs = int(table.counts.sum()) * block_q * block_k + int((~visual).sum()) * length
  # Global query rows attend densely: count them as whole rows of key blocks.
  visited = int(table.counts.sum()) * block_q + int((~visual).sum()) * key_blocks
  total = rows * key_blocks
  flops = rows * row_flops(lm) + pairs * pair_flops(lm)
  if window.anchors is not None:
    num_visual = int((frame_ids >= 0).sum())
    anchors = min(window.anchors.count, num_visual)
    flops += int(visual.sum()) * anchors * pair_flops(lm)  # every visual query sees them
    flops += min(window.anchors.queries, num_visual) * num_visual * pair_flops(lm) // 2
  return flops, visited / total


def plan_flops(lm: LMConfig, plan: Recompute, length: int,
               blocks: tuple[int, int] = (block_sparse.BLOCK_Q, block_sparse.BLOCK_K)) -> int:
  """FLOPs of one cached step: each layer's window, then the block's logits."""
  total = 0
  for index in np.asarray(plan.layer_window):
    total += window_flops(lm, plan.windows[int(index)], length, plan.frame_ids, blocks)[0]
  return total + head_flops(lm, plan.output_size)


def plain_flops(lm: LMConfig, length: int, block_length: int) -> int:
  """FLOPs of one step of plain decoding: every layer over every row, the block's logits."""
  return lm.num_layers * (length * row_flops(lm) + length * length * pair_flops(lm)) + head_flops(
      lm, block_length)


def decode_flops_per_step(model, policy, prompt_length: int, num_visual: int, config
                          ) -> tuple[float, float]:
  """(mean analytic FLOPs per denoising step of a whole decode under `policy`, fraction of key
  blocks visited by frame-window attention), over every step of `config` (a `SamplerConfig`),
  with the block sizes of the model's block-sparse implementation."""
  from vidlada_jax.sampling import FullRecompute  # pylint: disable=g-import-not-at-top

  lm = model.config.lm
  length = prompt_length + config.gen_length
  if isinstance(policy, FullRecompute):
    return float(plain_flops(lm, length, config.block_length)), 1.0
  kernel = block_sparse.get_implementation(model.lm.layers.self_attn.attend.sparse)
  blocks = (kernel.BLOCK_Q, kernel.BLOCK_K)
  total, density, step = 0.0, 1.0, 0
  for block in range(config.num_blocks):
    for block_step in range(config.steps_per_block):
      plan = policy.plan(num_layers=lm.num_layers, prompt_length=prompt_length,
                         num_visual=num_visual, tokens_per_frame=model.config.tokens_per_frame,
                         config=config, step=step, block=block, block_step=block_step)
      total += plan_flops(lm, plan, length, blocks)
      for window in plan.windows:
        if window.frame_window is not None:
          density = window_flops(lm, window, length, plan.frame_ids, blocks)[1]
      step += 1
  return total / step, density
