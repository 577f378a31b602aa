#!/usr/bin/env bash
# Making better mistakes: plain cross-entropy against soft labels and the expected-cost loss
# (all with the clothing-hierarchy costs), two seeds each, then every run evaluated under every
# cost matrix with the argmax and the CRM decisions. docs/results.md's severity table comes
# from here.
#   usage: scripts/bench_severity.sh OUT MODEL EPOCHS [SEED ...]    (default seeds: 0 1)
# Two trainings run side by side with one thread each (a 2-core machine); PARALLEL=0 runs them
# one after another. TRAIN_ARGS (environment): more `cnnrnn train` flags for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 model=$2 epochs=$3
shift 3
seeds=("${@:-0 1}")
read -r -a seeds <<<"${seeds[*]}"
bin=${CNNRNN:-.venv/bin/cnnrnn}
mkdir -p "$out"
train() {  # name seed flags...
  local dir=$out/$1-s$2 s=$2
  shift 2
  if [ -f "$dir/last.pt" ]; then "$bin" train --resume "$dir" --quiet
  else "$bin" train --model "$model" --epochs "$epochs" --seed "$s" --set threads=1 \
         --out "$dir" --quiet ${TRAIN_ARGS:-} "$@"; fi
}
for seed in "${seeds[@]}"; do
  if [ "${PARALLEL:-1}" = 1 ]; then
    train ce "$seed" &
    train soft "$seed" --loss soft-labels --costs hierarchy &
    wait
  else
    train ce "$seed"
    train soft "$seed" --loss soft-labels --costs hierarchy
  fi
  train ec "$seed" --loss expected-cost --costs hierarchy
done
# cost matrices: the hierarchy, the seed-0 plain run's validation confusion and class rows
"$bin" analyze costs hierarchy --out "$out/costs/hierarchy.csv"
"$bin" analyze costs confusion "$out/ce-s${seeds[0]}" --out "$out/costs/confusion.csv"
"$bin" analyze costs embeddings "$out/ce-s${seeds[0]}" --out "$out/costs/embeddings.csv"
for run in "$out"/*-s*; do
  for c in hierarchy confusion embeddings; do
    for d in argmax crm; do
      "$bin" evaluate "$run" --json --costs "$out/costs/$c.csv" --decision "$d" \
        > "$run/test-$c-$d.json"
    done
  done
done
"$bin" analyze compare-costs "$out"/costs/{hierarchy,confusion,embeddings}.csv > "$out/costs/compare.md"
