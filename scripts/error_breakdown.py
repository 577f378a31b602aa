"""Where multilabel runs go wrong on a run's own test mosaics: exact match by number of labels
and by how common the true label set is, and the wrong sets split into a wrong count of labels
and a swap at the right count.

"common" / "uncommon": the test mosaics whose exact label set is at least / less than as
frequent among the test mosaics as the median mosaic's set (the split depends only on the truth,
so it is the same for every run on the same mosaics). A decoder that leans on label
co-occurrence should gain on common sets and may lose on uncommon ones.

usage: python scripts/error_breakdown.py RUN [RUN ...]   (CNNRNN_DATA or --data-dir as for cnnrnn)
Prints one Markdown table; each run is decoded with the beam width of its config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cnnrnn.data.fashion_mnist import load_fashion_mnist
from cnnrnn.evaluate import load_run
from cnnrnn.precision import autocast, resolve_device
from cnnrnn.tasks import run_predict


def breakdown(run: Path, fmnist) -> dict[str, object]:
    cfg, task, model, _ = load_run(run)
    data = task.prepare(cfg, fmnist)  # the very test mosaics `cnnrnn evaluate` uses
    dev = resolve_device("cpu")
    out = run_predict(task, model, data.test_images, cfg, dev,
                      lambda: autocast(dev, cfg.precision))
    pred = out["label_sets"].numpy().astype(bool)
    true = data.test_targets.numpy().astype(bool)
    n_true, n_pred = true.sum(1), pred.sum(1)
    exact = (pred == true).all(1)
    row: dict[str, object] = {"run": "/".join(run.parts[-3:]), "exact": exact.mean()}
    for k in range(1, int(n_true.max()) + 1):
        row[f"exact, {k} label{'s' if k > 1 else ''}"] = exact[n_true == k].mean()
    _, inverse, counts = np.unique(true, axis=0, return_inverse=True, return_counts=True)
    set_count = counts[inverse.reshape(-1)]  # how often each mosaic's true set occurs
    common = set_count >= np.median(set_count)
    row["exact, common sets"] = exact[common].mean()
    row["exact, uncommon sets"] = exact[~common].mean()
    row["wrong count"] = (n_pred != n_true).mean()  # a wrong count is always a wrong set
    row["too few"] = (n_pred < n_true).mean()
    row["too many"] = (n_pred > n_true).mean()
    row["swap at right count"] = (~exact & (n_pred == n_true)).mean()
    return row


def main(runs: list[str]) -> None:
    fmnist = load_fashion_mnist(None)
    rows = [breakdown(Path(r), fmnist) for r in runs]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * (len(keys) - 1))
    for r in rows:
        cells = [str(r[k]) if k == "run" else f"{float(r.get(k, np.nan)):.4f}" for k in keys]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
