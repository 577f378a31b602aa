#!/usr/bin/env bash
# The CNN-RNN's decoder variants against binary relevance, all fine-tuned from the encoder that
# scripts/bench_embeddings.sh trains (OUT/enc), under `outfits`, beside that script's runs
# (OUT/outfits/cnn-rnn-s{0,1,2}, bce-s0): the attention decoder with two seeds, BCE's second
# seed, label dropout (prior dropout) with either decoder, training mosaics half under the
# `independent` prior, label smoothing, the orderless set target (with PLA inputs), and four
# seeds of shares 0.15-0.25 of `independent` mosaics (0.2 is today's recipe) with BCE on the
# same mosaics. Each run is then tested and validated under both priors (the prior-shift and
# validation tables); `cnnrnn analyze saliency` scores localisation (docs/results.md).
# docs/results.md's decoder and prior-shift tables come from here.
#   usage: scripts/bench_decoders.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
bin=${CNNRNN:-.venv/bin/cnnrnn}
t=(--set "threads=${THREADS:-2}" --quiet)
enc=(--task multilabel --encoder-checkpoint "$out/enc")
run() {  # dir args...: train unless done, resume if interrupted
  local dir=$1; shift
  if [ -f "$dir/val_metrics.json" ]; then return; fi
  if [ -f "$dir/last.pt" ]; then "$bin" train --resume "$dir" --quiet; return; fi
  "$bin" train --out "$dir" "$@"
}
test_both() {  # dir: test mosaics under each prior, metrics and the error breakdown
  for p in outfits independent; do
    [ -f "$1/test-$p.json" ] || "$bin" evaluate "$1" --json --prior "$p" > "$1/test-$p.json"
    [ -f "$1/errors-$p.json" ] || "$bin" analyze errors "$1" --prior "$p" --json > "$1/errors-$p.json"
    [ -f "$1/val-$p.json" ] || "$bin" evaluate "$1" --json --split val --prior "$p" > "$1/val-$p.json"
  done
}
# every variant names its decoder and smoothing: the recipe's defaults changed with these runs
# every variant names its mix share too: the recipes draw a fifth of their mosaics under
# `independent` since these runs (attention-smooth-mix20 is today's recipe); a later --set wins
alone=(--set multilabel.mix_independent=0)
paper=(--set model.decoder=paper --set multilabel.label_smoothing=0 "${alone[@]}")
att=(--set model.decoder=attention --set multilabel.label_smoothing=0 "${alone[@]}")
default=(--set model.decoder=attention --set multilabel.label_smoothing=0.1 "${alone[@]}")
drop=(--set model.label_dropout=0.5)
mix=(--set multilabel.mix_independent=0.5)
set_target=(--set multilabel.order=pla --set multilabel.step_target=set)
both() { run "$@"; test_both "$1"; }
both "$out/outfits/bce-s1" "${enc[@]}" --model bce --seed 1 "${alone[@]}" "${t[@]}"
for s in 0 1; do
  both "$out/outfits/attention-s$s" "${enc[@]}" --seed "$s" "${att[@]}" "${t[@]}"
done
for s in 0 1 2 3; do  # four seeds for the unmixed recipe and each share: the 0.005 and 0.03 lines
  both "$out/outfits/attention-smooth-s$s" "${enc[@]}" --seed "$s" "${default[@]}" "${t[@]}"
  for share in 15 20 25; do
    both "$out/outfits/attention-smooth-mix$share-s$s" "${enc[@]}" --seed "$s" "${default[@]}" --set "multilabel.mix_independent=0.$share" "${t[@]}"
  done
done
for s in 0 1; do  # BCE on the default recipe's mosaics
  both "$out/outfits/bce-mix20-s$s" "${enc[@]}" --model bce --seed "$s" --set multilabel.mix_independent=0.2 "${t[@]}"
done
both "$out/outfits/attention-drop-s0" "${enc[@]}" --seed 0 "${att[@]}" "${drop[@]}" "${t[@]}"
both "$out/outfits/cnn-rnn-drop-s0" "${enc[@]}" --seed 0 "${paper[@]}" "${drop[@]}" "${t[@]}"
both "$out/outfits/attention-mix-s0" "${enc[@]}" --seed 0 "${att[@]}" "${mix[@]}" "${t[@]}"
both "$out/outfits/attention-set-s0" "${enc[@]}" --seed 0 "${att[@]}" "${set_target[@]}" "${t[@]}"
for r in "$out"/outfits/cnn-rnn-s{1,2} "$out"/outfits/bce-s0 "$out"/outfits/cnn-rnn-s0; do test_both "$r"; done
