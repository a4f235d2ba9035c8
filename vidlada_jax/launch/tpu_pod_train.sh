#!/bin/bash
# Train on a Cloud TPU pod slice: every worker VM runs the same command.
#
#   TPU=my-v5p-128 ZONE=us-east5-a vidlada_jax/launch/tpu_pod_train.sh \
#       configs/stage1.py:mixture=/mnt/shared/data/stage1.yaml /mnt/shared/runs/stage1 \
#       [--config.train.micro_batch=64 ...]
#
# `jax.distributed.initialize()` (vidlada_jax.launch.train --distributed) finds the slice's workers and
# the coordinator from the TPU metadata itself, so no address is passed. Each worker must have
# the repository at $REPO (default ~/vidlada-jax) with its virtual environment ($VENV, default
# $REPO/.venv, with jax[tpu]), and the work directory must be a path every worker sees: a
# Filestore/NFS mount or a GCS bucket mounted with gcsfuse at the same path on every worker
# (the trainer writes the work directory through local paths, so gs:// URLs are not accepted).
# Rerunning the same command resumes from the latest checkpoint.
#
# The run is started with nohup on every worker and logs to $LOG (default
# ~/vidlada-train.log) there, so closing this shell does not stop it; follow it with
#   gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=0 --command "tail -f ~/vidlada-train.log"

set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: TPU=NAME ZONE=ZONE vidlada_jax/launch/tpu_pod_train.sh CONFIG WORKDIR [vidlada_jax.launch.train flags]" >&2
  exit 2
fi
: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
CONFIG=$1
WORKDIR=$2
shift 2
REPO=${REPO:-'~/vidlada-jax'}
VENV=${VENV:-"$REPO/.venv"}
LOG=${LOG:-'~/vidlada-train.log'}

EXTRA=$(printf ' %q' "$@")
COMMAND="cd $REPO && nohup $VENV/bin/python -m vidlada_jax.launch.train --distributed \
--config=$(printf %q "$CONFIG") --workdir=$(printf %q "$WORKDIR") --noprogress$EXTRA \
> $LOG 2>&1 < /dev/null &"

echo "on every worker of $TPU: $COMMAND"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$COMMAND"
