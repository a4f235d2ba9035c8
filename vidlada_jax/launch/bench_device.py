"""VidLaDA decoding on this machine's accelerator: our sampler and MARS-Cache against the PyTorch
reference loop, in one command.

    python -m vidlada_jax.launch.bench_device               # 8B shape: one 80 GB GPU, ~7 min
    python -m vidlada_jax.launch.bench_device --scale tiny  # a tiny model: any CPU, ~1 min
        [--json] [--out FILE] [--repeats 3] [--no-torch] [--no-kernels] [--no-profile]
    python -m vidlada_jax.launch.bench_device --dry-run cuda  # runs nothing: checks the 8B run

Nothing is downloaded: the model is VidLaDA-8B's shape (`vj.model_config("8b")`) with random
weights created on the device, in bfloat16 (float32 at `--scale tiny`). The prompt is a video
of `frames` frames (64: 64 x 210 visual tokens) and a question of random text tokens; the decode
has the reference settings (128 tokens, 128 steps, block 128, and also block 32), greedy, with
no stop token so every call does the same work. Rows:

  PyTorch reference    transformers' LlamaForCausalLM with an all-zero 4-D attention mask (the
                       bidirectional LM) over the spliced sequence, driven by the reference's
                       Python loop (`vidlada_jax.torch_sampler`), on the same device and dtype
  plain                `vj.generate` with no cache: every step recomputes everything
  MARS-Cache           `vj.generate(cache=vj.MarsCache())`, its defaults
  dual cache           `vj.generate(cache=vj.DualCache())`, Fast-dLLM's (block 32)

Each is the median of `--repeats` calls after a compiling first call; the JAX rows take turns
round by round (`vidlada_jax.benchmarking`). Plain decoding and the reference loop do the same
work at every step (a full forward over the whole sequence), so they are timed over their first
`timed_steps` steps (16) and scaled to the decode's 128: a whole plain decode at 8B takes over
a minute, three of them would not leave the time for the rest. tokens/s = 128 tokens / decode
seconds; speedups are against plain decoding in the same run; `flop ratio` is plain's analytic
FLOPs per step over the policy's (`vidlada_jax.flops`), and `speedup_over_flop_ratio` (`/ratio`
in the table) the speedup over it. Peak memory is the device's peak allocation after each
framework's rows.

The kernel rows time the block-sparse attention op against cuDNN's fused attention on the same
mask, and cuDNN with no mask (a bound for any dense kernel), at the frame count of the decode
(`vidlada_jax.attention_backends.kernel_timing`).

Last, one more MARS-Cache decode runs under `jax.profiler` (`vidlada_jax.benchmarking.profile_ops`):
its device time by XLA op, and the share spent copying a layer's slice out of the stacked weights
and cache (`slice_read_s`; zero where the compiler lets each product read its slice in place).
`--out FILE` writes the JSON object after each of these parts, so a run cut short keeps what it
measured.

`--dry-run [PLATFORM]` runs nothing (`dry_run`): it lowers every JAX decode program for PLATFORM
from an abstract model, prints their analytic FLOPs, and builds the PyTorch model on torch's
meta device, in seconds on any machine (CUDA programs from a CPU take the Pallas kernels in
place of cuDNN's, which lowers only where cuDNN is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Scale:
  architecture: str
  dtype: str
  frames: int
  question_tokens: int
  gen_length: int
  steps: int
  block_lengths: tuple[int, ...]  # MARS-Cache at each; plain at the first; dual at the last
  timed_steps: int  # steps of plain decoding and the reference loop that are timed
  kernel_iters: int


SCALES = {
    '8b': Scale('8b', 'bfloat16', frames=64, question_tokens=48, gen_length=128, steps=128,
                block_lengths=(128, 32), timed_steps=16, kernel_iters=20),
    'tiny': Scale('tiny', 'float32', frames=4, question_tokens=48, gen_length=16, steps=16,
                  block_lengths=(16, 8), timed_steps=4, kernel_iters=3),
}


def random_text(tokens, size: int, seed: int) -> np.ndarray:
  """Random ordinary token ids: below the first special one."""
  first_special = min(t for t in dataclasses.astuple(tokens) if t >= 0)
  return np.random.default_rng(seed).integers(0, first_special, size=size)


def prompt_of(config, scale: Scale) -> np.ndarray:
  """Random question tokens around one <image> placeholder (no special token among them)."""
  text = random_text(config.tokens, scale.question_tokens, seed=0)
  return np.concatenate([text[:8], [config.tokens.image], text[8:]]).astype(np.int32)


def llama_config(model_config, dtype: str):
  """transformers' LlamaConfig of the LM, read from its config.json as the reference writes it."""
  from transformers import LlamaConfig  # pylint: disable=g-import-not-at-top

  from vidlada_jax.hf import layouts  # pylint: disable=g-import-not-at-top
  from vidlada_jax.hf.config import export_config  # pylint: disable=g-import-not-at-top

  raw = export_config(model_config.replace(vision=None), layouts.LLADA_V, dtype)
  known = LlamaConfig().to_dict()
  return LlamaConfig(**{k: v for k, v in raw.items() if k in known and k != 'torch_dtype'},
                     attn_implementation='sdpa')


