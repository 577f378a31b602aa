#!/usr/bin/env bash
# The default `threads = -1` (auto) against pinned threads, beside another busy job: a tiny
# training of MODEL (one epoch of LIMIT images) three ways, each beside one busy single-thread
# process (`python -c "while True: pass"`, which holds one core): the default (auto), --set
# threads=1 and --set threads=0 (torch's default, every core: the default before auto). Prints
# the median ms per training step of each (metrics.jsonl's ms_per_step) and the threads used.
# Run it on an otherwise idle machine; BUSY=0 leaves the busy process out (a check that it runs).
#   usage: scripts/bench_threads.sh [MODEL] [LIMIT]    (default: cnn 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-cnn}
limit=${2:-4096}
bin=${CNNRNN:-.venv/bin/cnnrnn}
py=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
busy=
cleanup() {
  if [ -n "$busy" ]; then kill "$busy" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
if [ "${BUSY:-1}" != 0 ]; then
  "$py" -c "while True: pass" &
  busy=$!
  sleep 2  # the kernel counts it as runnable before auto looks at the load
fi
echo "model $model, 1 epoch of $limit images, beside ${BUSY:-1} busy single-thread process(es)"
echo "$(nproc) CPUs; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
for setting in auto 1 0; do
  flags=()
  if [ "$setting" != auto ]; then flags=(--set "threads=$setting"); fi
  "$bin" train --model "$model" --epochs 1 --limit-train "$limit" --set val_size=500 \
    --set checkpoint_minutes=0 --quiet --out "$out/$setting" "${flags[@]}"
  "$py" - "$out/$setting" "$setting" <<'PY'
import json, sys
from pathlib import Path
run, setting = Path(sys.argv[1]), sys.argv[2]
row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
used = json.loads((run / "environment.json").read_text())[0]["threads"]
name = {"auto": "default (auto)", "1": "--set threads=1", "0": "--set threads=0 (torch's)"}
print(f"{name[setting]:28s} {row['ms_per_step']:8.1f} ms/step  ({used} threads)")
PY
done
