"""The orbax adapter: incremental saves, partial and resharded loads, metadata."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vidlada_jax import orbax_io, sharding


def test_nest_and_flatten_are_inverse():
  flat = {'lm/layers/q/kernel': 1, 'lm/norm/weight': 2, 'image_newline': 3}
  assert orbax_io.nest(flat) == {'lm': {'layers': {'q': {'kernel': 1}}, 'norm': {'weight': 2}},
                                 'image_newline': 3}
  assert orbax_io.flatten(orbax_io.nest(flat)) == flat


def test_incremental_save_then_partial_resharded_load(tmp_path):
  mesh = sharding.make_mesh(dict(fsdp=8))
  big = jax.device_put(jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16).astype(jnp.bfloat16),
                       NamedSharding(mesh, P('fsdp', None)))
  writer = orbax_io.IncrementalSave(tmp_path / 'ckpt')
  writer.add({'lm/big': big})
  assert not orbax_io.is_checkpoint(tmp_path / 'ckpt')  # nothing appears before finalize
  writer.add({'lm/small': jnp.ones(3), 'host': np.arange(5, dtype=np.int64)})
  writer.finalize()
  assert orbax_io.is_checkpoint(tmp_path / 'ckpt')

  metadata = orbax_io.array_metadata(tmp_path / 'ckpt')
  assert metadata['lm/big'] == ((64, 16), np.dtype(ml_dtypes.bfloat16))
  assert metadata['host'] == ((5,), np.dtype(np.int64))

  other = sharding.make_mesh(dict(data=2, tensor=4))
  target = NamedSharding(other, P('tensor', 'data'))
  restored = orbax_io.load(tmp_path / 'ckpt', {
      'lm/big': jax.ShapeDtypeStruct((64, 16), jnp.float32, sharding=target)})
  assert set(restored) == {'lm/big'}  # only what was asked for is read
  assert restored['lm/big'].dtype == jnp.float32 and restored['lm/big'].sharding == target
  np.testing.assert_array_equal(restored['lm/big'], np.asarray(big, np.float32))

  host = orbax_io.load(tmp_path / 'ckpt', {'host': np.empty(5, np.int64)})['host']
  assert isinstance(host, np.ndarray) and host.tolist() == [0, 1, 2, 3, 4]


def test_duplicate_keys_are_refused(tmp_path):
  writer = orbax_io.IncrementalSave(tmp_path / 'ckpt')
  writer.add({'a': jnp.ones(2)})
  with pytest.raises(ValueError, match=r"\['a'\] already written"):
    writer.add({'a': jnp.zeros(2)})


def test_load_in_batches_groups_consecutive_leaves_up_to_the_limit(tmp_path, monkeypatch):
  values = {'a': np.arange(10, dtype=np.int32), 'b': np.arange(10, 20, dtype=np.int32),
            'c': np.arange(25, dtype=np.int32), 'd': np.arange(2, dtype=np.int32)}
  writer = orbax_io.IncrementalSave(tmp_path / 'ckpt')
  writer.add(values)
  writer.finalize()
  calls = []
  load = orbax_io.load
  monkeypatch.setattr(orbax_io, 'load', lambda path, abstract: calls.append(list(abstract))
                      or load(path, abstract))
  abstract = {key: np.empty(v.shape, v.dtype) for key, v in values.items()}
  got = list(orbax_io.load_in_batches(tmp_path / 'ckpt', abstract, batch_bytes=80))
  # 40 + 40 bytes fill a batch; the 100-byte leaf goes alone; the last leaf ends the run.
  assert calls == [['a', 'b'], ['c'], ['d']]
  assert [key for key, _ in got] == list(values)
  for key, value in got:
    np.testing.assert_array_equal(value, values[key])
