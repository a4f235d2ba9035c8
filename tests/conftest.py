"""Test session setup: 8 simulated CPU devices (for the mesh tests) and float32-exact matmuls."""

import os
import tempfile

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=8'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# XLA's persistent compilation cache, shared by the test workers and the processes the tests
# launch: the launcher's training runs, the converters and the multi-process tests compile the
# same tiny programs again and again. Reading a program back is exact (the same executable).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'vidlada_jax_tests_compilation_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')


def pytest_addoption(parser):
  parser.addoption('--run-slow', action='store_true', help='also run tests marked slow')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: large or long cases (8B shapes, benchmarks); opt-in')


# The longest files first, so that with several workers (`-n 2 --dist loadfile`, as `make test`
# runs) none of them is left to run alone at the end.
LONGEST_FIRST = ('test_training.py', 'test_train_multiprocess.py', 'test_mars.py',
                 'test_kernel_partitioning.py', 'test_lmms_eval.py', 'test_conversion.py')


def pytest_collection_modifyitems(config, items):
  rank = lambda item: (LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
                       else len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: the order within a file is kept
  if config.getoption('--run-slow'):
    return
  skip = pytest.mark.skip(reason='slow: run with --run-slow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)
