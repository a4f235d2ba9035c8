"""The benchmarks' timing helpers and the efficiency figures read from them."""

import time

import pytest

from vidlada_jax import benchmarking
from vidlada_jax.launch.bench_mars import add_efficiency


def test_calls_are_interleaved_and_the_median_kept():
  order = []
  pauses = {'a': iter([0.0, 0.3, 0.1, 0.2]), 'b': iter([0.0, 0.0, 0.0, 0.0])}

  def call(name):
    def run():
      order.append(name)
      time.sleep(next(pauses[name]))
      return name
    return run

  timings = benchmarking.time_interleaved({'a': call('a'), 'b': call('b')}, repeats=3)
  assert order == ['a', 'b'] * 4  # the compiling calls, then three rounds taking turns
  assert timings['a'].output == 'a' and len(timings['a'].seconds) == 3
  assert 0.2 <= timings['a'].median_s < 0.3  # the middle of 0.3, 0.1 and 0.2 s
  with pytest.raises(ValueError, match='repeats'):
    benchmarking.time_interleaved({'a': call('a')}, repeats=0)


def test_matmul_throughput_counts_two_flops_per_multiply_add(monkeypatch):
  # Every timed call takes 1 s: the throughput is then the FLOPs of the products in one call.
  monkeypatch.setattr(benchmarking, 'timed_call', lambda fn: (1.0, fn()))
  rows, inner, cols = 1024, 512, 2048
  count = int(1e10 // (2 * rows * inner * cols))
  assert benchmarking.matmul_flops_per_s(rows, inner, cols, repeats=1) == (
      2 * rows * inner * cols * count)


def test_efficiency_figures_by_hand():
  rows = {'none': dict(flops_per_step=400e9, seconds=128.0, speedup=1.0, flop_ratio=1.0),
          'mars': dict(flops_per_step=25e9, seconds=10.0, speedup=12.8, flop_ratio=16.0)}
  add_efficiency(rows, steps=64, matmul_flops_per_s=250e9)
  assert rows['none']['flops_per_s'] == 200e9  # 400 GFLOP x 64 steps / 128 s
  assert rows['none']['fraction_of_matmul'] == 0.8
  assert rows['mars']['flops_per_s'] == 160e9  # 25 GFLOP x 64 / 10 s
  assert rows['mars']['fraction_of_matmul'] == 0.64
  assert rows['mars']['speedup_over_flop_ratio'] == 0.8
