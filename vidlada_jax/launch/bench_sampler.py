"""Sampler benchmark: our jitted `vj.generate` against the reference algorithm as a PyTorch loop.

    python -m vidlada_jax.launch.bench_sampler            2048-token prompt,
                                                          gen_length = steps = block = 64
    python -m vidlada_jax.launch.bench_sampler --quick    1024-token prompt, 16/16/16,
                                                          under two minutes
    python -m vidlada_jax.launch.bench_sampler --json     one JSON object instead of the table

The same small LLaDA-style model (real 126k vocabulary, 4 layers of width 256, random weights) runs
on both sides with the same weights: in PyTorch as transformers' `LlamaForCausalLM` with an
all-zero 4-D attention mask (exactly the bidirectional LM), driven by a plain per-step Python
loop that does what the reference `generate` does (full forward and full logits every step, then
the block's low-confidence top-k); in JAX by `vj.generate`, one compiled program. Both greedy,
float32, no stop token, on this machine's CPU. A second PyTorch row computes logits only for the
canvas (`logits_to_keep`), to show how much of the gap is that one choice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

SMALL_LM = dict(vocab_size=126464, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=4, rope_theta=500000.0,
                rms_norm_eps=1e-5)
FULL = dict(prompt_tokens=2048, gen_length=64, steps=64, block_length=64)
QUICK = dict(prompt_tokens=1024, gen_length=16, steps=16, block_length=16)


def run(quick: bool) -> dict:
  try:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
  except ImportError as e:
    raise SystemExit(f'the sampler benchmark compares against PyTorch: pip install '
                     f'"vidlada-jax[torch]" ({e})')
  import jax
  import jax.numpy as jnp
  from safetensors.torch import save_file

  import vidlada_jax as vj
  from vidlada_jax.torch_sampler import reference_generate

  jax.config.update('jax_default_matmul_precision', 'highest')
  torch.set_num_threads(os.cpu_count() or 1)
  shape = QUICK if quick else FULL
  tokens = vj.TokenIds()
  torch.manual_seed(0)
  config = LlamaConfig(**SMALL_LM, tie_word_embeddings=False, attn_implementation='sdpa')
  torch_model = LlamaForCausalLM(config).eval()
  prompt = np.random.default_rng(0).integers(0, 126000,
                                             size=shape['prompt_tokens']).astype(np.int32)
  settings = {k: shape[k] for k in ('gen_length', 'steps', 'block_length')}

  with tempfile.TemporaryDirectory() as directory:
    save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()},
              os.path.join(directory, 'model.safetensors'))
    with open(os.path.join(directory, 'config.json'), 'w') as f:
      json.dump(config.to_dict(), f)
    model = vj.from_pretrained(directory, dtype=jnp.float32, progress=False)

  start = time.perf_counter()
  vj.generate(model, prompt[None], stop_ids=(), **settings).tokens.block_until_ready()
  compile_and_first = time.perf_counter() - start
  start = time.perf_counter()
  ours = np.asarray(vj.generate(model, prompt[None], stop_ids=(), **settings).tokens[0])
  jax_seconds = time.perf_counter() - start

  suppressed = (tokens.eos, tokens.bos, tokens.start_header, tokens.end_header)
  results = {}
  with torch.inference_mode():
    for name, canvas_only in (('torch', False), ('torch_canvas_logits', True)):
      start = time.perf_counter()
      theirs = reference_generate(
          torch_model, prompt, mask_id=tokens.mask, suppressed_ids=suppressed,
          canvas_logits_only=canvas_only, **settings)
      results[name] = (time.perf_counter() - start, theirs)

  gen = shape['gen_length']
  torch_seconds, torch_tokens = results['torch']
  canvas_seconds, _ = results['torch_canvas_logits']
  return dict(
      mode='quick' if quick else 'full', **shape, device=jax.devices()[0].device_kind,
      cpu_threads=os.cpu_count(),
      jax_seconds=jax_seconds, jax_compile_and_first_call_seconds=compile_and_first,
      torch_seconds=torch_seconds, torch_canvas_logits_seconds=canvas_seconds,
      jax_tokens_per_s=gen / jax_seconds, torch_tokens_per_s=gen / torch_seconds,
      torch_canvas_logits_tokens_per_s=gen / canvas_seconds,
      ratio=torch_seconds / jax_seconds, ratio_vs_canvas_logits=canvas_seconds / jax_seconds,
      token_agreement=float(np.mean(ours == torch_tokens)))


def print_table(r: dict) -> None:
  print(f'prompt {r["prompt_tokens"]} tokens, gen_length/steps/block {r["gen_length"]}/'
        f'{r["steps"]}/{r["block_length"]}, greedy, float32, '
        f'{r["device"]} ({r["cpu_threads"]} threads)')
  print(f'{"implementation":<48} {"seconds":>8} {"tokens/s":>9} {"vs reference loop":>18}')
  rows = [('vidlada-jax generate (one jitted program)', r['jax_seconds'], r['ratio']),
          ('PyTorch loop, full logits (the reference)', r['torch_seconds'], 1.0),
          ('PyTorch loop, canvas logits only', r['torch_canvas_logits_seconds'],
           r['torch_seconds'] / r['torch_canvas_logits_seconds'])]
  for name, seconds, ratio in rows:
    print(f'{name:<48} {seconds:>8.2f} {r["gen_length"] / seconds:>9.2f} {ratio:>17.2f}x')
  print(f'JAX compile + first call: {r["jax_compile_and_first_call_seconds"]:.1f}s; '
        f'tokens identical to the PyTorch loop: {100 * r["token_agreement"]:.0f}%')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.bench_sampler',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='smaller case, under two minutes')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args(argv)
  result = run(args.quick)
  if args.json:
    print(json.dumps(result))
  else:
    print_table(result)
  return 0


if __name__ == '__main__':
  sys.exit(main())
