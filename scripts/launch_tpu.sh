#!/usr/bin/env bash
# Streamed BioJEPAC pretraining on a Cloud TPU VM or a TPU pod slice (e.g. from TRC).
#
# One TPU VM (v4-8, v5e-8, ...):   bash scripts/launch_tpu.sh SHARD_GLOB RUN_DPATH [extra args]
# A pod slice (several TPU VMs):    run the same command on every worker at once, e.g.
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
#     --command "cd biojepac && bash scripts/launch_tpu.sh 'gs-fuse-or-local/shards/*.h5ad' runs/pod"
# On TPU VMs JAX discovers the slice itself (`--dist.auto-detect`): no coordinator address is needed.
# Shards must be readable at the same path on every worker (local copies, a shared disk or gcsfuse);
# each worker reads only its own blocks of them. RUN_DPATH should be on a shared disk so a restarted
# job resumes from the same checkpoint (every worker writes the same, replicated state).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${1:?usage: launch_tpu.sh SHARD_GLOB RUN_DPATH [extra args]}
RUN_DPATH=${2:?usage: launch_tpu.sh SHARD_GLOB RUN_DPATH [extra args]}
shift 2

if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q -e ".[tpu]"   # jax[tpu]==0.10.2 pulls libtpu
fi
# shellcheck disable=SC2086
exec .venv/bin/python -m biojepac.cli train stream-pretrain \
  --shards $SHARDS \
  --run-dpath "$RUN_DPATH" \
  --preset paper \
  --bf16 \
  --dist.auto-detect \
  "$@"
