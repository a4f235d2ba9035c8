"""Per-device memory of a job's train step: compiled with abstract inputs, nothing allocated.

    python -m vidlada_jax.launch.memory_plan --config configs/stage2.py --mesh fsdp=64
    python -m vidlada_jax.launch.memory_plan --config configs/stage2.py:micro=8 --mesh fsdp=8 --json
    python -m vidlada_jax.launch.memory_plan --config configs/stage3.py --mesh fsdp=64 \
        --target tpu:v5p:4x4x4

The trainer's own pieces (`make_train_step`, `state_shardings`, `batch_shardings`,
`make_optimizer`) build the step for the job's model, optimizer, frozen modules and mesh; the
inputs are `ShapeDtypeStruct`s carrying their shardings: the train state, the frozen parameters
and one global batch of `train.global_batch` sequences as [accumulation, micro_batch, ...] at the
job's largest text bucket and its frame count. XLA compiles the step for the mesh and
`memory_analysis()` says what one device holds: arguments (parameters, optimizer state, this
device's rows of the batch), outputs, the outputs that reuse donated argument buffers, and
temporaries (activations, gradients, collectives' buffers). `total` = arguments + outputs -
aliased + temporaries: the step's peak as XLA's buffer assignment plans it, before the
allocator's fragmentation and the runtime's own reservations.

`--mesh` is axis sizes (`fsdp=64`, `fsdp=8,tensor=2`: the config's rule set, axes not named have
size 1) or a rule set with sizes (`fsdp_tp:fsdp=4,tensor=2`, `vidlada_jax.sharding.
parse_mesh_spec`; an axis left at -1 needs `--devices`).

Targets. `cpu` (the default) simulates the mesh's devices on this host. XLA:CPU overstates what
a bf16 job needs on an accelerator: it has no bf16 matrix unit, so it computes bf16 dots in
float32 and, inside the scanned layers, keeps float32 copies of bf16 weights and activations
(on `fsdp=8` the bf16 step of `configs/stage2.py` plans 3.9 GB more than the same step computing
in float32).
For a job computing in bf16 the plan therefore also compiles the step computing in float32,
which has no such copies (parameters and optimizer state are float32 either way; activations
take twice bf16's room). Neither CPU figure is an accelerator's: its compiler fuses, pads
layouts and schedules differently. Against libtpu's compile of the same steps for TPU v5p, the
CPU float32 totals of the curriculum's configs came out between 51% above and 6% below the
TPU's (README): a CPU plan is a first estimate. Decide with the target's own compiler where it
can run here:
`tpu:<generation>:<topology>` (e.g. `tpu:v5p:4x4x4`, 64 chips) compiles for a TPU slice
ahead of time with libtpu's compiler on this CPU host, no TPU attached (`pip install
'jax[tpu]'`, or libtpu into a directory on PYTHONPATH): the accelerator's own figure. `gpu`
compiles for the host's GPUs; with `--mock_gpu_topology=1x8x1` one GPU stands for eight (JAX's
mock topology: eight one-GPU hosts, compile only).

Kernel backends (`splash`, what `auto` picks on TPU, `pallas_tpu`, `cudnn`, `pallas_gpu`) run
per shard under `shard_map` (XLA cannot partition them itself), so they compile in the sharded
step like the XLA ones.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from typing import Any

import jax
from absl import app, flags
from ml_collections import config_flags

from vidlada_jax import configs
from vidlada_jax import sharding as sharding_lib
from vidlada_jax.training.memory_plan import compile_plan

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'job config file (configs/*.py)',
                                lock_config=True)
flags.DEFINE_string('mesh', None, 'mesh: "fsdp=64", "fsdp=8,tensor=2" or "fsdp_tp:tensor=2" '
                    '(default: the config\'s mesh section over --devices)')
flags.DEFINE_integer('devices', None, 'number of devices, where the mesh leaves an axis at -1')
flags.DEFINE_string('target', 'cpu', '"cpu" (simulated devices), "gpu" (this host\'s GPUs, '
                    'or a mocked topology) or "tpu:<gen>:<topology>", e.g. tpu:v5p:4x4x4, '
                    'compiled ahead of time with libtpu')
flags.DEFINE_string('mock_gpu_topology', None, 'with --target gpu: compile for more GPUs than '
                    'are attached, e.g. 1x8x1 (slices x hosts x GPUs per host: one GPU stands '
                    'for a node of eight)')
flags.DEFINE_integer('text_length', None, 'text tokens per sequence (default: the largest '
                     'bucket of config.data.buckets)')
flags.DEFINE_bool('also_float32', True, 'on the cpu target, for a bf16 job also compile the '
                  'step computing in float32 (free of XLA:CPU\'s float32 copies of bf16 '
                  'values)')
flags.DEFINE_float('hbm_gb', None, 'memory of one device in GB (1e9 bytes): prints whether '
                   'the plan fits')
flags.DEFINE_bool('json', False, 'print one JSON object instead of a table')
flags.mark_flags_as_required(['config'])

GB = 1e9


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  model = FLAGS.config.model
  if not (model.get('architecture') or model.get('init_checkpoint')):
    raise app.UsageError('config.model names neither an architecture nor an init_checkpoint')
  rules_name, shape = mesh_shape(FLAGS.mesh, FLAGS.config)
  platform, topology = parse_target(FLAGS.target)
  devices = device_count(shape, FLAGS.devices)
  if platform != 'gpu':
    # The program runs nowhere: this host's CPU backend is all jax needs to trace (and, for
    # the cpu target, to compile). Chosen before anything initialises a backend.
    jax.config.update('jax_platforms', 'cpu')
  if platform == 'cpu':
    # Before anything initialises the CPU backend: its device count is fixed then.
    if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
      jax.config.update('jax_num_cpu_devices', devices)
    device_list = jax.devices('cpu')
  elif platform == 'gpu':
    if FLAGS.mock_gpu_topology:
      jax.config.update('jax_mock_gpu_topology', FLAGS.mock_gpu_topology)
    device_list = jax.devices('gpu')
  else:
    device_list = tpu_devices(topology)
  if len(device_list) != devices:
    raise app.UsageError(f'the mesh {shape} needs {devices} devices; the {FLAGS.target} '
                         f'target has {len(device_list)}')
  mesh = sharding_lib.make_mesh(shape, device_list)
  rules = sharding_lib.RULE_SETS[rules_name]

  job_dtype = FLAGS.config.runtime.dtype
  dtypes = [job_dtype]
  if platform == 'cpu' and job_dtype != 'float32' and FLAGS.also_float32:
    dtypes.append('float32')
  plans = []
  for dtype in dtypes:
    started = time.perf_counter()
    plan = compile_plan(FLAGS.config, mesh, rules, platform=platform, dtype=dtype,
                        text_length=FLAGS.text_length)
    plan['compile_s'] = round(time.perf_counter() - started, 1)
    plans.append(plan)

  report = dict(config=config_name(), mesh=dict(mesh.shape), rules=rules_name,
                target=FLAGS.target, devices=devices, hbm_gb=FLAGS.hbm_gb, plans=plans)
  if FLAGS.json:
    print(json.dumps(report, indent=1))
  else:
    print_report(report)
  return 0


# --- Meshes and targets -----------------------------------------------------------------------

def mesh_shape(spec: str | None, config) -> tuple[str, dict[str, int]]:
  """(rule set name, axis sizes) from `--mesh`, or from the config's mesh section."""
  config_rules = config.mesh.get('rules', 'fsdp')
  if not spec:
    return config_rules, dict(config.mesh.shape)
  try:
    return sharding_lib.parse_mesh_spec(spec, default_rules=config_rules)
  except ValueError as e:
    raise app.UsageError(f'--mesh: {e}') from e


