"""The reference decode as a PyTorch loop, the yardstick of the sampler benchmarks.

Written the way the reference `generate` runs (SPEC 4): a Python loop over blocks and steps, a
full forward and full logits every step, then the block's low-confidence top-k reveal. Greedy
decoding only. `vidlada_jax.launch.bench_sampler` and `.bench_device` time it against
`vj.generate` on the same weights and device.
"""

from __future__ import annotations

import math

import torch


def reference_generate(model, prompt, *, gen_length, steps, block_length, mask_id, suppressed_ids,
                       canvas_logits_only=False, max_steps=None):
  """The decode as the reference runs it: a Python loop, one full forward per step (batch 1).

  `model` is a transformers causal LM; an all-zero 4-D attention mask makes it bidirectional.
  `canvas_logits_only` computes logits for the canvas alone (the reference computes them for
  every position). `max_steps` stops after that many steps (for timing a few of them).
  Returns the canvas [gen_length] as numpy.
  """
  device = next(model.parameters()).device
  x = torch.cat([torch.as_tensor(prompt, dtype=torch.long),
                 torch.full((gen_length,), mask_id, dtype=torch.long)])[None].to(device)
  length, start = x.shape[1], len(prompt)
  zero_mask = torch.zeros(1, 1, length, length, dtype=model.dtype, device=device)
  suppressed = torch.tensor(suppressed_ids, device=device)
  taken = 0
  num_blocks = gen_length // block_length
  steps_per_block = steps // num_blocks
  for block in range(num_blocks):
    lo, hi = start + block * block_length, start + (block + 1) * block_length
    n = int((x[0, lo:hi] == mask_id).sum())
    for step in range(steps_per_block):
      if max_steps is not None and taken == max_steps:
        return x[0, start:].cpu().numpy()
      taken += 1
      k = n // steps_per_block + (1 if step < n % steps_per_block else 0)
      still = x[0, lo:hi] == mask_id
      extra = dict(logits_to_keep=gen_length) if canvas_logits_only else {}
      logits = model(input_ids=x, attention_mask=zero_mask, **extra).logits[0]
      offset = length - logits.shape[0]
      block_logits = logits[lo - offset:hi - offset].clone()
      block_logits[still.nonzero()[:, 0][:, None], suppressed] = -math.inf
      proposals = block_logits.argmax(-1)
      probs = torch.softmax(block_logits.double(), dim=-1)
      confidence = probs.gather(-1, proposals[:, None])[:, 0]
      confidence[~still] = -math.inf
      chosen = torch.topk(confidence, k).indices
      x[0, lo + chosen] = proposals[chosen]
  return x[0, start:].cpu().numpy()
