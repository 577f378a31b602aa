"""Single-label metrics: accuracy, per-class accuracy, confusion matrix, mistake severity.

Mistake severity follows Bertinetto et al., "Making Better Mistakes", CVPR 2020 (see
docs/metrics.md): with a class distance d (K, K), d[i, j] the cost of predicting j for true
class i,
- average mistake severity = mean of d[y, y_hat] over the misclassified samples only;
- average hierarchical distance@k = mean over all samples of the mean of d[y, j] over the k
  classes j with the highest predicted probability (the correct class, if among them, counts
  with d[y, y], normally 0).

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
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix, as a JSON-serialisable dict.

    y_true, y_pred: (N,) integer class indices in [0, num_classes) (numpy or torch).
    Returns "classes" (K names, default "0" .. "K-1"), "accuracy" (float in [0, 1]),
    "per_class_accuracy" (K floats: the recall of each class, None for a class with no sample
    in y_true) and "confusion_matrix" (K x K ints, row = true, column = predicted).
    """
    names = [str(k) for k in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise CnnrnnError(
            f"class_names has {len(names)} entries for {num_classes} classes; pass one per class"
        )
    cm = confusion_matrix(y_true, y_pred, num_classes)  # (K, K)
    support = cm.sum(axis=1)  # (K,)
    correct = np.diag(cm)  # (K,)
    return {
        "classes": names,
        "accuracy": float(correct.sum() / cm.sum()),
        "per_class_accuracy": [
            float(c / n) if n > 0 else None for c, n in zip(correct, support, strict=True)
        ],
        "confusion_matrix": cm.tolist(),
    }


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


def hierarchical_distance_at_k(y_true: Any, probs: Any, distance: Any, k: int) -> float:
    """Mean over all samples of the mean distance[y_true, j] over the top-k classes j.

    y_true: (N,) class indices; probs: (N, K) scores, higher = more likely (probabilities or
    logits); distance: (K, K), row = true class; k in [1, K]. Equal scores are ranked by class
    index, lowest first.
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
    top_k = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (N, k)
    return float(d[t[:, None], top_k].mean())