def reference_rows(model_config, prompt, num_visual: int, scale: Scale, repeats: int) -> dict:
  """The PyTorch loop over the same sequence (visual tokens as random token ids: the embedding
  lookup is all that differs from spliced features, and it is negligible)."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import LlamaForCausalLM  # pylint: disable=g-import-not-at-top

  from vidlada_jax.torch_sampler import reference_generate  # pylint: disable=g-import-not-at-top

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  dtype = getattr(torch, scale.dtype)
  config = llama_config(model_config, scale.dtype)
  started = time.perf_counter()
  torch.manual_seed(0)
  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    with torch.device(device):
      model = LlamaForCausalLM(config).eval()
  finally:
    torch.set_default_dtype(default_dtype)
  build_s = time.perf_counter() - started
  tokens = model_config.tokens
  at = int(np.flatnonzero(prompt == tokens.image)[0])
  visual = random_text(tokens, num_visual, seed=1)
  ids = np.concatenate([prompt[:at], visual, prompt[at + 1:]]).astype(np.int64)
  run = lambda steps: reference_generate(
      model, ids, gen_length=scale.gen_length, steps=scale.steps,
      block_length=scale.block_lengths[0], mask_id=tokens.mask,
      suppressed_ids=(tokens.eos, tokens.bos, tokens.start_header, tokens.end_header),
      max_steps=steps)
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  with torch.inference_mode():
    started = time.perf_counter()
    run(1)
    sync()
    first = time.perf_counter() - started
    seconds = []
    for _ in range(repeats):
      started = time.perf_counter()
      run(scale.timed_steps)
      sync()
      seconds.append(time.perf_counter() - started)
  step = float(np.median(seconds)) / scale.timed_steps
  peak = torch.cuda.max_memory_allocated() if device == 'cuda' else None
  del model
  if device == 'cuda':
    torch.cuda.empty_cache()
  decode = step * scale.steps
  return dict(name='torch_reference', description='PyTorch reference loop', framework='torch',
              block_length=scale.block_lengths[0], decode_s=decode,
              tokens_per_s=scale.gen_length / decode, first_call_s=first, build_s=build_s,
              timed_steps=scale.timed_steps, calls_s=seconds, peak_bytes=peak,
              device=torch.cuda.get_device_name() if device == 'cuda' else 'cpu')


def decode_cases(scale: Scale) -> list[tuple]:
  """(name, description, policy, block length, steps run) of each JAX row. Plain decoding runs
  `timed_steps` steps only: each reveals more tokens, each costs the same."""
  import vidlada_jax as vj  # pylint: disable=g-import-not-at-top

  first_block, last_block = scale.block_lengths[0], scale.block_lengths[-1]
  cases = [('plain', 'vj.generate, plain decoding', vj.FullRecompute(), first_block,
            scale.timed_steps)]
  cases += [(f'mars_block{b}', f'vj.generate, MARS-Cache default, block {b}', vj.MarsCache(), b,
             scale.steps) for b in scale.block_lengths]
  cases.append((f'dual_block{last_block}', f'vj.generate, Fast-dLLM dual cache, block '
                f'{last_block}', vj.DualCache(), last_block, scale.steps))
  return cases


def flops_per_step(model, policy, block_length: int, prompt, scale: Scale):
  """(analytic FLOPs per step of a whole decode of `prompt` and `scale.frames` frames, fraction
  of key blocks visited): `vidlada_jax.flops`."""
  from vidlada_jax import flops  # pylint: disable=g-import-not-at-top
  from vidlada_jax.sampling import SamplerConfig  # pylint: disable=g-import-not-at-top

  config = SamplerConfig(gen_length=scale.gen_length, steps=scale.steps,
                         block_length=block_length, stop_ids=())
  num_visual = scale.frames * model.config.tokens_per_frame
  return flops.decode_flops_per_step(model, policy, len(prompt) - 1 + num_visual, num_visual,
                                     config)


def add_flop_ratios(rows: list[dict]) -> None:
  """Each row's `flop_ratio`: the first row's (plain decoding's) FLOPs per step over its own."""
  for row in rows:
    row['flop_ratio'] = rows[0]['flops_per_step'] / row['flops_per_step']


def jax_rows(model, prompt, pixels, scale: Scale, repeats: int) -> tuple[list[dict], Callable]:
  """The JAX rows, and the (compiled) call of MARS-Cache's default at the first block length."""
  import jax  # pylint: disable=g-import-not-at-top

  import vidlada_jax as vj  # pylint: disable=g-import-not-at-top
  from vidlada_jax import benchmarking  # pylint: disable=g-import-not-at-top

  first_block = scale.block_lengths[0]
  cases = decode_cases(scale)

  def call(policy, block_length, steps):
    return lambda: vj.generate(model, prompt[None], pixels, gen_length=scale.gen_length,
                               steps=steps, block_length=block_length, stop_ids=(),
                               cache=policy).tokens

  calls = {name: call(policy, block, steps) for name, _, policy, block, steps in cases}
  report = lambda name, t: print(f'  {name}: {t.median_s:.2f}s', file=sys.stderr, flush=True)
  timings = benchmarking.time_interleaved(calls, repeats, on_done=report)
  peak = benchmarking.peak_device_bytes()
  rows = []
  for name, description, policy, block, steps in cases:
    timing = timings[name]
    decode = timing.median_s * scale.steps / steps
    step_flops, visited = flops_per_step(model, policy, block, prompt, scale)
    rows.append(dict(name=name, description=description, framework='jax', block_length=block,
                     decode_s=decode, tokens_per_s=scale.gen_length / decode,
                     first_call_s=timing.first_call_s, compile_s=timing.compile_s,
                     calls_s=timing.seconds, timed_steps=steps, flops_per_step=step_flops,
                     blocks_visited=visited, peak_bytes=peak,
                     device=jax.devices()[0].device_kind))
  add_flop_ratios(rows)
  return rows, calls[f'mars_block{first_block}']


def run(scale: Scale, repeats: int, torch_rows: bool, kernels: bool, profile: bool = True,
        on_part: Callable[[dict], None] = lambda result: None) -> dict:
  """The benchmark's result; `on_part(result)` hears of it after each part."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import vidlada_jax as vj  # pylint: disable=g-import-not-at-top
  from vidlada_jax import benchmarking  # pylint: disable=g-import-not-at-top

  config = vj.model_config(scale.architecture, dtype=scale.dtype, param_dtype=scale.dtype)
  prompt = prompt_of(config, scale)
  num_visual = scale.frames * config.tokens_per_frame
  result = dict(scale=dataclasses.asdict(scale), repeats=repeats, backend=jax.default_backend(),
                device=jax.devices()[0].device_kind, prompt_tokens=len(prompt) - 1 + num_visual,
                visual_tokens=num_visual, rows=[])
  print(f'{scale.architecture}: {len(prompt) - 1} text + {num_visual} visual tokens, '
        f'{scale.gen_length} to decode', file=sys.stderr, flush=True)
  if torch_rows:  # first, and freed before JAX allocates: both would not fit at once
    try:
      result['rows'].append(reference_rows(config, prompt, num_visual, scale, repeats))
    except ImportError as e:
      result['torch_error'] = f'PyTorch reference skipped: {e}'
    on_part(result)
  started = time.perf_counter()
  model = vj.init_model(config, seed=0)
  jax.block_until_ready(nnx.state(model))
  result['jax_build_s'] = time.perf_counter() - started
  size = config.vision.image_size
  pixels = jax.random.uniform(jax.random.key(1), (1, scale.frames, size, size, 3), minval=-1.0,
                              maxval=1.0)
  rows, mars_call = jax_rows(model, prompt, pixels, scale, repeats)
  result['rows'] += rows
  plain = next(row for row in result['rows'] if row['name'] == 'plain')
  for row in result['rows']:
    row['speedup_vs_plain'] = plain['decode_s'] / row['decode_s']
    if 'flop_ratio' in row:  # the JAX rows: how much of the FLOP saving the clock shows
      row['speedup_over_flop_ratio'] = row['speedup_vs_plain'] / row['flop_ratio']
  reference = next((row for row in result['rows'] if row['name'] == 'torch_reference'), None)
  if reference:
    for row in result['rows']:
      row['speedup_vs_torch'] = reference['decode_s'] / row['decode_s']
  on_part(result)
  if kernels:
    from vidlada_jax.attention_backends import kernel_timing  # pylint: disable=g-import-not-at-top

    result['kernels'] = kernel_timing.run(scale.frames, scale.kernel_iters)
    on_part(result)
  if profile:  # last: a device tracer that fails cannot cost the figures before it
    try:
      result['profile'] = benchmarking.profile_ops(mars_call).as_dict()
    except Exception as e:  # pylint: disable=broad-except
      result['profile_error'] = f'{type(e).__name__}: {e}'  # e.g. no profiler on this machine
    on_part(result)
  return result


LOWERING_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # what jax.export lowers for


def dry_run(scale: Scale, platform: str | None = None) -> dict:
  """What a run would set up, without running it, for checking a run from any machine before an
  accelerator's time is spent on it: each JAX decode program lowered for `platform` (default:
  this machine's) from an abstract model (no weights are created), its analytic FLOPs, and the
  PyTorch reference model built on torch's meta device."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import vidlada_jax as vj  # pylint: disable=g-import-not-at-top
  from vidlada_jax.attention_backends import _gpu_api  # pylint: disable=g-import-not-at-top
  from vidlada_jax.nn.attention import (  # pylint: disable=g-import-not-at-top
      current_platform, resolve_auto)
  from vidlada_jax.vidlada import VidLaDA  # pylint: disable=g-import-not-at-top

  here = current_platform()
  platform = platform or here
  attention = resolve_auto(platform, scale.dtype)
  if platform == 'cuda' and here != 'cuda':
    if not _gpu_api.can_lower_for_cuda():
      raise ValueError('this jaxlib cannot lower the Pallas GPU kernels for CUDA without a GPU: '
                       'run --dry-run without a platform to check the programs for this one')
    attention = 'pallas_gpu'  # cuDNN's attention lowers only where cuDNN is installed
  config = vj.model_config(scale.architecture, dtype=scale.dtype, param_dtype=scale.dtype,
                           attention=attention,
                           vision_attention=resolve_auto(platform, scale.dtype, tower='vision'))
  model = nnx.eval_shape(lambda: VidLaDA(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  prompt = prompt_of(config, scale)
  size = config.vision.image_size
  pixels = jax.ShapeDtypeStruct((1, scale.frames, size, size, 3), jax.numpy.float32)
  lm_parameters = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model.lm)))
  result = dict(scale=dataclasses.asdict(scale), platform=platform, attention=attention,
                prompt_tokens=len(prompt) - 1 + scale.frames * config.tokens_per_frame,
                lm_parameters=lm_parameters, rows=[])
  for name, description, policy, block, steps in decode_cases(scale):
    def decode(state, pixels, policy=policy, block=block, steps=steps):
      return vj.generate(nnx.merge(graphdef, state), prompt[None], pixels,
                         gen_length=scale.gen_length, steps=steps, block_length=block,
                         stop_ids=(), cache=policy).tokens

    started = time.perf_counter()
    exported = jax.export.export(jax.jit(decode), platforms=[platform],
                                 disabled_checks=_gpu_api.export_safety_exemptions())(state, pixels)
    step_flops, visited = flops_per_step(model, policy, block, prompt, scale)
    result['rows'].append(dict(name=name, description=description,
                               lowered_s=time.perf_counter() - started,
                               output_shape=list(exported.out_avals[0].shape),
                               flops_per_step=step_flops, blocks_visited=visited))
  add_flop_ratios(result['rows'])
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import LlamaForCausalLM  # pylint: disable=g-import-not-at-top

    with torch.device('meta'):
      reference = LlamaForCausalLM(llama_config(config, scale.dtype))
    result['torch_parameters'] = sum(p.numel() for p in reference.parameters())
  except ImportError as e:
    result['torch_error'] = f'PyTorch reference not checked: {e}'
  return result


