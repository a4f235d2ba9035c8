"""Timing for the benchmarks: every figure a median of several calls, compared ones interleaved.

A first call of each function compiles it (and is reported apart); then `repeats` rounds call
every function once in turn, so that a slow drift of the machine (other work, clocks, caches)
lands on all of them alike rather than on whichever ran last.

`profile_ops` says where one call's device time went, op by op, from a `jax.profiler` trace.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

import jax


@dataclasses.dataclass
class Timing:
  first_call_s: float  # compilation and one run
  seconds: list[float]  # each timed call
  output: Any  # what the last call returned

  @property
  def median_s(self) -> float:
    return statistics.median(self.seconds)

  @property
  def compile_s(self) -> float:
    """The first call less a typical one: the compilation's share of it."""
    return max(self.first_call_s - self.median_s, 0.0)


def timed_call(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def time_interleaved(calls: Mapping[str, Callable[[], Any]], repeats: int = 3,
                     on_done: Callable[[str, Timing], None] | None = None
                     ) -> dict[str, Timing]:
  """Times each of `calls` (name -> zero-argument function) as above; `on_done` hears of each
  one as its last timed call ends."""
  if repeats < 1:
    raise ValueError(f'repeats must be positive, got {repeats}')
  timings = {}
  for name, fn in calls.items():
    first, out = timed_call(fn)
    timings[name] = Timing(first, [], out)
  for round_ in range(repeats):
    for name, fn in calls.items():
      seconds, timings[name].output = timed_call(fn)
      timings[name].seconds.append(seconds)
      if on_done and round_ == repeats - 1:
        on_done(name, timings[name])
  return timings


def matmul_flops_per_s(rows: int, inner: int, cols: int, dtype=jax.numpy.float32,
                       repeats: int = 5) -> float:
  """This device's throughput in one jitted [rows, inner] @ [inner, cols] product, FLOP/s: the
  ceiling a benchmark's achieved FLOP/s are read against, measured in the same run. Each timed
  call runs enough products for about 10 GFLOP; the median of `repeats` calls."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (rows, inner), dtype)
  b = jax.random.normal(keys[1], (inner, cols), dtype)
  product = jax.jit(jax.numpy.matmul)
  flops = 2 * rows * inner * cols
  count = max(1, int(1e10 // flops))
  timing = time_interleaved({'matmul': lambda: [product(a, b) for _ in range(count)]}, repeats)
  return flops * count / timing['matmul'].median_s


def peak_device_bytes(device: jax.Device | None = None) -> int | None:
  """The device's peak allocation so far, where its runtime reports one (GPUs, TPUs; not CPU)."""
  stats = (device or jax.devices()[0]).memory_stats()
  return None if not stats else stats.get('peak_bytes_in_use')


# Ops whose trace events span the ops of their bodies: counting them would count those twice.
CONTROL_FLOW = frozenset({'while', 'conditional', 'call'})


def op_kind(hlo_op: str) -> str:
  """An XLA op's name without its instance number: 'dynamic-slice_bitcast_fusion.17' ->
  'dynamic-slice_bitcast_fusion' (XLA names a fusion after the ops in it)."""
  return re.sub(r'\.\d+$', '', hlo_op)


def is_slice_read(kind: str) -> bool:
  """Whether ops of this kind copy a dynamically indexed slice out of a bigger array, as a layer
  scan's reads of its layer's stacked weights and cache are, where the compiler cannot let the
  consumer read the slice in place. XLA:CPU names them `dynamic-slice_..._fusion`, XLA:GPU
  `loop_dynamic_slice_fusion`; XLA:GPU's `dynamic-slice-fusion` (a GEMM or custom call reading
  its operand at an offset, `address_computation`) is the in-place read, and not one of them."""
  words = kind.replace('-', '_')
  if 'update' in words or words in ('dynamic_slice_fusion', 'address_computation',
                                    'dynamic_address_computation'):
    return False
  return re.search(r'(^|_)dynamic_slice(_|$)', words) is not None


@dataclasses.dataclass(frozen=True)
class OpProfile:
  """Device time of one call by op kind (`op_kind`), from its profiler trace."""
  seconds_by_kind: dict[str, float]
  calls_by_kind: dict[str, int]

  @property
  def seconds(self) -> float:
    return sum(self.seconds_by_kind.values())

  @property
  def slice_read_s(self) -> float:
    return sum(s for kind, s in self.seconds_by_kind.items() if is_slice_read(kind))

  def top(self, count: int = 10) -> list[tuple[str, float, int]]:
    """(kind, seconds, calls) of the `count` costliest kinds."""
    kinds = sorted(self.seconds_by_kind, key=self.seconds_by_kind.get, reverse=True)[:count]
    return [(kind, self.seconds_by_kind[kind], self.calls_by_kind[kind]) for kind in kinds]

  def as_dict(self, top: int = 10) -> dict:
    """A JSON-ready summary: `op_seconds`, `slice_read_s`, `slice_read_share`, `top_ops`."""
    return dict(op_seconds=self.seconds, slice_read_s=self.slice_read_s,
                slice_read_share=self.slice_read_s / self.seconds if self.seconds else 0.0,
                top_ops=[dict(op=kind, seconds=s, calls=n) for kind, s, n in self.top(top)])


def summarize_trace(events: Iterable[dict]) -> OpProfile:
  """An `OpProfile` of Chrome-trace events (a perfetto trace's `traceEvents`): the complete
  events on the accelerator where the trace has one (its host threads also log the ops they
  launch), named by the XLA op they ran (`hlo_op`) or else by themselves; without an accelerator,
  the host's events that name an XLA op (XLA:CPU runs them there)."""
  events = list(events)
  processes = {e['pid']: e['args']['name'] for e in events
               if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  devices = {pid for pid, name in processes.items() if name.startswith('/device:')}
  seconds, calls = collections.defaultdict(float), collections.Counter()
  for event in events:
    if event.get('ph') != 'X' or (devices and event.get('pid') not in devices):
      continue
    op = event.get('args', {}).get('hlo_op') or (event.get('name') if devices else None)
    if not op:
      continue
    kind = op_kind(op)
    if kind in CONTROL_FLOW:
      continue
    seconds[kind] += event['dur'] / 1e6  # microseconds
    calls[kind] += 1
  return OpProfile(dict(seconds), dict(calls))


def profile_ops(fn: Callable[[], Any]) -> OpProfile:
  """Runs `fn` once (compile it beforehand) under `jax.profiler` and sums its ops' device time."""
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      jax.block_until_ready(fn())
    # perfetto_trace.json.gz is the documented file; TensorBoard's HOST.trace.json.gz is alike.
    traces = (glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
              or glob.glob(os.path.join(log_dir, '**', '*.trace.json.gz'), recursive=True))
    if not traces:
      raise RuntimeError(f'jax.profiler wrote no perfetto trace under {log_dir}')
    with gzip.open(traces[0], 'rt') as f:
      trace = json.load(f)  # Chrome's trace format: an object with traceEvents, or the list
    profile = summarize_trace(trace['traceEvents'] if isinstance(trace, dict) else trace)
  if not profile.seconds_by_kind:
    raise RuntimeError('the profiler trace holds no XLA op events (is a device tracer, such as '
                       'CUPTI on a GPU, installed?)')
  return profile


def print_profile(summary: dict, what: str, count: int = 6) -> None:
  """Prints an `OpProfile.as_dict()` summary of one call of `what`."""
  print(f'{what}, profiled: {summary["op_seconds"]:.2f} s in XLA ops, of which '
        f'{summary["slice_read_s"]:.3f} s ({100 * summary["slice_read_share"]:.1f}%) copy a '
        "layer's slice out of stacked weights and cache; costliest ops:")
  for op in summary['top_ops'][:count]:
    print(f'  {op["op"]:<44}{op["seconds"]:>9.3f} s {op["calls"]:>7} calls')
