"""Sharded placement on 8 simulated CPU devices: same logits, parameters really split."""

import dataclasses
import jax
import numpy as np
import pytest
from flax import nnx

import vidlada_jax as vj
from tests import torch_reference as ref
from vidlada_jax import sharding
from vidlada_jax.params import abstract_model, flat_params

RULE_SETS = ['fsdp', 'fsdp_tp:tensor=2', 'fsdp_tp:data=2,tensor=2']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  torch_model = ref.TinyVidLaDA(seed=4)
  return ref.write_checkpoint(
      tmp_path_factory.mktemp('combined'), torch_model.state_dict(), torch_model.config())


@pytest.fixture(scope='module')
def inputs():
  rng = np.random.default_rng(3)
  ids = np.array([[126080, 7, -200, 8, 9, 126336], [126080, 5, 6, -200, 126336, 126336]], np.int32)
  pixels = rng.uniform(-1, 1, size=(2, 1, 384, 384, 3)).astype(np.float32)
  return ids, pixels


@pytest.fixture(scope='module')
def single_device_logits(checkpoint, inputs):
  return np.asarray(vj.from_pretrained(checkpoint, dtype='float32', progress=False)(*inputs))


def assert_really_split(model, mesh, rules):
  """Every parameter's shards have the shape its logical axes and the mesh imply."""
  split = 0
  for path, variable in flat_params(nnx.state(model)).items():
    array = variable.get_value()
    spec = sharding.partition_spec(sharding.logical_axes(variable), rules)
    assert array.sharding.spec == spec, path
    expected = list(array.shape)
    for dim, entry in enumerate(spec):
      for axis in (entry if isinstance(entry, tuple) else (entry,) if entry else ()):
        expected[dim] //= mesh.shape[axis]
    for shard in array.addressable_shards:
      assert shard.data.shape == tuple(expected), path
    split += tuple(expected) != array.shape
  assert split > 0.5 * len(flat_params(nnx.state(model)))


@pytest.mark.parametrize('mesh_name', RULE_SETS)
def test_loaded_sharded_equals_single_device(checkpoint, inputs, single_device_logits, mesh_name):
  assert jax.device_count() == 8
  mesh, rules = sharding.mesh_from_spec(mesh_name)
  model = vj.from_pretrained(checkpoint, dtype='float32', mesh=mesh, rules=rules, progress=False)
  assert_really_split(model, mesh, rules)
  logits = np.asarray(model(*inputs))
  error = ref.max_relative_error(logits, single_device_logits)
  print(f'{mesh_name}: max relative error vs single device {error:.1e}')
  assert error < 1e-5


@pytest.mark.parametrize('mesh_name', RULE_SETS[:2])
def test_initialised_directly_sharded(inputs, mesh_name):
  config = vj.model_config('tiny')
  mesh, rules = sharding.mesh_from_spec(mesh_name)
  model = vj.init_model(config, seed=0, mesh=mesh, rules=rules)
  assert_really_split(model, mesh, rules)
  reference = vj.init_model(config, seed=0)
  np.testing.assert_allclose(np.asarray(model(*inputs)), np.asarray(reference(*inputs)),
                             rtol=1e-5, atol=1e-5)


def test_rules_must_cover_every_logical_axis():
  with pytest.raises(ValueError, match="logical axis 'mlp' has no rule"):
    sharding.partition_spec(('embed', 'mlp'), (('embed', 'fsdp'),))


def test_indivisible_dimension_is_named():
  mesh, rules = sharding.mesh_from_spec('fsdp')
  config = vj.ModelConfig(
      lm=dataclasses.replace(vj.config.TINY_LM, vocab_size=1000, hidden_size=36, num_layers=1,
                             num_heads=4, num_kv_heads=4, intermediate_size=64),
      vision=None)
  _, state = abstract_model(config)
  with pytest.raises(ValueError,
                     match=r'lm/.* dimension \d \(size 36\) does not divide over mesh axes fsdp'):
    sharding.param_shardings(state, mesh, rules)


def test_mesh_shape_errors():
  with pytest.raises(ValueError, match='needs 6 devices'):
    sharding.make_mesh(dict(data=1, fsdp=3, tensor=2))
  with pytest.raises(ValueError, match='unknown mesh axis'):
    sharding.mesh_from_spec('fsdp:pipeline=2')


def test_flax_tooling_sees_the_partitioning():
  """Flax's own `get_partition_spec`, under flax's logical-axis rules, gives the same shardings
  as `vidlada_jax.sharding` for every parameter (stacked layers included)."""
  from flax import linen

  _, state = abstract_model(vj.model_config('tiny'))
  rules = sharding.RULE_SETS['fsdp_tp']
  with linen.logical_axis_rules(rules):
    flax_specs = flat_params(nnx.get_partition_spec(state))
  ours = flat_params(state)
  assert flax_specs.keys() == ours.keys()
  stacked = 0
  for path, variable in ours.items():
    expected = sharding.partition_spec(sharding.logical_axes(variable), rules)
    assert tuple(flax_specs[path].get_value()) == tuple(expected), path
    stacked += sharding.logical_axes(variable)[:1] == ('layers',)
  assert stacked > 10
