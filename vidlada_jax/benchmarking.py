"""Timing for the benchmarks: every figure a median of several calls, compared ones interleaved.

A first call of each function compiles it (and is reported apart); then `repeats` rounds call
every function once in turn, so that a slow drift of the machine (other work, clocks, caches)
lands on all of them alike rather than on whichever ran last.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Mapping

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
