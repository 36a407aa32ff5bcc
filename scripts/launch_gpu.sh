#!/usr/bin/env bash
# Streamed BioJEPAC pretraining on one multi-GPU node (one process drives every GPU), or on several
# nodes (one process per node, this script run on each with NODE_RANK set).
#
# One node:     bash scripts/launch_gpu.sh SHARD_GLOB RUN_DPATH [extra args]
# Many nodes:   NUM_NODES=2 NODE_RANK=0 COORDINATOR=node0:12345 bash scripts/launch_gpu.sh ...   (on node 0)
#               NUM_NODES=2 NODE_RANK=1 COORDINATOR=node0:12345 bash scripts/launch_gpu.sh ...   (on node 1)
# Under SLURM, `srun bash scripts/launch_gpu.sh ... --dist.auto-detect` lets JAX read the SLURM variables.
# The global batch (--batch-size) is split over nodes, then over each node's GPUs; keep it a multiple
# of the total GPU count (and of --grad-accum).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${1:?usage: launch_gpu.sh SHARD_GLOB RUN_DPATH [extra args]}
RUN_DPATH=${2:?usage: launch_gpu.sh SHARD_GLOB RUN_DPATH [extra args]}
shift 2

if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q -e ".[cuda]"   # jax[cuda12]==0.10.2
fi
if [ "${NUM_NODES:-1}" -gt 1 ]; then
  export BIOJEPAC_COORDINATOR=${COORDINATOR:?set COORDINATOR=host:port of node 0}
  export BIOJEPAC_NUM_PROCESSES=$NUM_NODES
  export BIOJEPAC_PROCESS_ID=${NODE_RANK:?set NODE_RANK}
fi
# Let XLA take most of GPU memory up front but leave room for the loader's host buffers.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# shellcheck disable=SC2086
exec .venv/bin/python -m biojepac.cli train stream-pretrain \
  --shards $SHARDS \
  --run-dpath "$RUN_DPATH" \
  --preset paper \
  --bf16 \
  "$@"
