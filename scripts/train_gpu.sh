#!/usr/bin/env bash
# Any cnnrnn training command on one GPU or N: `scripts/train_gpu.sh N cnnrnn train ARGS...`
#   scripts/train_gpu.sh 1 cnnrnn train --config configs/gpu/vgg16.toml --out runs/gpu/vgg16
#   scripts/train_gpu.sh 4 cnnrnn train --config configs/gpu/vgg16.toml --out runs/gpu/vgg16
#   scripts/train_gpu.sh 4 cnnrnn train --resume runs/gpu/vgg16
# N > 1 runs torchrun (one process per GPU, DistributedDataParallel, NCCL): the config's batch
# is the global batch, split across the GPUs; only rank 0 writes the run folder. For several
# machines, run torchrun yourself with --nnodes and a --rdzv-endpoint.
# Paths in ARGS are read from the folder you run it in, as with cnnrnn itself. The Python is
# $PYTHON, else the checkout's .venv (make setup), else python3 on the PATH.
set -euo pipefail
n=${1:?usage: scripts/train_gpu.sh N cnnrnn train ARGS...}
shift
[ "${1:-}" = cnnrnn ] && shift
venv="$(dirname "$0")/../.venv/bin/python"
[ -x "$venv" ] || venv=python3
py=${PYTHON:-$venv}
if [ "$n" -gt 1 ]; then
  exec "$py" -m torch.distributed.run --standalone --nproc_per_node="$n" -m cnnrnn "$@"
fi
exec "$py" -m cnnrnn "$@"
