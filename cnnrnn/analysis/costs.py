"""Cost matrices from runs and the hierarchy, and how they compare (`cnnrnn analyze costs`).

Sources: `hierarchy` (the clothing hierarchy), `embeddings` (a run's label embeddings: a
CNN-RNN's rows of U_l or a classifier's last linear layer; cosine or Euclidean distance) and
`confusion` (a single-label run's validation confusion matrix, symmetrised). `compare` ranks
the pairs of each matrix against every other (Spearman's rank correlation of the 45 costs of
distinct class pairs) and checks two sanity orders a reader expects of any clothing distance.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from cnnrnn import costs as cost_lib
from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.errors import CnnrnnError
from cnnrnn.evaluate import load_run
from cnnrnn.models.embeddings import class_embeddings
from cnnrnn.run_dir import VAL_METRICS, RunDir

SOURCES = ("hierarchy", "embeddings", "confusion")
# (a, b, c): d(a, b) < d(a, c) is expected of any sensible clothing distance
SANITY = (("Shirt", "T-shirt/top", "Ankle boot"), ("Sneaker", "Sandal", "Coat"))
# Pairs the `outfits` prior puts in one theme (configs/mosaics/outfits.toml: summer, winter,
# office, sport, evening) but that do not look alike, and pairs that look alike (the tops and
# the shoes Fashion-MNIST classifiers confuse) but rarely share a theme. If co-occurrence pulls
# label embeddings together, the first group's mean distance falls under `outfits` against
# `independent`, relative to the second's.
WORN_TOGETHER = (("T-shirt/top", "Sandal"), ("Dress", "Sandal"), ("Coat", "Ankle boot"),
                 ("Pullover", "Ankle boot"), ("Shirt", "Trouser"), ("Shirt", "Bag"),
                 ("Sneaker", "T-shirt/top"), ("Dress", "Bag"))
LOOK_ALIKE = (("Shirt", "T-shirt/top"), ("Shirt", "Pullover"), ("Coat", "Shirt"),
              ("Pullover", "Coat"), ("Sneaker", "Sandal"), ("Sneaker", "Ankle boot"))


def costs_from(source: str, run: str | Path | None = None, metric: str = "cosine",
               hierarchy: str | Path | None = None) -> tuple[np.ndarray, str]:
    """A cost matrix and a one-line description of where it came from; `hierarchy`: your own
    hierarchy file (cnnrnn.hierarchy) in place of the clothing hierarchy."""
    if source not in SOURCES:
        raise CnnrnnError(f"unknown cost source {source!r}; choose one of {', '.join(SOURCES)}")
    if hierarchy is not None and source != "hierarchy":
        raise CnnrnnError(f"--hierarchy goes with the source hierarchy, not {source!r}: cnnrnn "
                          "analyze costs hierarchy --hierarchy FILE --out COSTS.csv")
    if hierarchy is not None:
        return cost_lib.hierarchy_file_costs(hierarchy), f"the hierarchy in {hierarchy} " \
            "(height of the lowest common ancestor)"
    if source == "hierarchy":
        return cost_lib.hierarchy_costs(), "the clothing hierarchy (height of the lowest " \
            "common ancestor)"
    if run is None:
        raise CnnrnnError(f"cost source {source!r} needs a run folder: cnnrnn analyze costs "
                          f"{source} RUN --out FILE")
    if source == "embeddings":
        _, _, model, _ = load_run(run)
        vectors = class_embeddings(model).float().numpy()
        return cost_lib.embedding_costs(vectors, metric), f"{metric} distances of the label " \
            f"embeddings of {run}"
    val = RunDir(run).read_json(VAL_METRICS)
    if not val or "confusion_matrix" not in val:
        raise CnnrnnError(f"{run} has no validation confusion matrix ({VAL_METRICS}); the "
                          "confusion source reads a finished single-label run")
    return cost_lib.confusion_costs(np.array(val["confusion_matrix"])), \
        f"the validation confusion of {run}, symmetrised"


def _upper(c: np.ndarray) -> np.ndarray:
    return c[np.triu_indices(len(c), k=1)]


def sanity_orders(c: np.ndarray) -> dict[str, bool]:
    idx = {name: i for i, name in enumerate(CLASSES)}
    return {f"d({a}, {b}) < d({a}, {x})": bool(c[idx[a], idx[b]] < c[idx[a], idx[x]])
            for a, b, x in SANITY}


def group_means(c: np.ndarray) -> dict[str, float]:
    """Mean cost of the WORN_TOGETHER and of the LOOK_ALIKE pairs."""
    idx = {name: i for i, name in enumerate(CLASSES)}
    return {group: float(np.mean([c[idx[a], idx[b]] for a, b in pairs]))
            for group, pairs in (("worn together", WORN_TOGETHER), ("look alike", LOOK_ALIKE))}


def compare_costs(matrices: dict[str, np.ndarray]) -> dict[str, Any]:
    """Spearman's rank correlation of every pair of matrices over the 45 distinct class pairs,
    the sanity orders of each, and each one's mean cost of pairs worn together and of pairs
    that look alike."""
    from scipy.stats import spearmanr

    names = list(matrices)
    pairs = {}
    for a, b in combinations(names, 2):
        rho = spearmanr(_upper(matrices[a]), _upper(matrices[b])).statistic
        pairs[f"{a} vs {b}"] = float(rho)
    return {"spearman": pairs, "sanity": {n: sanity_orders(m) for n, m in matrices.items()},
            "groups": {n: group_means(m) for n, m in matrices.items()}}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| matrices | Spearman rho |", "|---|---:|"]
    lines += [f"| {pair} | {rho:.3f} |" for pair, rho in result["spearman"].items()]
    checks = list(next(iter(result["sanity"].values()), {}))
    lines += ["", "| matrix | " + " | ".join(checks) + " | worn together | look alike |",
              "|---|" + "---|" * len(checks) + "---:|---:|"]
    for name, ok in result["sanity"].items():
        g = result["groups"][name]
        lines.append(f"| {name} | " + " | ".join("yes" if ok[c] else "no" for c in checks)
                     + f" | {g['worn together']:.3f} | {g['look alike']:.3f} |")
    return "\n".join(lines) + "\n"