def device_count(shape: dict[str, int], devices: int | None) -> int:
  known = math.prod(s for s in shape.values() if s != -1)
  if -1 not in shape.values():
    if devices is not None and devices != known:
      raise app.UsageError(f'--devices {devices} disagrees with the mesh {shape}')
    return known
  if devices is None:
    raise app.UsageError(f'the mesh {shape} leaves an axis at -1: name every size or pass '
                         '--devices')
  return devices


def parse_target(target: str) -> tuple[str, str | None]:
  """'cpu' -> ('cpu', None); 'gpu' -> ('gpu', None); 'tpu:v5p:4x4x4' -> ('tpu', 'v5p:4x4x4')."""
  if target in ('cpu', 'gpu'):
    return target, None
  kind, _, topology = target.partition(':')
  if kind != 'tpu' or not re.fullmatch(r'v\w+:\d+(x\d+)+', topology):
    raise app.UsageError(f'--target must be "cpu", "gpu" or "tpu:<generation>:<topology>" such '
                         f'as tpu:v5p:4x4x4, got {target!r}')
  return 'tpu', topology


def tpu_devices(topology: str):
  """Compile-only devices of a TPU slice, from libtpu on a host without TPUs."""
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise app.UsageError("--target tpu needs libtpu: pip install 'jax[tpu]', or "
                         'pip install --target DIR libtpu==<the version jax[tpu] pins> and '
                         'PYTHONPATH=DIR') from None
  # A host without TPUs has no metadata server to ask what slice it belongs to.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top  (loads libtpu)

  return topologies.get_topology_desc(topology_name=topology, platform='tpu').devices