def print_dry_run(result: dict) -> None:
  s = result['scale']
  print(f'{s["architecture"]} ({s["dtype"]}), lowered for {result["platform"]} with '
        f'{result["attention"]} attention: {result["prompt_tokens"]} prompt tokens, '
        f'{s["gen_length"]} tokens in {s["steps"]} steps; nothing run')
  print(f'{"decoding":<46}{"lowered s":>10}{"GFLOP/step":>11}{"FLOP ratio":>11}{"blocks":>7}')
  for row in result['rows']:
    print(f'{row["description"]:<46}{row["lowered_s"]:>10.1f}{row["flops_per_step"] / 1e9:>11.1f}'
          f'{row["flop_ratio"]:>11.1f}{row["blocks_visited"]:>7.2f}')
  torch_count = result.get('torch_parameters')
  print(f'LM parameters: {result["lm_parameters"]:,} here, '
        + (f'{torch_count:,} in the PyTorch reference' if torch_count is not None
           else result['torch_error']))


def headline(result: dict) -> dict:
  """The figures the goals are stated in."""
  rows = {row['name']: row for row in result['rows']}
  plain, mars = rows['plain'], rows[f'mars_block{result["scale"]["block_lengths"][0]}']
  out = dict(plain_tokens_per_s=plain['tokens_per_s'], mars_tokens_per_s=mars['tokens_per_s'],
             mars_speedup_vs_plain=mars['speedup_vs_plain'], mars_flop_ratio=mars['flop_ratio'],
             mars_speedup_over_flop_ratio=mars['speedup_over_flop_ratio'])
  if 'torch_reference' in rows:
    out['plain_speedup_vs_torch'] = plain['speedup_vs_torch']
    out['torch_tokens_per_s'] = rows['torch_reference']['tokens_per_s']
  return out


