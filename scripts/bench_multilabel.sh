#!/usr/bin/env bash
# Train and evaluate multilabel models on mosaics; the numbers in docs/results.md come from here.
#   usage: scripts/bench_multilabel.sh ENCODER_RUN OUT PRIOR [VARIANT ...]
#   VARIANT: frequency | rare-first | random | pla (cnn-rnn label orders) | bce (baseline);
#            default: all five. Each run is resumed if it was interrupted.
#   TRAIN_ARGS (environment): more `cnnrnn train` flags, e.g. "--set model.per_cell=true".
# Every run writes OUT/PRIOR/VARIANT/ with test-beam1.json and test-beam3.json (cnn-rnn) or
# test.json (bce): `cnnrnn evaluate --json` on the test mosaics.
set -euo pipefail
cd "$(dirname "$0")/.."
enc=$1 out=$2 prior=$3
shift 3
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(frequency bce rare-first random pla)
bin=${CNNRNN:-.venv/bin/cnnrnn}
for v in "${variants[@]}"; do
  dir=$out/$prior/$v
  if [ "$v" = bce ]; then model=(--model bce); else model=(--model cnn-rnn --order "$v"); fi
  if [ -f "$dir/last.pt" ]; then
    "$bin" train --resume "$dir" --quiet
  else
    "$bin" train --task multilabel "${model[@]}" --prior "$prior" \
      --encoder-checkpoint "$enc" --out "$dir" --quiet ${TRAIN_ARGS:-}
  fi
  if [ "$v" = bce ]; then
    "$bin" evaluate "$dir" --json > "$dir/test.json"
  else
    for w in 1 3; do "$bin" evaluate "$dir" --json --beam-width "$w" > "$dir/test-beam$w.json"; done
  fi
done
