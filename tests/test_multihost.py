"""Multi-host conversion and restore: two JAX processes on localhost (gloo CPU collectives)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

import vidlada_jax as vj
from tests import torch_reference as ref


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_convert_and_restore_their_own_shards(tmp_path):
  torch_model = ref.TinyVidLaDA(seed=12)
  source = ref.write_checkpoint(tmp_path / 'hf', torch_model.state_dict(), torch_model.config())
  port = str(free_port())
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  root = Path(__file__).parent.parent
  workers = [subprocess.Popen(
      [sys.executable, '-m', 'tests.multihost_worker', str(i), port, str(source), str(tmp_path)],
      cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]

  seen = [json.loads((tmp_path / f'process_{i}.json').read_text()) for i in range(2)]
  # mesh data=2, fsdp=2, tensor=2: gate_proj [2, 64, 128] split 2-way on fsdp and tensor
  for process in seen:
    assert process['global_shape'] == [2, 64, 128]
    assert process['local_shards'] == [[2, 32, 64]] * 4
  # Each process wrote its own shards: orbax records the arrays written by every process.
  written_by = {p.name for p in (tmp_path / 'jax' / 'state').rglob('array_metadatas/process_*')}
  assert written_by == {'process_0', 'process_1'}, written_by

  ids = np.array([[126080, 7, -200, 8, 9, 126336], [126080, 5, 6, -200, 126336, 126336]], np.int32)
  pixels = np.random.default_rng(5).uniform(-1, 1, size=(2, 1, 384, 384, 3)).astype(np.float32)
  expected = np.asarray(vj.from_pretrained(source, dtype='float32', progress=False)(ids, pixels))
  for process in seen:
    np.testing.assert_allclose(process['logits_row0'], expected[0, -1, :8], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(process['logits_sum'], np.sum(expected, dtype=np.float64), rtol=1e-5)