def print_table(result: dict) -> None:
  s = result['scale']
  print(f'{s["architecture"]} ({s["dtype"]}) on {result["device"]}: {result["prompt_tokens"]} '
        f'prompt tokens ({result["visual_tokens"]} visual, {s["frames"]} frames), '
        f'{s["gen_length"]} tokens in {s["steps"]} steps; median of {result["repeats"]} calls')
  print(f'{"decoding":<46}{"tokens/s":>9}{"vs plain":>9}{"vs torch":>9}{"FLOP ratio":>11}'
        f'{"/ratio":>7}{"compile s":>10}{"peak GB":>8}')
  for row in result['rows']:
    number = lambda key, fmt: '-' if row.get(key) is None else format(row[key], fmt)
    peak = '-' if row.get('peak_bytes') is None else f'{row["peak_bytes"] / 1e9:.1f}'
    print(f'{row["description"]:<46}{row["tokens_per_s"]:>9.2f}'
          f'{number("speedup_vs_plain", ".2f"):>8}x{number("speedup_vs_torch", ".2f"):>8}x'
          f'{number("flop_ratio", ".1f"):>11}{number("speedup_over_flop_ratio", ".2f"):>7}'
          f'{number("compile_s", ".1f"):>10}{peak:>8}')
  print(f'(plain decoding and the PyTorch loop timed over {s["timed_steps"]} steps and scaled to '
        f'{s["steps"]}; peak memory per framework)')
  if result.get('torch_error'):
    print(result['torch_error'])
  for row in result.get('kernels', []):
    if 'error' in row:
      print(f'kernel {row["implementation"]:<16} failed: {row["error"]}')
    else:
      print(f'kernel {row["implementation"]:<16}{row["ms"]:>10.2f} ms  visited '
            f'{row["visited"]:.3f}  ({row["q_len"]} queries x {row["k_len"]} keys)')
  if 'profile' in result:
    from vidlada_jax.benchmarking import print_profile  # pylint: disable=g-import-not-at-top

    print_profile(result['profile'], 'one MARS-Cache decode')
  if result.get('profile_error'):
    print(f'profile failed: {result["profile_error"]}')


