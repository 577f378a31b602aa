"""How bad the mistakes are, under a class-cost matrix C (K, K), rows = true class.

Single label (Bertinetto et al., "Making Better Mistakes", CVPR 2020; docs/metrics.md):
- mistake_severity: mean C[y, y_hat] over the misclassified samples only (NaN without mistakes);
- hdist@k: mean over all samples of the mean C[y, j] over the k top-scored classes j;
both overall and per true class.

Multilabel (set severity): in each mosaic the false positives are matched to the false negatives
at the least total cost (scipy.optimize.linear_sum_assignment); `swap_cost` is the mean cost of
the matched pairs (how bad the swaps are), and the unmatched false positives and negatives are
counted (labels added or missed outright).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnrnn.errors import CnnrnnError
from cnnrnn.metrics.arrays import as_array
from cnnrnn.metrics.single_label import hierarchical_distance_at_k, mistake_severity


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def severity_metrics(y_true: Any, y_pred: Any, probs: Any, costs: Any,
                     class_names: Sequence[str]) -> dict[str, Any]:
    """mistake_severity, hdist@1, hdist@3, and the same per true class (JSON-ready)."""
    t = as_array(y_true, "y_true").astype(np.int64)
    p = as_array(y_pred, "y_pred").astype(np.int64)
    s = as_array(probs, "probs")
    c = as_array(costs, "costs")
    out: dict[str, Any] = {
        "mistake_severity": _nan_to_none(mistake_severity(t, p, c)),
        "hdist@1": hierarchical_distance_at_k(t, s, c, 1),
        "hdist@3": hierarchical_distance_at_k(t, s, c, 3),
    }
    per_class = {}
    for k, name in enumerate(class_names):
        mask = t == k
        if not mask.any():
            per_class[name] = None
            continue
        per_class[name] = {
            "mistake_severity": _nan_to_none(mistake_severity(t[mask], p[mask], c)),
            "hdist@1": hierarchical_distance_at_k(t[mask], s[mask], c, 1),
            "hdist@3": hierarchical_distance_at_k(t[mask], s[mask], c, 3)}
    out["per_class_severity"] = per_class
    return out


def set_severity(y_true: Any, y_pred: Any, costs: Any) -> dict[str, Any]:
    """Matched swap cost and unmatched errors of multilabel predictions (N, K) multi-hot."""
    from scipy.optimize import linear_sum_assignment

    t = as_array(y_true, "y_true") != 0
    p = as_array(y_pred, "y_pred") != 0
    c = np.asarray(as_array(costs, "costs"), dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2 or c.shape != (t.shape[1], t.shape[1]):
        raise CnnrnnError(f"label sets {t.shape} and {p.shape} with costs {c.shape}: pass two "
                          "(N, K) multi-hot arrays and a (K, K) cost matrix")
    total, matched, extra_fp, extra_fn = 0.0, 0, 0, 0
    for truth, pred in zip(t, p, strict=True):
        fp = np.flatnonzero(pred & ~truth)  # predicted, not there
        fn = np.flatnonzero(truth & ~pred)  # there, not predicted
        if len(fp) and len(fn):
            rows, cols = linear_sum_assignment(c[np.ix_(fn, fp)])  # true -> predicted
            total += c[fn[rows], fp[cols]].sum()
            matched += len(rows)
        n = min(len(fp), len(fn))
        extra_fp += len(fp) - n
        extra_fn += len(fn) - n
    return {"swap_cost": total / matched if matched else None, "swaps": matched,
            "unmatched_false_positives": extra_fp, "unmatched_false_negatives": extra_fn}
