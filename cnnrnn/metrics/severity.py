"""How bad the mistakes are, under a class-cost matrix C (K, K), rows = true class.

Single label (Bertinetto et al., "Making Better Mistakes", CVPR 2020; docs/metrics.md):
- mistake_severity: mean C[y, y_hat] over the misclassified samples only (NaN without mistakes);
- hdist@k: mean over all samples of the mean C[y, j] over the k classes j the decision rule
  ranks first (highest probability under argmax, least expected cost under CRM);
both overall and per true class; and the expected calibration error of the probabilities.

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
from cnnrnn.metrics.single_label import (
    expected_calibration_error,
    hierarchical_distance_at_k,
    mistake_severity,
)


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


HDIST_K = (1, 3, 5)  # hdist@5 is what Bertinetto et al. and Karthik et al. report


def _hdists(t: np.ndarray, scores: np.ndarray, c: np.ndarray, decision: str
            ) -> dict[str, float]:
    return {f"hdist@{k}": hierarchical_distance_at_k(t, scores, c, k, decision)
            for k in HDIST_K}


def severity_metrics(y_true: Any, y_pred: Any, probs: Any, costs: Any,
                     class_names: Sequence[str], decision: str = "argmax",
                     expected_cost: Any = None) -> dict[str, Any]:
    """mistake_severity, hdist@1, @3, @5 and ECE, and the first four per true class
    (JSON-ready).

    y_true, y_pred: (N,) class indices; probs: (N, K) probabilities; costs: (K, K), row = true
    class. hdist@k ranks the classes by the decision rule that made y_pred: by probability
    ("argmax") or by expected cost, lowest first ("crm"), so that hdist@1 = (1 - accuracy) x
    mistake_severity either way. `expected_cost` (N, K), when given under "crm", is the one the
    decision used: ranking by it, not by a recomputed probs @ costs, keeps the top 1 equal to
    y_pred where float rounding breaks a near tie differently.
    """
    t = as_array(y_true, "y_true").astype(np.int64)
    p = as_array(y_pred, "y_pred").astype(np.int64)
    s = as_array(probs, "probs")
    c = as_array(costs, "costs")
    scores = s
    if decision == "crm" and expected_cost is not None:
        # minus the cost, highest first, is the decision's own ranking (ties: lowest index)
        scores, decision = -as_array(expected_cost, "expected_cost").astype(np.float64), "argmax"
    out: dict[str, Any] = {"mistake_severity": _nan_to_none(mistake_severity(t, p, c)),
                           **_hdists(t, scores, c, decision),
                           "ece": expected_calibration_error(t, s)}
    per_class = {}
    for k, name in enumerate(class_names):
        mask = t == k
        if not mask.any():
            per_class[name] = None
            continue
        per_class[name] = {
            "mistake_severity": _nan_to_none(mistake_severity(t[mask], p[mask], c)),
            **_hdists(t[mask], scores[mask], c, decision)}
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
