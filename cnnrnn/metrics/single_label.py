"""Single-label metrics: accuracy, per-class accuracy, confusion matrix, mistake severity.

Mistake severity follows Bertinetto et al., "Making Better Mistakes", CVPR 2020 (see
docs/metrics.md): with a class distance d (K, K), d[i, j] the cost of predicting j for true
class i,
- average mistake severity = mean of d[y, y_hat] over the misclassified samples only;
- average hierarchical distance@k = mean over all samples of the mean of d[y, j] over the k
  classes j ranked first by the decision rule (the correct class, if among them, counts
  with d[y, y], normally 0): the highest probability under argmax, the least expected cost
  sum_i p_i d[i, j] under CRM (Karthik et al., ICLR 2021), so hdist@1 is always the cost of
  the class actually predicted.
Expected calibration error (Guo et al., ICML 2017): 15 equal-width bins of the top
probability; see expected_calibration_error.

Undefined cases: the accuracy of a class with no sample in y_true is None (JSON null), not 0,
because nothing was measured; the mistake severity of a set with no mistakes is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnrnn.errors import CnnrnnError
from cnnrnn.metrics.arrays import as_array


def _class_indices(x: Any, name: str, num_classes: int) -> np.ndarray:
    """Validate a non-empty (N,) array of integer class indices in [0, num_classes)."""
    arr = as_array(x, name)
    if arr.ndim != 1 or arr.size == 0:
        raise CnnrnnError(f"{name} has shape {arr.shape}; pass a non-empty (N,) array of classes")
    if not np.issubdtype(arr.dtype, np.integer):
        raise CnnrnnError(f"{name} has dtype {arr.dtype}; pass integer class indices")
    if arr.min() < 0 or arr.max() >= num_classes:
        raise CnnrnnError(
            f"{name} holds classes from {arr.min()} to {arr.max()}; "
            f"expected 0 .. {num_classes - 1} ({num_classes} classes)"
        )
    return arr.astype(np.int64)


def _pair(y_true: Any, y_pred: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = _class_indices(y_true, "y_true", num_classes)
    p = _class_indices(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise CnnrnnError(
            f"y_true has {len(t)} samples but y_pred has {len(p)}; pass one prediction per sample"
        )
    return t, p


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int = 10) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    t, p = _pair(y_true, y_pred, num_classes)
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def normalized_confusion(cm: Any) -> np.ndarray:
    """A confusion matrix (K, K) with each row divided by its sum (row = true class).

    Rows then sum to 1 (the recall of each class is on the diagonal); a row with no samples
    stays all zero. Returns float64 (K, K).
    """
    cm = as_array(cm, "cm").astype(np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or (cm < 0).any():
        raise CnnrnnError(f"cm has shape {cm.shape}; pass a square matrix of non-negative counts")
    rows = cm.sum(axis=1, keepdims=True)  # (K, 1)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def single_label_metrics(
    y_true: Any,
    y_pred: Any,
    num_classes: int = 10,
    class_names: Sequence[str] | None = None,
    probs: Any = None,
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix, as a JSON-serialisable dict.

    y_true, y_pred: (N,) integer class indices in [0, num_classes) (numpy or torch).
    Returns "classes" (K names, default "0" .. "K-1"), "accuracy" (float in [0, 1]),
    "per_class_accuracy" (K floats: the recall of each class, None for a class with no sample
    in y_true) and "confusion_matrix" (K x K ints, row = true, column = predicted).
    With probs (N, K) probabilities, also "ece" (expected_calibration_error).
    """
    names = [str(k) for k in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise CnnrnnError(
            f"class_names has {len(names)} entries for {num_classes} classes; pass one per class"
        )
    cm = confusion_matrix(y_true, y_pred, num_classes)  # (K, K)
    support = cm.sum(axis=1)  # (K,)
    correct = np.diag(cm)  # (K,)
    out = {
        "classes": names,
        "accuracy": float(correct.sum() / cm.sum()),
        "per_class_accuracy": [
            float(c / n) if n > 0 else None for c, n in zip(correct, support, strict=True)
        ],
        "confusion_matrix": cm.tolist(),
    }
    if probs is not None:
        out["ece"] = expected_calibration_error(y_true, probs)
    return out


ECE_BINS = 15  # Guo et al. 2017 and most papers since; comparable numbers need the same bins


def expected_calibration_error(y_true: Any, probs: Any, bins: int = ECE_BINS) -> float:
    """sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)| (Guo et al., ICML 2017).

    y_true: (N,) class indices; probs: (N, K) probabilities. The confidence of a sample is its
    top probability and it counts as right when that class is y_true (the argmax, whatever
    decision rule picks the reported label: ECE is a property of the probabilities). Bin b of
    `bins` equal-width bins holds the confidences in ((b - 1) / bins, b / bins]; empty bins
    add nothing.
    """
    p = as_array(probs, "probs").astype(np.float64)
    if p.ndim != 2 or not np.isfinite(p).all():
        raise CnnrnnError(f"probs has shape {p.shape}; pass finite (N, K) probabilities")
    t = _class_indices(y_true, "y_true", p.shape[1])  # (N,)
    if len(t) != len(p):
        raise CnnrnnError(f"y_true has {len(t)} samples but probs has {len(p)}; pass one row "
                          "of probabilities per sample")
    confidence = p.max(1)  # (N,)
    right = p.argmax(1) == t  # (N,)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # side="left": a confidence on an edge goes to the bin below, as the (lo, hi] bins say
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (N,)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.sum() * abs(right[inside].mean() - confidence[inside].mean())
    return float(gap / len(t))


def _distance_matrix(distance: Any) -> np.ndarray:
    d = as_array(distance, "distance").astype(np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or not np.isfinite(d).all():
        raise CnnrnnError(
            f"distance has shape {d.shape}; pass a finite (K, K) matrix of class distances"
        )
    return d


def mistake_severity(y_true: Any, y_pred: Any, distance: Any) -> float:
    """Mean distance[y_true, y_pred] over the misclassified samples only (Bertinetto et al.).

    y_true, y_pred: (N,) class indices; distance: (K, K), row = true class. Returns NaN when
    there is no mistake (the mean over an empty set), so it is never mistaken for "mild".
    """
    d = _distance_matrix(distance)
    t, p = _pair(y_true, y_pred, len(d))
    wrong = t != p  # (N,)
    return float(d[t[wrong], p[wrong]].mean()) if wrong.any() else float("nan")


DECISIONS = ("argmax", "crm")


def hierarchical_distance_at_k(y_true: Any, probs: Any, distance: Any, k: int,
                               decision: str = "argmax") -> float:
    """Mean over all samples of the mean distance[y_true, j] over the top-k classes j.

    y_true: (N,) class indices; probs: (N, K) scores, higher = more likely; distance: (K, K),
    row = true class; k in [1, K]. The top k are those the decision rule ranks first:
    "argmax" ranks by score, highest first (probabilities or logits); "crm" by the expected
    cost probs @ distance, lowest first (probs must then be probabilities), as Karthik et al.'s
    reference does: the top 1 is then the CRM prediction. Ties go to the lowest class index.
    """
    d = _distance_matrix(distance)
    num_classes = len(d)
    t = _class_indices(y_true, "y_true", num_classes)  # (N,)
    s = as_array(probs, "probs").astype(np.float64)
    if s.shape != (len(t), num_classes):
        raise CnnrnnError(
            f"probs has shape {s.shape}; pass one score per class, shape ({len(t)}, {num_classes})"
        )
    if np.isnan(s).any():
        raise CnnrnnError("probs contain NaN; check the model outputs before evaluating")
    if not 1 <= k <= num_classes:
        raise CnnrnnError(f"k is {k}; pass k between 1 and the number of classes, {num_classes}")
    if decision not in DECISIONS:
        raise CnnrnnError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    # rank by "goodness", highest first: the score, or minus the expected cost of each choice
    goodness = s if decision == "argmax" else -(s @ d)  # (N, K)
    top_k = np.argsort(-goodness, axis=1, kind="stable")[:, :k]  # (N, k)
    return float(d[t[:, None], top_k].mean())
