"""One process of a 2-process JAX job on localhost (run by test_multihost.py).

    python -m tests.multihost_worker PROCESS_ID PORT HF_DIR WORK_DIR

Converts HF_DIR to a vidlada-jax checkpoint sharded over all 8 devices of the job (4 per process),
restores it onto a differently shaped mesh, runs the model, and writes what it saw to
WORK_DIR/process_<id>.json.
"""

import json
import os
import sys

process_id, port, hf_dir, work_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402

from vidlada_jax import sharding  # noqa: E402

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_default_matmul_precision', 'highest')
# Also turns off the tests' compilation cache, which gloo programs do not survive.
sharding.initialize_distributed(f'localhost:{port}', num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import vidlada_jax as vj  # noqa: E402
from vidlada_jax.convert import hf_to_jax  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4
mesh, rules = hf_to_jax.parse_mesh('fsdp=8,tensor=1')
hf_to_jax.convert(hf_dir, os.path.join(work_dir, 'jax'), mesh=mesh, rules=rules, progress=False)

mesh, rules = sharding.mesh_from_spec('fsdp_tp:data=2,tensor=2')
model = vj.from_pretrained(os.path.join(work_dir, 'jax'), dtype='float32', mesh=mesh, rules=rules)
kernel = model.lm.layers.mlp.gate_proj.kernel[...]
ids = np.array([[126080, 7, -200, 8, 9, 126336], [126080, 5, 6, -200, 126336, 126336]], np.int32)
pixels = np.random.default_rng(5).uniform(-1, 1, size=(2, 1, 384, 384, 3)).astype(np.float32)
logits = multihost_utils.process_allgather(model(ids, pixels), tiled=True)
with open(os.path.join(work_dir, f'process_{process_id}.json'), 'w') as f:
  json.dump(dict(
      local_shards=[list(s.data.shape) for s in kernel.addressable_shards],
      global_shape=list(kernel.shape),
      logits_sum=float(np.sum(logits, dtype=np.float64)),
      logits_row0=np.asarray(logits[0, -1, :8], np.float64).tolist()), f)
jax.distributed.shutdown()
