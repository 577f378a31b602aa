#!/usr/bin/env bash
# The checks a GPU machine is for, in one run of a few minutes: the `gpu` tests, then short
# full-width trainings from configs/gpu/, each bounded in time, their numbers saved to OUT.
#   scripts/gpu_check.sh OUT        (CNNRNN_DATA names the Fashion-MNIST folder)
# 1. pytest -m gpu (tests/test_gpu.py): bf16 and fp16 steps, resume, batches on the GPU;
# 2. vgg16 at full width (configs/gpu/vgg16.toml), bf16, the whole recipe unless it runs
#    past VGG_SECONDS (then it saves and stops, no failure): metrics.jsonl and
#    `cnnrnn evaluate --tta --json` of its best epoch;
# 3. the same network in fp16 with the gradient scaler, one epoch, then evaluated on the CPU;
# 4. the CNN-RNN (configs/gpu/cnn-rnn.toml) on the vgg16 run's encoder, ML_EPOCHS epochs;
# 5. with two GPUs or more, step 2 for one epoch under torchrun on the most GPUs, a power of
#    two, that the batch splits into (NCCL, SyncBatchNorm).
# GPU_CHECK_DEVICE=cpu runs the same steps at a tiny size on a CPU (fp16 and torchrun left
# out), to try the script itself. Every step runs even when one before it failed; the exit
# status says whether all passed.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# paths given relative to the caller's folder, before moving into the checkout
[ -n "${CNNRNN_DATA:-}" ] && export CNNRNN_DATA=$(cd "$CNNRNN_DATA" && pwd)
if [ -n "${PYTHON:-}" ] && [ "${PYTHON#*/}" != "$PYTHON" ]; then
  PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
fi
cd "$(dirname "$0")/.."
venv=.venv/bin/python  # the checkout's (make setup), else python3 on the PATH
[ -x "$venv" ] || venv=python3
py=${PYTHON:-$venv}
device=${GPU_CHECK_DEVICE:-cuda}
work=$(mktemp -d)
log="$out/gpu_check.log"
failed=0
timed() {  # timed ALSO_OK TIMEOUT_FLAG NAME SECONDS COMMAND...: log it, count a failure
  local also_ok=$1 flag=$2 name=$3 seconds=$4
  shift 4
  echo "== $name (at most ${seconds} s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout $flag "$seconds" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || [ "$rc" -eq "$also_ok" ] || failed=$((failed + 1))
}
step() { timed 0 "" "$@"; }  # step NAME SECONDS COMMAND...: must end with status 0
# bounded NAME SECONDS COMMAND...: a training that may stop at its time limit: SIGTERM there,
# and the training saves and stops (exit 130), which is no failure here
bounded() { timed 130 --preserve-status "$@"; }

if [ "$device" = cuda ]; then
  nvidia-smi 2>&1 | tee -a "$log"
  size=()
  ml_size=()
  epochs=()  # the recipe's
else  # a try of the script on a CPU: tiny sizes, the CPU as the device
  size=(--device cpu --limit-train 512 --batch-size 64 --set eval_batch_size=500
        --set model.width=0.0625 --set val_size=500)
  ml_size=(--device cpu --limit-train 256 --batch-size 64 --set eval_batch_size=500
           --set model.encoder_width=0.0625 --set val_size=500 --set multilabel.val_mosaics=200
           --set multilabel.test_mosaics=200)
  epochs=(--epochs 2)
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'devices', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])" \
  2>&1 | tee -a "$log"
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

step "gpu tests" 300 "$py" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider

bounded "vgg16 bf16" "${VGG_SECONDS:-240}" "$py" -m cnnrnn train --config configs/gpu/vgg16.toml \
  "${size[@]}" "${epochs[@]}" --out "$work/vgg16"
cp "$work/vgg16/metrics.jsonl" "$out/vgg16-metrics.jsonl" 2>/dev/null
if [ -f "$work/vgg16/best.pt" ]; then
  step "vgg16 evaluate" 120 bash -c "$(printf '%q ' "$py" -m cnnrnn evaluate "$work/vgg16" \
    --tta --json --device "$device") > $(printf '%q' "$out/vgg16-evaluate.json")"
  cat "$out/vgg16-evaluate.json" >> "$log" 2>/dev/null
else
  echo "== vgg16 bf16 saved no best.pt: the steps that read it are skipped" | tee -a "$log"
  failed=$((failed + 1))
fi

if [ "$device" = cuda ]; then
  step "vgg16 fp16" 120 "$py" -m cnnrnn train --config configs/gpu/vgg16.toml --epochs 1 \
    --precision fp16 --out "$work/vgg16-fp16"
  cp "$work/vgg16-fp16/metrics.jsonl" "$out/vgg16-fp16-metrics.jsonl" 2>/dev/null
  # read back on the CPU, as most users would look at a GPU run afterwards
  step "vgg16 fp16 evaluate on the CPU" 120 "$py" -m cnnrnn evaluate "$work/vgg16-fp16" --json
fi

if [ -f "$work/vgg16/best.pt" ]; then
  step "cnn-rnn bf16" 240 "$py" -m cnnrnn train --task multilabel \
    --config configs/gpu/cnn-rnn.toml --encoder-checkpoint "$work/vgg16" \
    --epochs "${ML_EPOCHS:-2}" "${ml_size[@]}" --out "$work/cnn-rnn"
  cp "$work/cnn-rnn/metrics.jsonl" "$out/cnn-rnn-metrics.jsonl" 2>/dev/null
fi

ranks=1  # the most GPUs, a power of two, that the recipe's batch of 512 splits into
while [ $((ranks * 2)) -le "$gpus" ]; do ranks=$((ranks * 2)); done
if [ "$device" = cuda ] && [ "$ranks" -gt 1 ]; then
  step "vgg16 bf16 on $ranks GPUs" 180 "$py" -m torch.distributed.run --standalone \
    --nproc_per_node="$ranks" -m cnnrnn train --config configs/gpu/vgg16.toml --epochs 1 \
    --out "$work/vgg16-ddp"
  cp "$work/vgg16-ddp/metrics.jsonl" "$out/vgg16-ddp-metrics.jsonl" 2>/dev/null
fi

echo "== $failed step(s) failed" | tee -a "$log"
rm -rf "$work"
[ "$failed" -eq 0 ]
