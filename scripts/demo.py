"""`make demo`: what cnnrnn is for, in about five minutes on two cores.

Each step is a `cnnrnn` command, printed before it runs, so the demo doubles as a tour of the
CLI: a short single-label LSTM; a short CNN-RNN on outfit mosaics (after a small encoder
pretraining, announced with its estimated time); the UMAP map of its label embeddings; the
embedding distances turned into a cost matrix; and the LSTM's mistakes weighed by the clothing
hierarchy and by those costs. It ends with the test numbers, the figures and what to try next.
The sizes are a demo's, not a result's: docs/results.md has the real runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CNNRNN = [sys.executable, "-m", "cnnrnn"]


def run(args: list[str], capture: bool = False) -> str:
    """Run `cnnrnn ARGS`, shown first; a failure stops the demo with its exit status."""
    print(f"\n$ cnnrnn {' '.join(args)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([*CNNRNN, *args], stdout=subprocess.PIPE if capture else None,
                          text=True, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return done.stdout or ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path,
                   default=Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each training (default 2)")
    p.add_argument("--mosaics", type=int, default=4000,
                   help="training mosaics per CNN-RNN epoch (default 4000)")
    p.add_argument("--tiny", action="store_true",
                   help="test sizes (seconds, numbers meaningless): the tests run the demo so")
    a = p.parse_args()
    tiny = (["--limit-train", "512", "--set", "val_size=500"] if a.tiny else [])
    tiny_multi = (["--set", "model.encoder_width=0.0625", "--set", "multilabel.val_mosaics=200",
                   "--set", "multilabel.test_mosaics=200", "--set", "val_size=500"]
                  if a.tiny else [])
    lstm, cnn_rnn, costs = a.out / "lstm", a.out / "cnn-rnn", a.out / "costs-outfits.csv"
    start = time.perf_counter()

    run(["data", "check"])  # make demo downloads the data first where it is missing
    # 1. single-label: an LSTM reads each image as 28 rows of 28 pixels
    run(["train", "--task", "single-label", "--model", "lstm", "--epochs", str(a.epochs),
         *tiny, "--out", str(lstm), "--overwrite"])
    # 2. multilabel: the CNN-RNN names the items of 2x2 mosaics one after another
    run(["train", "--task", "multilabel", "--epochs", str(a.epochs), "--limit-train",
         str(256 if a.tiny else a.mosaics), "--set", "multilabel.encoder_epochs=1", "--set",
         f"multilabel.encoder_limit_train={512 if a.tiny else 12000}", *tiny_multi,
         "--out", str(cnn_rnn), "--overwrite"])
    # 3. its label embeddings U_l: distances, a clustered heatmap and UMAP maps
    run(["analyze", "embeddings", str(cnn_rnn), "--n", "500"])
    run(["analyze", "costs", "embeddings", str(cnn_rnn), "--out", str(costs)])
    # 4. mistake severity: how bad are the LSTM's mistakes, by the hierarchy and by U_l?
    single = json.loads(run(["evaluate", str(lstm), "--costs", "hierarchy", "--json"], True))
    crm = json.loads(run(["evaluate", str(lstm), "--costs", "hierarchy", "--decision", "crm",
                          "--json"], True))
    by_ul = json.loads(run(["evaluate", str(lstm), "--costs", str(costs), "--json"], True))
    multi = json.loads(run(["evaluate", str(cnn_rnn), "--json"], True))

    minutes = (time.perf_counter() - start) / 60
    print(f"\n== cnnrnn demo done in {minutes:.1f} min (demo sizes; docs/results.md has real "
          "runs) ==")
    print(f"LSTM, test: accuracy {100 * single['accuracy']:.2f} %; mistake severity under the "
          f"hierarchy {single['mistake_severity']:.3f} (argmax) and "
          f"{crm['mistake_severity']:.3f} (CRM), hdist@3 {single['hdist@3']:.3f} -> "
          f"{crm['hdist@3']:.3f}; under the CNN-RNN's U_l costs {by_ul['mistake_severity']:.3f}")
    print(f"CNN-RNN, test mosaics: O-F1 {multi['O-F1']:.3f}, C-F1 {multi['C-F1']:.3f}, exact "
          f"match {multi['exact_match']:.3f}, mAP {multi['mAP']:.3f}")
    figures = sorted(a.out.rglob("*.png"))
    print("figures:")
    for f in figures:
        print(f"  {f}")
    print(f"""next:
  cnnrnn data export --split test --n 8 --out items/   # images to predict
  cnnrnn predict {lstm} items/                          # top-3 classes of each
  cnnrnn train --task multilabel     # the CNN-RNN's full recipe (pretrains a larger encoder)
  cnnrnn compare RUN1 RUN2 ... --stats --group ...     # statistics over seeds, 3 or more a side
  make reproduce                     # every number of docs/results.md""")


if __name__ == "__main__":
    main()
