#!/usr/bin/env bash
# Shared by sft_ov_encoder.sh and pretrain_ov_encoder.sh: start llava/train/train.py on one node or many.
#
#   launch_train.sh TRAIN_FLAGS...
#
# Environment: LAUNCHER (torchrun | deepspeed, default torchrun), NUM_GPUS (processes per node),
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, HOSTFILE (deepspeed launcher, several nodes),
# PYTHON (default: python), DRY_RUN=1 (print the command instead of running it).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
LAUNCHER=${LAUNCHER:-torchrun}
NUM_GPUS=${NUM_GPUS:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

case "$LAUNCHER" in
  torchrun)
    command=("$PYTHON" -m torch.distributed.run --nproc_per_node "$NUM_GPUS" --nnodes "$NNODES"
             --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
             -m llava.train.train "$@") ;;
  deepspeed)
    command=(deepspeed --num_gpus "$NUM_GPUS" --num_nodes "$NNODES" --master_addr "$MASTER_ADDR"
             --master_port "$MASTER_PORT")
    [ -n "${HOSTFILE:-}" ] && command+=(--hostfile "$HOSTFILE")
    command+=(llava/train/train.py "$@") ;;
  *)
    echo "LAUNCHER must be torchrun or deepspeed, got '$LAUNCHER'" >&2
    exit 2 ;;
esac

if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
exec "${command[@]}"
