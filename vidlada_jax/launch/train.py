"""Train VidLaDA from a job config.

    python -m vidlada_jax.launch.train --config configs/stage1.py --workdir DIR
        [--config.key=value ...]

The config file's `get_config(arg)` takes the text after a colon (`configs/tiny.py:stage=2`);
`--config.train.total_steps=10` style flags override any field. Running again with the same
work directory resumes from its latest checkpoint (parameters, optimizer, step, RNG and data
position). On a multi-host job every process runs this same command with `--distributed`:

    TPU pods, SLURM:   --distributed    (jax.distributed.initialize() finds its peers itself;
                                         see vidlada_jax/launch/tpu_pod_train.sh,
                                         vidlada_jax/launch/slurm_train.sh)
    anywhere else:     --distributed --coordinator_address=HOST:PORT --num_processes=N
                       --process_id=I   (HOST: process 0's machine; I: 0..N-1, one per process)
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from vidlada_jax import configs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'job config file (configs/*.py)',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'work directory: checkpoints, logs (resumed if present)')
flags.DEFINE_bool('distributed', False, 'call jax.distributed.initialize() first (multi-host)')
flags.DEFINE_string('coordinator_address', None, 'with --distributed: HOST:PORT of process 0 '
                    '(default: detected on TPU pods and under SLURM)')
flags.DEFINE_integer('num_processes', None, 'with --distributed: how many processes the job has')
flags.DEFINE_integer('process_id', None, 'with --distributed: this process\'s index, 0..N-1')
flags.DEFINE_bool('progress', True, 'show a progress bar')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top

  if FLAGS.distributed:
    from vidlada_jax import sharding  # pylint: disable=g-import-not-at-top

    # Flags left out are detected (TPU pod metadata, SLURM's variables); named ones win.
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
  elif any(v is not None for v in (FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)):
    raise app.UsageError('--coordinator_address, --num_processes and --process_id need '
                         '--distributed')
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  logging.getLogger('absl').setLevel(logging.WARNING)
  from vidlada_jax.training import NonFiniteLoss, Trainer  # pylint: disable=g-import-not-at-top

  try:
    trainer = Trainer(FLAGS.config, FLAGS.workdir, progress=FLAGS.progress)
  except (ValueError, FileNotFoundError) as e:  # the job config, its data or its init checkpoint
    print(f'error: {e}', file=sys.stderr)
    return 2
  # From here on a ValueError is a bug, and surfaces with its traceback.
  try:
    summary = trainer.run()
  except NonFiniteLoss as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  finally:
    trainer.close()
  if jax.process_index() == 0:
    state = 'preempted, checkpoint saved at' if summary['preempted'] else 'finished at'
    print(f'{state} step {summary["end_step"]}: {summary["workdir"]}')
  return 0


def run() -> None:
  """Console-script entry point: bundled configs resolve by name (see `vidlada_jax.configs`)."""
  app.run(lambda argv: sys.exit(main(argv)), argv=configs.resolve_flag(sys.argv))


if __name__ == '__main__':
  run()
