#!/usr/bin/env bash
# Label embeddings of CNN-RNN runs: one shared single-label encoder (vgg16 at width 0.25, six
# epochs, as the multilabel recipes pretrain it), CNN-RNNs under `outfits` with three seeds and
# under `independent` with one, and BCE under `outfits`; then their embedding maps, cost
# matrices and comparisons, and the prior-shift evaluations. docs/results.md's embedding and
# prior-shift tables come from here.
#   usage: scripts/bench_embeddings.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
bin=${CNNRNN:-.venv/bin/cnnrnn}
t=(--set "threads=${THREADS:-2}" --quiet)
# the decoder these ran with, on `outfits` mosaics alone (the recipes' mix came later)
paper=(--set model.decoder=paper --set multilabel.label_smoothing=0 --set multilabel.mix_independent=0)
run() {  # dir args...: train unless done, resume if interrupted
  local dir=$1; shift
  if [ -f "$dir/val_metrics.json" ]; then return; fi
  if [ -f "$dir/last.pt" ]; then "$bin" train --resume "$dir" --quiet; return; fi
  "$bin" train --out "$dir" "$@"
}
run "$out/enc" --model vgg16 --set model.width=0.25 --epochs 6 "${t[@]}"
for s in 0 1 2; do
  run "$out/outfits/cnn-rnn-s$s" --task multilabel --seed "$s" --encoder-checkpoint "$out/enc" "${paper[@]}" "${t[@]}"
done
run "$out/independent/cnn-rnn-s0" --task multilabel --prior independent --encoder-checkpoint "$out/enc" "${paper[@]}" "${t[@]}"
run "$out/outfits/bce-s0" --task multilabel --model bce --encoder-checkpoint "$out/enc" --set multilabel.mix_independent=0 "${t[@]}"
mkdir -p "$out/costs"
"$bin" analyze costs hierarchy --out "$out/costs/hierarchy.csv"
for r in "$out"/outfits/cnn-rnn-s{0,1,2} "$out"/independent/cnn-rnn-s0; do
  name=$(basename "$(dirname "$r")")-$(basename "$r")
  "$bin" analyze costs embeddings "$r" --out "$out/costs/$name.csv"
  "$bin" analyze embeddings "$r" --out "$r/analysis/embeddings" > /dev/null
done
"$bin" analyze costs embeddings "$out/enc" --out "$out/costs/vgg16-classifier.csv"
"$bin" analyze costs confusion "$out/enc" --out "$out/costs/vgg16-confusion.csv"
"$bin" analyze compare-costs "$out"/costs/*.csv > "$out/costs/compare.md"
"$bin" analyze compare-costs "$out"/costs/*.csv --json > "$out/costs/compare.json"
for r in "$out"/outfits/cnn-rnn-s0 "$out"/outfits/bce-s0 "$out"/independent/cnn-rnn-s0; do
  for p in outfits independent; do
    "$bin" evaluate "$r" --json --prior "$p" --costs "$out/costs/hierarchy.csv" > "$r/test-$p.json"
  done
  "$bin" analyze errors "$r" --prior independent --json > "$r/errors-independent.json"
  "$bin" analyze errors "$r" --prior outfits --json > "$r/errors-outfits.json"
done
