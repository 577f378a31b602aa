"""Multi-label metrics: the CNN-RNN paper protocol, macro-F1, mAP, exact match, Hamming loss.

Definitions follow docs/metrics.md. With TP_k, FP_k, FN_k counted per label k over the whole
evaluation set (K labels):

- per-label precision P_k = TP_k / (TP_k + FP_k), recall R_k = TP_k / (TP_k + FN_k),
  F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k).
- C-P = mean_k P_k, C-R = mean_k R_k, C-F1 = 2 C-P C-R / (C-P + C-R): the harmonic mean of the
  averaged precision and recall, as in the CNN-RNN paper and ML-GCN's util.py. This is NOT
  scikit-learn's macro F1, which is reported separately as "macro-F1" = mean_k F1_k.
- O-P = sum TP / sum (TP + FP), O-R = sum TP / sum (TP + FN), O-F1 = their harmonic mean
  (= scikit-learn's micro precision, recall and F1).
- AP_k: average precision of the scores of label k, computed as scikit-learn's
  `average_precision_score` does (sum over distinct score thresholds, highest first, of the
  recall gained times the precision there; tied scores form one threshold). mAP = mean_k AP_k.
- top-3 protocol (Wang et al.'s CNN-RNN and ML-GCN tables on MS-COCO): the label set of each
  sample is replaced by its 3 top-scored labels (all K when K < 3; of tied scores the lower
  label index first), whatever the model decided, and C-P, C-R, C-F1, O-P, O-R, O-F1 are
  computed from those sets as above, reported as "top3_C-P" ... "top3_O-F1".
- exact_match: fraction of samples whose whole predicted label set equals the true one.
- hamming_loss: fraction of the N * K (sample, label) entries predicted wrongly.

Undefined ratios (0/0) are defined as follows, so every number is finite:
- a ratio whose denominator is 0 is 0, as scikit-learn's `zero_division=0`: a label never
  predicted has P_k = 0; a label never present has R_k = 0; a label never present and never
  predicted has P_k = R_k = F1_k = 0, and all of them still count in C-P, C-R and macro-F1
  (every label is averaged, as ML-GCN and scikit-learn do). O-P is 0 when nothing is predicted,
  O-R is 0 when nothing is present, and a harmonic mean of two zeros is 0.
- AP_k of a label with no positive sample in y_true is undefined (its recall is 0/0): it is
  reported as None (JSON null) and left out of mAP. scikit-learn instead scores such a label 0
  and averages it in; the two agree whenever every label occurs. mAP is None if no label occurs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnrnn.errors import CnnrnnError
from cnnrnn.metrics.arrays import as_array


def _binary_matrix(x: Any, name: str) -> np.ndarray:
    """Validate an (N, K) {0, 1} matrix and return it as bool."""
    arr = as_array(x, name)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CnnrnnError(
            f"{name} has shape {arr.shape}; pass a non-empty (N samples, K labels) array"
        )
    if arr.dtype != bool and not ((arr == 0) | (arr == 1)).all():
        raise CnnrnnError(f"{name} holds values other than 0 and 1; pass multi-hot labels")
    return arr.astype(bool)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _harmonic_mean(a: float, b: float) -> float:
    return float(_ratio(2 * a * b, a + b))


def _scores_matrix(scores: Any, shape: tuple[int, ...]) -> np.ndarray:
    s = as_array(scores, "scores").astype(np.float64)
    if s.shape != shape:
        raise CnnrnnError(
            f"scores has shape {s.shape} but y_true has shape {shape}; pass one score per label"
        )
    if np.isnan(s).any():
        raise CnnrnnError("scores contain NaN; check the model outputs before evaluating")
    return s


def average_precision_per_label(y_true: Any, scores: Any) -> np.ndarray:
    """Average precision of each label's scores, vectorised over labels.

    y_true: (N, K) {0, 1}; scores: (N, K) float, higher = more likely (+-inf allowed).
    Returns (K,) float64: AP_k as scikit-learn's `average_precision_score`, NaN for a label
    with no positive sample.
    """
    t = _binary_matrix(y_true, "y_true")
    s = _scores_matrix(scores, t.shape)
    order = np.argsort(-s, axis=0, kind="stable")  # (N, K), highest score first
    s_sorted = np.take_along_axis(s, order, axis=0)  # (N, K)
    t_sorted = np.take_along_axis(t, order, axis=0)  # (N, K)
    tp = np.cumsum(t_sorted, axis=0)  # (N, K), true positives among the top i+1
    precision = tp / np.arange(1, len(s) + 1)[:, None]  # (N, K)
    # Tied scores form one threshold: each sample takes the precision at the end of its tie
    # group, i.e. at the last row j >= i with s_sorted[j] != s_sorted[j + 1].
    n = len(s)
    is_end = np.ones_like(t_sorted)  # (N, K)
    is_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    end = np.where(is_end, np.arange(n)[:, None], n - 1)  # (N, K)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    precision_at_threshold = np.take_along_axis(precision, end, axis=0)  # (N, K)
    # Each positive adds 1/n_pos recall at its threshold, weighted by the precision there.
    n_pos = t.sum(axis=0)  # (K,)
    ap_sum = (t_sorted * precision_at_threshold).sum(axis=0)  # (K,)
    return np.where(n_pos > 0, ap_sum / np.maximum(n_pos, 1), np.nan)


def top_k_labels(scores: Any, k: int = 3) -> np.ndarray:
    """(N, K) scores -> (N, K) bool, the k top-scored labels of each row (all of them when
    K <= k); of tied scores the lower label index is taken first."""
    s = as_array(scores, "scores").astype(np.float64)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (N, min(k, K))
    out = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def paper_protocol(t: np.ndarray, p: np.ndarray, prefix: str = "") -> dict[str, float]:
    """C-P, C-R, C-F1, O-P, O-R, O-F1 of the predicted sets p against the true sets t, both
    (N, K) bool, under the names `prefix` + "C-P" and so on (module docstring)."""
    tp = (t & p).sum(axis=0)  # (K,)
    fp = (~t & p).sum(axis=0)  # (K,)
    fn = (t & ~p).sum(axis=0)  # (K,)
    c_p, c_r = float(_ratio(tp, tp + fp).mean()), float(_ratio(tp, tp + fn).mean())
    o_p = float(_ratio(tp.sum(), (tp + fp).sum()))
    o_r = float(_ratio(tp.sum(), (tp + fn).sum()))
    values = {"C-P": c_p, "C-R": c_r, "C-F1": _harmonic_mean(c_p, c_r),
              "O-P": o_p, "O-R": o_r, "O-F1": _harmonic_mean(o_p, o_r)}
    return {prefix + name: v for name, v in values.items()}


def multilabel_metrics(
    y_true: Any, y_pred: Any, scores: Any, label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """All multi-label metrics of one evaluation set, as a JSON-serialisable dict.

    y_true, y_pred: (N, K) arrays or tensors of {0, 1} (any int, float or bool dtype):
    true and predicted label sets. scores: (N, K) float per-label scores, higher = more likely
    (probabilities, logits or log-probabilities; only their order per label matters; +-inf is
    allowed, NaN is an error). label_names: K names, default "0" .. "K-1".

    Returns plain floats in [0, 1] under "C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1",
    the same six under the top-3 protocol ("top3_C-P" ... "top3_O-F1", from the scores),
    "macro-F1", "mAP" (None if no label occurs), "exact_match" and "hamming_loss", and
    "per_label": {name: {"precision", "recall", "f1", "ap" (None if the label never
    occurs), "support" (int, number of samples with the label)}}. The module docstring defines
    each metric and every 0/0 case.
    """
    t = _binary_matrix(y_true, "y_true")  # (N, K)
    p = _binary_matrix(y_pred, "y_pred")  # (N, K)
    if p.shape != t.shape:
        raise CnnrnnError(
            f"y_pred has shape {p.shape} but y_true has shape {t.shape}; "
            "pass both over the same samples and labels"
        )
    ap = average_precision_per_label(t, scores)  # (K,), NaN where undefined
    num_labels = t.shape[1]
    names = [str(k) for k in range(num_labels)] if label_names is None else list(label_names)
    if len(names) != num_labels or len(set(names)) != num_labels:
        raise CnnrnnError(
            f"label_names has {len(names)} entries ({len(set(names))} distinct) but there are "
            f"{num_labels} labels; pass one distinct name per label"
        )

    tp = (t & p).sum(axis=0)  # (K,)
    fp = (~t & p).sum(axis=0)  # (K,)
    fn = (t & ~p).sum(axis=0)  # (K,)
    precision = _ratio(tp, tp + fp)  # (K,)
    recall = _ratio(tp, tp + fn)  # (K,)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)  # (K,)

    present = ~np.isnan(ap)
    return {
        **paper_protocol(t, p),
        **paper_protocol(t, top_k_labels(scores, 3), "top3_"),
        "macro-F1": float(f1.mean()),
        "mAP": float(ap[present].mean()) if present.any() else None,
        "exact_match": float((t == p).all(axis=1).mean()),
        "hamming_loss": float((t != p).mean()),
        "per_label": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "ap": float(ap[k]) if present[k] else None,
                "support": int(tp[k] + fn[k]),
            }
            for k, name in enumerate(names)
        },
    }
