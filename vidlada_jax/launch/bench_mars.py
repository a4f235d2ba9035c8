"""MARS-Cache benchmark: plain decoding, each mechanism alone, the default, and Fast-dLLM's cache.

    python -m vidlada_jax.launch.bench_mars                   16 frames x 210 tokens,
                                                              gen 64 / steps 64
    python -m vidlada_jax.launch.bench_mars --quick --json    a reduced case in under two minutes,
                                                              as JSON
    python -m vidlada_jax.launch.bench_mars --policies none,mars,dual

One random model of the real width ratio (head dim 128, MLP 3x the width; a 16k vocabulary, so
the logits cost the share of a step they cost the 8B model; weights of useful scale,
`params.randomise`) decodes the same
video prompt (a generated clip of moving squares: neighbouring frames alike, as in real video)
once per policy, greedy, float32, no stop token, on this machine's default device. For each
policy the table gives:

  tokens/s, speedup    gen_length / the median seconds of `--repeats` (3) `vj.generate` calls
                       (compiled beforehand; the policies take turns, round by round), against
                       plain decoding in the same run
  GFLOP/step, ratio    analytic FLOPs per denoising step (`vidlada_jax.flops`: what each layer
                       recomputes under the policy's schedule, attention over the key blocks the
                       block table visits, the block's logits) and plain's FLOPs over them
  blocks               fraction of attention key blocks visited when visual rows are recomputed
  GFLOP/s, % matmul    (after the table) the FLOP/s each policy achieved, against this device's
                       throughput in one jitted float32 product of plain decoding's largest
                       shape, timed in the same run; and each speedup over its FLOP ratio
  tokens equal         fraction of the decoded tokens equal to plain decoding's
  logits rel. err      max |logits - plain| / max |plain| of the block logits along plain
  top-1 agree          decoding's trajectory (`vidlada_jax.policy_comparison.compare_along`), and
                       how often the most likely token is the same at still-masked positions
  profile              (last) one more call of the default under `jax.profiler`
                       (`vidlada_jax.benchmarking.profile_ops`): its time by XLA op, and the share
                       spent copying each layer's slice out of the stacked weights and cache
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import numpy as np

from vidlada_jax.benchmarking import print_profile
from vidlada_jax.policies import DESCRIPTIONS

FULL = dict(frames=16, hidden=512, heads=4, layers=8, gen_length=64, steps=64, block_length=32)
QUICK = dict(frames=4, hidden=256, heads=2, layers=4, gen_length=32, steps=32, block_length=32)
# The vocabulary is cut to 16k so that the logits keep the share of a step they have in the real
# model: the 8B's 126k x 4096 head is ~5% of a cached step's FLOPs at 64 frames, while at width
# 512 with 8 layers the full 126k head would be half of it. The special tokens move with it.
VOCAB = 16384
TOKENS = dict(bos=VOCAB - 8, eos=VOCAB - 7, mask=VOCAB - 6, start_header=VOCAB - 5,
              end_header=VOCAB - 4, eot=VOCAB - 3)


def policies(names):
  """The named policies of `vidlada_jax.policies`, in the order given."""
  from vidlada_jax.policies import CACHE_POLICIES  # pylint: disable=g-import-not-at-top

  unknown = set(names) - set(CACHE_POLICIES)
  if unknown:
    raise SystemExit(f'unknown policies {sorted(unknown)}; known: {", ".join(CACHE_POLICIES)}')
  return {name: CACHE_POLICIES[name] for name in names}


def moving_squares(num_frames: int, size: int = 384) -> np.ndarray:
  """float32 [F, size, size, 3] in [-1, 1]: three squares drifting across a gradient."""
  ys, xs = np.mgrid[0:size, 0:size] / size
  frames = np.empty((num_frames, size, size, 3), np.float32)
  for f in range(num_frames):
    t = f / max(num_frames - 1, 1)
    frame = np.stack([xs, ys, 0.5 * (xs + ys)], axis=-1) * 0.6 - 0.3
    for i, colour in enumerate(([1, -1, -1], [-1, 1, -1], [-1, -1, 1])):
      x0 = int((0.1 + 0.6 * t * (1 if i % 2 == 0 else -1) + 0.3 * i) % 0.8 * size)
      y0 = int((0.2 + 0.25 * i) * size)
      frame[y0:y0 + size // 8, x0:x0 + size // 8] = colour
    frames[f] = frame
  return frames


def run(quick: bool, names, repeats: int = 3, profile: bool = True) -> dict:
  import jax

  import vidlada_jax as vj
  from vidlada_jax import flops, policy_comparison, sampling
  from vidlada_jax.benchmarking import matmul_flops_per_s, profile_ops, time_interleaved
  from vidlada_jax.params import randomise

  shape = QUICK if quick else FULL
  config = vj.model_config('tiny').replace(
      lm=dataclasses.replace(vj.config.TINY_LM, vocab_size=VOCAB, hidden_size=shape['hidden'],
                             num_heads=shape['heads'], num_kv_heads=shape['heads'],
                             intermediate_size=3 * shape['hidden'], num_layers=shape['layers']),
      tokens=vj.TokenIds(**TOKENS))
  model = randomise(vj.init_model(config, seed=0), seed=0)
  rng = np.random.default_rng(0)
  text = rng.integers(0, VOCAB - 16, size=96).astype(np.int32)
  ids = np.concatenate([text[:20], [config.tokens.image], text[20:]])[None]
  pixels = moving_squares(shape['frames'])[None]
  settings = {k: shape[k] for k in ('gen_length', 'steps', 'block_length')}
  sampler = sampling.SamplerConfig(**settings, stop_ids=(), tokens=config.tokens)
  num_visual = shape['frames'] * config.tokens_per_frame
  prompt_length = ids.shape[1] - 1 + num_visual

  chosen = policies(names)
  calls = {name: functools.partial(vj.generate, model, ids, pixels, cache=policy, stop_ids=(),
                                   trace=True, **settings)
           for name, policy in chosen.items()}
  report = lambda name, t: print(f'  {name}: {t.median_s:.2f}s', file=sys.stderr, flush=True)
  timings = time_interleaved(calls, repeats, on_done=report)
  rows = {}
  for name, policy in chosen.items():
    timing = timings[name]
    flops_per_step, density = flops.decode_flops_per_step(model, policy, prompt_length,
                                                          num_visual, sampler)
    rows[name] = dict(seconds=timing.median_s, calls_seconds=timing.seconds,
                      compile_and_first_call_seconds=timing.first_call_s,
                      tokens_per_s=shape['gen_length'] / timing.median_s,
                      flops_per_step=flops_per_step, blocks_visited=density,
                      tokens=np.asarray(timing.output.tokens),
                      history=np.asarray(timing.output.history))

  plain = rows.get('none')
  if plain is not None:
    others = {name: p for name, p in policies(names).items() if name != 'none'}
    comparisons = policy_comparison.compare_along(
        model, ids, pixels, plain['history'], config=sampler, policies=others) if others else {}
    for name, row in rows.items():
      row['speedup'] = plain['seconds'] / row['seconds']
      row['flop_ratio'] = plain['flops_per_step'] / row['flops_per_step']
      row['token_agreement'] = float(np.mean(row['tokens'] == plain['tokens']))
      if name in comparisons:
        row['logits_max_relative_error'] = comparisons[name].max_relative_error
        row['top1_agreement'] = float(np.mean(comparisons[name].top1_agreement))
      else:
        row['logits_max_relative_error'], row['top1_agreement'] = 0.0, 1.0
  for row in rows.values():
    del row['tokens'], row['history']
  # The ceiling: one jitted product of plain decoding's largest shape (every row through the
  # MLP's up projection), timed in this run.
  matmul = matmul_flops_per_s(prompt_length + shape['gen_length'], shape['hidden'],
                              3 * shape['hidden'])
  add_efficiency(rows, shape['steps'], matmul)
  result = dict(mode='quick' if quick else 'full', **shape, prompt_tokens=prompt_length,
                visual_tokens=num_visual, device=jax.devices()[0].device_kind,
                cpu_threads=os.cpu_count(), matmul_flops_per_s=matmul, policies=rows)
  if profile and 'mars' in calls:
    result['profile'] = profile_ops(calls['mars']).as_dict()
  return result


def add_efficiency(rows: dict, steps: int, matmul_flops_per_s: float) -> None:
  """Per policy: the FLOP/s it achieved (`flops_per_s`), as a fraction of the device's jitted
  matmul throughput (`fraction_of_matmul`), and its measured speedup over its analytic FLOP
  ratio (`speedup_over_flop_ratio`: 1 when a policy saves time exactly as it saves FLOPs)."""
  for row in rows.values():
    row['flops_per_s'] = row['flops_per_step'] * steps / row['seconds']
    row['fraction_of_matmul'] = row['flops_per_s'] / matmul_flops_per_s
    if 'speedup' in row:
      row['speedup_over_flop_ratio'] = row['speedup'] / row['flop_ratio']


def summary(result: dict) -> dict:
  """The headline numbers of the default MARS-Cache against plain decoding."""
  plain, mars = result['policies']['none'], result['policies']['mars']
  return dict(plain_tokens_per_s=plain['tokens_per_s'], mars_tokens_per_s=mars['tokens_per_s'],
              speedup=mars['speedup'], flop_ratio=mars['flop_ratio'],
              speedup_over_flop_ratio=mars['speedup_over_flop_ratio'],
              plain_fraction_of_matmul=plain['fraction_of_matmul'],
              token_agreement=mars['token_agreement'],
              top1_agreement=mars['top1_agreement'],
              logits_max_relative_error=mars['logits_max_relative_error'])


def print_table(result: dict) -> None:
  r = result
  print(f'{r["frames"]} frames x 210 + {r["prompt_tokens"] - r["visual_tokens"]} text tokens, '
        f'gen_length/steps/block {r["gen_length"]}/{r["steps"]}/{r["block_length"]}; LM width '
        f'{r["hidden"]}, {r["heads"]} heads of 128, MLP {3 * r["hidden"]}, {r["layers"]} layers, '
        f'vocab {VOCAB}; greedy, float32, {r["device"]} ({r["cpu_threads"]} threads)')
  header = (f'{"policy":<50} {"tokens/s":>8} {"speedup":>8} {"GFLOP/step":>10} {"ratio":>6} '
            f'{"blocks":>6} {"tokens =":>8} {"logit err":>9} {"top-1":>6}')
  print(header)
  for name, p in r['policies'].items():
    print(f'{DESCRIPTIONS[name]:<50} {p["tokens_per_s"]:>8.2f} {p.get("speedup", 1):>7.2f}x '
          f'{p["flops_per_step"] / 1e9:>10.2f} {p.get("flop_ratio", 1):>5.1f}x '
          f'{p["blocks_visited"]:>6.2f} {100 * p.get("token_agreement", 1):>7.0f}% '
          f'{p.get("logits_max_relative_error", 0):>9.1e} '
          f'{100 * p.get("top1_agreement", 1):>5.0f}%')
  rows = r['policies']
  print(f'jitted float32 matmul [{r["prompt_tokens"] + r["gen_length"]} x {r["hidden"]}] @ '
        f'[{r["hidden"]} x {3 * r["hidden"]}] on this device: '
        f'{r["matmul_flops_per_s"] / 1e9:.1f} GFLOP/s')
  for name, p in rows.items():
    ratio = (f'; speedup {p["speedup_over_flop_ratio"]:.2f} of its FLOP ratio'
             if name != 'none' and 'speedup_over_flop_ratio' in p else '')
    print(f'  {name}: {p["flops_per_s"] / 1e9:.1f} GFLOP/s, '
          f'{100 * p["fraction_of_matmul"]:.0f}% of it{ratio}')
  if 'profile' in r:
    print_profile(r['profile'], 'one call of the default')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.bench_mars',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='reduced case, under two minutes')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  parser.add_argument('--repeats', type=int, default=3,
                      help='timed calls per policy, interleaved across policies (median; 3)')
  parser.add_argument('--policies', default=None,
                      help='comma-separated subset of: ' + ', '.join(DESCRIPTIONS))
  parser.add_argument('--no-profile', dest='profile', action='store_false',
                      help='leave out the profiled call of the default')
  args = parser.parse_args(argv)
  names = (args.policies.split(',') if args.policies else
           ['none', 'mars'] if args.quick else list(DESCRIPTIONS))
  if 'none' not in names:
    names = ['none'] + names  # every figure is relative to plain decoding in the same run
  result = run(args.quick, names, args.repeats, args.profile)
  if args.json:
    print(json.dumps({**(summary(result) if 'mars' in names else {}), **result}))
  else:
    print_table(result)
  return 0


if __name__ == '__main__':
  sys.exit(main())
