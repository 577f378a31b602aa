"""Where multilabel runs go wrong on a run's own test mosaics: exact match by number of labels
and by how common the true label set is, and the wrong sets split into a wrong count of labels
and a swap at the right count (`cnnrnn analyze errors RUN [RUN ...]`).

"common" / "uncommon": the test mosaics whose exact label set is at least / less than as
frequent among the test mosaics as the median mosaic's set (the split depends only on the truth,
so it is the same for every run on the same mosaics). A decoder that leans on label
co-occurrence should gain on common sets and may lose on uncommon ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnrnn.data.fashion_mnist import FashionMNIST
from cnnrnn.errors import CnnrnnError
from cnnrnn.evaluate import evaluate_samples, load_run
from cnnrnn.tasks import apply_eval_options
from cnnrnn.tasks.multilabel import Multilabel


def breakdown(run: str | Path, data: FashionMNIST | str | Path | None = None,
              options: dict[str, Any] | None = None,
              say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One row of shares (0..1) for a multilabel run, decoded with its own options, or with
    evaluation `options` (e.g. {"prior": "independent"} for test mosaics under another prior).

    `data` is the loaded Fashion-MNIST or its folder (None: found as usual). The run's test
    predictions are those `cnnrnn evaluate` saved for its best checkpoint and these options,
    if it did (`cnnrnn.evaluate.evaluate_samples`); otherwise it is evaluated and they are
    saved."""
    cfg, task, _, _ = load_run(run)
    cfg = apply_eval_options(cfg, run, options or {})
    if not isinstance(task, Multilabel):
        raise CnnrnnError(f"{run} is a {cfg.task} run; the error breakdown reads multilabel runs")
    fmnist = data if isinstance(data, FashionMNIST) else None
    # the very test mosaics `cnnrnn evaluate` uses, and its saved predictions where they match
    _, samples = evaluate_samples(run, "test", None if fmnist else data, options=options,
                                  say=say, fmnist=fmnist)
    pred = samples["y_pred"].astype(bool)  # (N, 10) multi-hot
    true = samples["y_true"].astype(bool)
    n_true, n_pred = true.sum(1), pred.sum(1)
    exact = (pred == true).all(1)
    run = Path(run)
    row: dict[str, Any] = {"run": "/".join(run.parts[-3:]), "exact": float(exact.mean())}
    for k in range(1, int(n_true.max()) + 1):
        row[f"exact, {k} label{'s' if k > 1 else ''}"] = float(exact[n_true == k].mean())
    _, inverse, counts = np.unique(true, axis=0, return_inverse=True, return_counts=True)
    set_count = counts[inverse.reshape(-1)]  # how often each mosaic's true set occurs
    common = set_count >= np.median(set_count)
    row["exact, common sets"] = float(exact[common].mean())
    row["exact, uncommon sets"] = float(exact[~common].mean())
    row["wrong count"] = float((n_pred != n_true).mean())  # a wrong count is always a wrong set
    row["too few"] = float((n_pred < n_true).mean())
    row["too many"] = float((n_pred > n_true).mean())
    row["swap at right count"] = float((~exact & (n_pred == n_true)).mean())
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|---|" + "---:|" * (len(keys) - 1)]
    for r in rows:
        cells = [str(r[k]) if k == "run" else f"{float(r.get(k, np.nan)):.4f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