def write_json(path: str, result: dict) -> None:
  """`result` as JSON at `path`, whole or not at all: written beside it, then renamed over it
  (as `vidlada_jax.video.write_video` writes a video)."""
  partial = Path(f'{path}.partial')
  try:
    partial.write_text(json.dumps(result, indent=1))
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vidlada_jax.launch.bench_device',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--scale', choices=tuple(SCALES), default='8b')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls per row (median; 3)')
  parser.add_argument('--no-torch', dest='torch', action='store_false',
                      help='leave out the PyTorch reference loop')
  parser.add_argument('--no-kernels', dest='kernels', action='store_false',
                      help='leave out the attention kernel rows')
  parser.add_argument('--no-profile', dest='profile', action='store_false',
                      help='leave out the profiled MARS-Cache decode')
  parser.add_argument('--json', action='store_true', help='print one JSON object (table on stderr)')
  parser.add_argument('--out', help='also write the JSON object to this file, after each part')
  parser.add_argument('--dry-run', nargs='?', const='', metavar='PLATFORM',
                      help='run nothing: lower every decode program for PLATFORM (default: this '
                           "machine's; 'cuda' works from a CPU) and build the PyTorch model on "
                           "torch's meta device")
  args = parser.parse_args(argv)
  if args.dry_run not in (None, '', *LOWERING_PLATFORMS):
    parser.error(f'--dry-run takes one of {", ".join(LOWERING_PLATFORMS)}, or none for this '
                 f"machine's; got {args.dry_run!r}")
  if args.dry_run is not None:
    result = dry_run(SCALES[args.scale], args.dry_run or None)
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
      print_dry_run(result)
    if args.json:
      print(json.dumps(result))
    return 0
  if args.repeats < 1:
    parser.error('--repeats must be positive')
  if args.out and os.path.isdir(args.out):
    parser.error(f'--out {args.out} is a directory; name a file')
  # Allocate as needed: PyTorch runs in this process too, and peak memory should mean the peak.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  save = (lambda result: write_json(args.out, result)) if args.out else (lambda result: None)
  result = run(SCALES[args.scale], args.repeats, args.torch, args.kernels, args.profile,
               on_part=save)
  result['headline'] = headline(result)
  save(result)
  with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
    print_table(result)  # with --json, on stderr: stdout holds the JSON object alone
  if args.json:
    print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
