#!/bin/bash
# Train on a SLURM GPU cluster: one JAX process per node, each driving all of its node's GPUs.
#
#   sbatch --nodes=4 vidlada_jax/launch/slurm_train.sh configs/stage1.py:mixture=/shared/data/stage1.yaml \
#       /shared/runs/stage1 [--config.train.micro_batch=32 ...]
#
# Every node runs the same `python -m vidlada_jax.launch.train --distributed` (one srun task per node);
# process 0 (the first node of the allocation) is the coordinator the others connect to. The
# work directory must be on a filesystem every node sees (checkpoints are written by all
# processes, each its own shards). Resubmitting the same command resumes from the latest
# checkpoint. Set VENV to the virtual environment's directory (default: .venv in the repo) and
# PORT to move the coordinator off 12321.
#
# One process per GPU instead (`--ntasks-per-node=8`) also works with this script: each task
# then sees only its own GPU (CUDA_VISIBLE_DEVICES=$SLURM_LOCALID) and the job has
# nodes x 8 processes. One per node is the default because JAX then keeps a node's GPUs in one
# process (fewer processes to coordinate, intra-node collectives over NVLink via NCCL either way).
#
#SBATCH --job-name=vidlada-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --output=%x-%j.out

set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: sbatch [--nodes=N] vidlada_jax/launch/slurm_train.sh CONFIG WORKDIR [vidlada_jax.launch.train flags]" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2

REPO=${SLURM_SUBMIT_DIR:-$(pwd)}
VENV=${VENV:-$REPO/.venv}
PORT=${PORT:-12321}
# The coordinator: the first host of the allocation, as SLURM lists them.
COORDINATOR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
NUM_PROCESSES=$SLURM_NTASKS
TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE:-1}

echo "coordinator $COORDINATOR:$PORT, $NUM_PROCESSES processes on $SLURM_JOB_NUM_NODES nodes"

# Single quotes: SLURM_PROCID and SLURM_LOCALID are each task's own, expanded inside the task.
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 --export=ALL bash -c '
  set -euo pipefail
  if [[ '"$TASKS_PER_NODE"' -gt 1 ]]; then export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; fi
  cd "'"$REPO"'"
  exec "'"$VENV"'/bin/python" -m vidlada_jax.launch.train --distributed \
    --coordinator_address="'"$COORDINATOR:$PORT"'" \
    --num_processes='"$NUM_PROCESSES"' --process_id="$SLURM_PROCID" \
    --config="'"$CONFIG"'" --workdir="'"$WORKDIR"'" --noprogress "$@"
' launch_train "$@"