# --- Output -----------------------------------------------------------------------------------

def config_name() -> str:
  for arg in sys.argv[1:]:
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
  if '--config' in sys.argv:
    return sys.argv[sys.argv.index('--config') + 1]
  return '?'


def print_report(report: dict[str, Any]) -> None:
  mesh = ','.join(f'{k}={v}' for k, v in report['mesh'].items())
  print(f'{report["config"]}  mesh {report["rules"]}:{mesh}  ({report["devices"]} devices, '
        f'target {report["target"]})')
  for plan in report['plans']:
    print(f'\ncompute {plan["dtype"]}, parameters {plan["param_dtype"]}, remat {plan["remat"]}, '
          f'attention {plan["attention"]}/{plan["vision_attention"]}')
    print(f'  {plan["trainable_params"]:,} trainable + {plan["frozen_params"]:,} frozen '
          f'parameters; batch {plan["global_batch"]} = {plan["accumulation"]} x micro-batch '
          f'{plan["micro_batch"]} ({plan["per_device_micro_batch"]} per device); '
          f'{plan["frames"]} frames + {plan["text_length"]} text tokens = '
          f'{plan["sequence_length"]} positions; compiled in {plan["compile_s"]} s')
    sizes = plan['bytes']
    if 'error' in plan:
      print(f'  the compiler refused it: {plan["error"]}')
    for name in ('argument', 'output', 'alias', 'temp', 'total'):
      if name in sizes:
        at_least = '>=' if 'error' in plan and name == 'total' else '  '
        print(f'  {name:9s} {at_least}{sizes[name] / GB:8.2f} GB per device')
    memory = report['hbm_gb'] * GB if report['hbm_gb'] else plan.get('hbm_bytes')
    if memory:
      fits = 'fits' if sizes['total'] <= memory and 'error' not in plan else 'does NOT fit'
      print(f'  {fits} in {memory / GB:.2f} GB')
  if len(report['plans']) > 1:
    print('\nXLA:CPU computes bf16 dots in float32 and keeps float32 copies of the scanned '
          'layers\' bf16 weights and activations, so the bf16 figure overstates an '
          'accelerator\'s; the float32 one has no such copies but is still CPU\'s buffer '
          'assignment, not the accelerator\'s (compile for the target: --target tpu:...).')


def run() -> None:
  """Console-script entry point: bundled configs resolve by name (see `vidlada_jax.configs`)."""
  app.run(lambda argv: sys.exit(main(argv)), argv=configs.resolve_flag(sys.argv))


if __name__ == '__main__':
  run()
