"""The benchmarks' timing helpers and the efficiency figures read from them."""

import time

import jax
import jax.numpy as jnp
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


def test_slice_reads_are_told_from_in_place_reads():
  for copying in ('dynamic-slice_bitcast_fusion', 'wrapped_dynamic-slice', 'dynamic-slice',
                  'loop_dynamic_slice_fusion'):
    assert benchmarking.is_slice_read(copying), copying
  for other in ('bitcast_dynamic-update-slice_fusion', 'loop_dynamic_update_slice_fusion',
                'ynn_fusion', 'slice_bitcast_fusion', 'dynamic-slice-fusion',
                'address_computation', 'dynamic_address_computation', 'copy_bitcast_fusion'):
    assert not benchmarking.is_slice_read(other), other
  assert benchmarking.op_kind('dynamic-slice_bitcast_fusion.17') == 'dynamic-slice_bitcast_fusion'
  assert benchmarking.op_kind('ynn_fusion') == 'ynn_fusion'


def test_trace_summary_counts_device_ops_once():
  op = lambda pid, name, dur: dict(ph='X', pid=pid, name=name, dur=dur, args=dict(hlo_op=name))
  host_and_gpu = [
      dict(ph='M', pid=1, name='process_name', args=dict(name='/host:CPU')),
      dict(ph='M', pid=2, name='process_name', args=dict(name='/device:GPU:0')),
      op(1, 'gemm_fusion.3', 900.0),  # the host thread that launched it: not device time
      op(2, 'gemm_fusion.3', 3000.0), op(2, 'gemm_fusion.4', 1000.0),
      op(2, 'loop_dynamic_slice_fusion.1', 1000.0),
      dict(ph='X', pid=2, name='MemcpyD2D', dur=500.0, args={}),  # no HLO op: its own name
      dict(ph='i', pid=2, name='marker', args=dict(hlo_op='copy.1')),  # not a complete event
  ]
  profile = benchmarking.summarize_trace(host_and_gpu)
  assert profile.seconds_by_kind == {'gemm_fusion': 0.004, 'loop_dynamic_slice_fusion': 0.001,
                                     'MemcpyD2D': 0.0005}
  assert profile.calls_by_kind == {'gemm_fusion': 2, 'loop_dynamic_slice_fusion': 1,
                                   'MemcpyD2D': 1}
  assert profile.as_dict()['slice_read_share'] == pytest.approx(0.001 / 0.0055)
  cpu_only = [dict(ph='M', pid=1, name='process_name', args=dict(name='/host:CPU')),
              op(1, 'while.8', 5000.0),  # spans the ops of its body, which are logged too
              op(1, 'ynn_fusion.2', 2000.0), op(1, 'dynamic-slice_bitcast_fusion.5', 500.0),
              dict(ph='X', pid=1, name='$sampling.py:398 generate', dur=9000.0)]  # Python
  profile = benchmarking.summarize_trace(cpu_only)
  assert profile.seconds == pytest.approx(0.0025) and profile.slice_read_s == 0.0005
  assert profile.top(1) == [('ynn_fusion', 0.002, 1)]


def test_profile_of_a_layer_scan_finds_its_slice_reads():
  layers = 6
  weights, x = jnp.ones((layers, 256, 256)), jnp.ones((32, 256))
  scanned = jax.jit(
      lambda w, x: jax.lax.scan(lambda h, layer: (jnp.tanh(h @ layer), None), x, w)[0])
  one_layer, first = jax.jit(lambda w, x: jnp.tanh(x @ w)), weights[0]
  jax.block_until_ready((scanned(weights, x), one_layer(first, x)))  # compiled beforehand
  profile = benchmarking.profile_ops(lambda: scanned(weights, x))
  reads = {kind: n for kind, n in profile.calls_by_kind.items()
           if benchmarking.is_slice_read(kind)}
  assert sum(reads.values()) == layers, profile.calls_by_kind  # XLA:CPU copies each layer's slice
  assert 0 < profile.slice_read_s < profile.seconds
  single = benchmarking.profile_ops(lambda: one_layer(first, x))
  assert single.seconds > 0 and single.slice_read_s == 0


def test_a_trace_without_ops_is_an_error(monkeypatch):
  monkeypatch.setattr(benchmarking, 'summarize_trace',
                      lambda events: benchmarking.OpProfile({}, {}))
  with pytest.raises(RuntimeError, match='no XLA op events'):
    benchmarking.profile_ops(lambda: jnp.ones(3) + 1)
