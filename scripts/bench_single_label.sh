#!/usr/bin/env bash
# Train the single-label models with their configs/single_label/<model>.toml recipes, then print
# the comparison table. docs/results.md's rnn, lstm, gru and cnn rows come from this script (its
# vgg16 row from two one-thread runs side by side; the commands are there).
#   usage: scripts/bench_single_label.sh [OUT_DIR] [MODEL ...]    (default: runs/bench, all five)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench}
shift || true
models=("${@:-rnn lstm gru cnn vgg16}")
read -r -a models <<<"${models[*]}"
bin=${CNNRNN:-.venv/bin/cnnrnn}
mkdir -p "$out"
for m in "${models[@]}"; do
  if [ -f "$out/$m/last.pt" ]; then
    "$bin" train --resume "$out/$m" --quiet  # finishes an interrupted run; no-op when done
  else
    "$bin" train --task single-label --model "$m" --out "$out/$m" --quiet
  fi
done
runs=()
for m in "${models[@]}"; do runs+=("$out/$m"); done
"$bin" compare "${runs[@]}" --plot "$out/compare.png" | tee "$out/compare.md"
