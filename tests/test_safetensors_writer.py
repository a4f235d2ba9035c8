"""The streaming safetensors writer, read back with the safetensors library itself."""

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from vidlada_jax.hf.safetensors_io import ShardedSafetensorsWriter, TensorSpec, plan_shards


def spec(name, shape, dtype='F32'):
  return TensorSpec(name, shape, dtype)


def test_single_file_written_out_of_order(tmp_path):
  rng = np.random.default_rng(0)
  values = {'b': rng.normal(size=(3, 5)).astype(np.float32),
            'a': rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
            'c': np.arange(4, dtype=np.int64)}
  specs = [spec('a', (7,), 'BF16'), spec('b', (3, 5)), spec('c', (4,), 'I64')]
  writer = ShardedSafetensorsWriter(tmp_path, specs, max_shard_bytes=10**9)
  for name in ('c', 'b', 'a'):
    writer.write(name, values[name])
  writer.close()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['model.safetensors']
  with safe_open(str(tmp_path / 'model.safetensors'), 'np') as f:
    np.testing.assert_array_equal(f.get_tensor('b'), values['b'])
    np.testing.assert_array_equal(f.get_tensor('c'), values['c'])
  with safe_open(str(tmp_path / 'model.safetensors'), 'pt') as f:
    assert f.get_tensor('a').float().numpy().tolist() == values['a'].astype(np.float32).tolist()


def test_shards_and_index(tmp_path):
  specs = [spec(f't{i}', (10,)) for i in range(5)]  # 40 bytes each
  assert [len(s) for s in plan_shards(specs, 100)] == [2, 2, 1]
  assert [len(s) for s in plan_shards([spec('big', (100,))] + specs[:1], 100)] == [1, 1]
  writer = ShardedSafetensorsWriter(tmp_path, specs, max_shard_bytes=100)
  for i, s in enumerate(specs):
    writer.write(s.name, np.full(10, i, np.float32))
  writer.close()
  index = json.loads((tmp_path / 'model.safetensors.index.json').read_text())
  assert index['metadata']['total_size'] == 200
  assert index['weight_map']['t4'] == 'model-00003-of-00003.safetensors'
  with safe_open(str(tmp_path / 'model-00002-of-00003.safetensors'), 'np') as f:
    assert sorted(f.keys()) == ['t2', 't3']
    assert f.get_tensor('t3').tolist() == [3.0] * 10


def test_wrong_or_missing_tensors_are_errors(tmp_path):
  writer = ShardedSafetensorsWriter(tmp_path, [spec('a', (2,)), spec('b', (2,))], 10**6)
  with pytest.raises(ValueError, match=r'tensor a: got float64\[2\], planned F32\[2\]'):
    writer.write('a', np.zeros(2))
  writer.write('a', np.zeros(2, np.float32))
  with pytest.raises(ValueError, match=r"never written: \['b'\]"):
    writer.close()


def test_direct_reads_row_streamed_transposes_and_aligned_buffers(tmp_path):
  from vidlada_jax.hf import layouts
  from vidlada_jax.hf.safetensors_io import ALIGNMENT, SafetensorsCheckpoint, aligned_empty
  from vidlada_jax.loading import TensorReader

  rng = np.random.default_rng(1)
  weight = rng.normal(size=(300, 70)).astype(ml_dtypes.bfloat16)  # a Linear weight [out, in]
  bias = rng.normal(size=(300,)).astype(np.float32)
  writer = ShardedSafetensorsWriter(tmp_path, [spec('w', (300, 70), 'BF16'), spec('b', (300,))],
                                    max_shard_bytes=10**9)
  writer.write('w', weight)
  writer.write('b', bias)
  writer.close()
  with SafetensorsCheckpoint(tmp_path) as tensors:
    np.testing.assert_array_equal(tensors.read('b'), bias)
    part = np.empty((2, 70), ml_dtypes.bfloat16)
    tensors.read_into('w', part, first=70 * 5)  # rows 5 and 6
    assert part.view(np.uint16).tolist() == weight[5:7].view(np.uint16).tolist()
    with pytest.raises(ValueError, match='cannot read elements from 20930'):
      tensors.read_into('w', part, first=300 * 70 - 70)
    with pytest.raises(ValueError, match='cannot read'):
      tensors.read_into('w', np.empty((2, 70), np.float32))
    linear = layouts.TensorMap('kernel', 'w', layouts.Linear())
    reader = TensorReader(tensors)
    reader.SCRATCH_BYTES = 70 * 2 * 64  # 64-row blocks: the last one is short
    for dtype in (ml_dtypes.bfloat16, np.float32):
      out = aligned_empty((70, 300), dtype)
      assert out.ctypes.data % ALIGNMENT == 0 and out.flags.c_contiguous
      reader.read(linear, 'w', out)
      # The transpose of the stored weight, converted as numpy converts it, bit for bit.
      expected = np.asarray(weight.T, dtype)
      assert out.view(f'u{out.itemsize}').tolist() == expected.view(f'u{out.itemsize}').tolist()
      back = np.empty((300, 70), dtype)  # and back to the PyTorch layout
      layouts.Linear().to_torch_into(back, out)
      assert back.tolist() == np.asarray(weight, dtype).tolist()
  big = aligned_empty((1 << 20,), np.float32)  # a huge-page mapping
  assert big.ctypes.data % ALIGNMENT == 0 and big.flags.writeable
