"""The co-occurrence protocol: does a model find a label without its usual context?

After Singh et al., "Don't Judge an Object by Its Context" (CVPR 2020), sec. 5, whose test
distributions per biased category b with context c are "exclusive" (b without c) and
"co-occur" (b with c), each scored together with all the images without b. Here a class has a
set of usual partners instead of one context class, taken from the run's TRAINING label prior
(never from test data). docs/metrics.md, "Co-occurrence protocol", has every definition; in
short, with the training prior's exact pair frequencies P(i and j) (`Prior.pair_frequencies`):

- usual partners of class i: every j != i with P(j | i) >= `min_rate` (default 0.2) and
  P(j | i) > P(j), i.e. j appears in at least a fifth of the training mosaics that hold i, and
  more often there than in mosaics at large. Under a prior that draws labels independently a
  class has none.
- most frequent partner of i: the j != i of largest P(i and j) (ties: the lower index).
- per class c, on the test mosaics: positives of the "exclusive" split hold c and none of c's
  usual partners, positives of the "co-occur" split hold c and at least one; both splits share
  the negatives, every test mosaic without c. F1, recall and AP of c's own decisions and scores
  on each split's positives plus negatives; gap = co-occur minus exclusive (a positive gap:
  the class is found more easily in its usual company).
- conditional false-positive rate of c: P(c emitted | c absent, c's most frequent partner
  present), beside the plain P(c emitted | c absent).
- a number computed on fewer than `min_count` mosaics (a split's positives, or the mosaics
  the conditional rate counts) is None, with the count beside it.
- pair overlap of a test prior with the training prior: each prior's pair frequencies over
  the pairs i < j, normalised to sum 1 (the share of a prior's co-occurring label pairs that
  are {i, j}), and overlap = sum over pairs of min(q_test, q_train): the share of the test
  mosaics' co-occurring label pairs, weighted by frequency, that the training prior produces
  at least as often. 1 for the training prior itself, 0 when no pair is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnrnn.errors import CnnrnnError
from cnnrnn.metrics.multilabel import _binary_matrix, _scores_matrix, average_precision_per_label

MIN_RATE = 0.2  # P(j | i) of a usual partner
MIN_COUNT = 20  # mosaics a number needs; fewer: None, with the count shown
SPLITS = ("exclusive", "co-occur")


def _pairs(pairs: Any) -> np.ndarray:
    p = np.asarray(pairs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or not np.allclose(p, p.T):
        raise CnnrnnError(f"pair frequencies have shape {p.shape}; pass a symmetric (K, K) "
                          "matrix of P(i and j present), P(i present) on its diagonal")
    return p


def conditional_rates(pairs: Any) -> np.ndarray:
    """(K, K) P(j | i) = P(i and j) / P(i) from pair frequencies (0 where P(i) = 0)."""
    p = _pairs(pairs)
    freq = np.diag(p)
    return np.divide(p, freq[:, None], out=np.zeros_like(p), where=freq[:, None] > 0)


def usual_partners(pairs: Any, min_rate: float = MIN_RATE) -> np.ndarray:
    """(K, K) bool, [i, j]: j is a usual partner of i (module docstring)."""
    if not 0.0 < min_rate <= 1.0:
        raise CnnrnnError(f"the partner rate must be in (0, 1], got {min_rate}")
    cond = conditional_rates(pairs)
    freq = np.diag(_pairs(pairs))
    partners = (cond >= min_rate) & (cond > freq[None, :])
    np.fill_diagonal(partners, False)
    return partners


def most_frequent_partner(pairs: Any) -> np.ndarray:
    """(K,) int: for each class the other class it co-occurs with most (lower index on ties);
    -1 for a class that co-occurs with none."""
    p = _pairs(pairs).copy()
    np.fill_diagonal(p, -1.0)
    best = p.argmax(1)  # the first maximum: the lower index
    return np.where(p[np.arange(len(p)), best] > 0, best, -1)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def split_scores(y_true: Any, y_pred: Any, scores: Any, partners: np.ndarray,
                 min_count: int = MIN_COUNT) -> list[dict[str, Any]]:
    """Per class: {"exclusive": {...}, "co-occur": {...}, "gap": {...}}, each split with
    "positives" and "negatives" (counts) and "f1", "recall", "ap" (None below `min_count`
    positives); "gap" holds co-occur minus exclusive for f1 and ap (None if either is).

    y_true, y_pred: (N, K) {0, 1}; scores: (N, K); partners: (K, K) bool (`usual_partners`).
    """
    t = _binary_matrix(y_true, "y_true")
    p = _binary_matrix(y_pred, "y_pred")
    s = _scores_matrix(scores, t.shape)
    if p.shape != t.shape or partners.shape != (t.shape[1], t.shape[1]):
        raise CnnrnnError(f"y_pred {p.shape} and partners {partners.shape} do not fit y_true "
                          f"{t.shape}")
    out = []
    for c in range(t.shape[1]):
        absent = ~t[:, c]  # the negatives of both splits
        with_partner = t[:, partners[c]].any(1)
        row: dict[str, Any] = {}
        for split, positive in zip(SPLITS, (t[:, c] & ~with_partner, t[:, c] & with_partner),
                                   strict=True):
            n_pos, n_neg = int(positive.sum()), int(absent.sum())
            cell: dict[str, Any] = {"positives": n_pos, "negatives": n_neg,
                                    "f1": None, "recall": None, "ap": None}
            if n_pos >= min_count:
                tp = int(p[positive, c].sum())
                fp = int(p[absent, c].sum())
                keep = positive | absent
                cell.update(f1=_f1(tp, fp, n_pos - tp), recall=tp / n_pos,
                            ap=float(average_precision_per_label(t[keep][:, [c]],
                                                                 s[keep][:, [c]])[0]))
            row[split] = cell
        row["gap"] = {k: (None if row["exclusive"][k] is None or row["co-occur"][k] is None
                          else row["co-occur"][k] - row["exclusive"][k]) for k in ("f1", "ap")}
        out.append(row)
    return out


def conditional_false_positives(y_true: Any, y_pred: Any, partner: np.ndarray,
                                min_count: int = MIN_COUNT) -> list[dict[str, Any]]:
    """Per class c with partner q = partner[c]: "rate" = P(c emitted | c absent, q present)
    over "n" such mosaics (None below `min_count`, or with no partner, q = -1), and
    "base_rate" = P(c emitted | c absent) over "n_absent" mosaics."""
    t = _binary_matrix(y_true, "y_true")
    p = _binary_matrix(y_pred, "y_pred")
    out = []
    for c, q in enumerate(np.asarray(partner).tolist()):
        absent = ~t[:, c]
        given = absent & t[:, q] if q >= 0 else np.zeros_like(absent)
        n, n_absent = int(given.sum()), int(absent.sum())
        out.append({"partner": int(q), "n": n,
                    "rate": float(p[given, c].mean()) if n >= min_count else None,
                    "n_absent": n_absent,
                    "base_rate": float(p[absent, c].mean()) if n_absent >= min_count
                    else None})
    return out


def pair_overlap(train_pairs: Any, test_pairs: Any) -> float:
    """Sum over label pairs i < j of min(q_test, q_train), q a prior's pair frequencies
    normalised to sum 1 (module docstring); NaN if either prior never pairs two labels."""
    a, b = _pairs(train_pairs), _pairs(test_pairs)
    if a.shape != b.shape:
        raise CnnrnnError(f"pair frequencies of {a.shape} and {b.shape} labels do not compare")
    upper = np.triu_indices(len(a), 1)
    qa, qb = a[upper], b[upper]
    if qa.sum() <= 0 or qb.sum() <= 0:
        return float("nan")
    return float(np.minimum(qa / qa.sum(), qb / qb.sum()).sum())


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def cooccurrence_protocol(y_true: Any, y_pred: Any, scores: Any, train_pairs: Any,
                          names: Sequence[str], min_rate: float = MIN_RATE,
                          min_count: int = MIN_COUNT) -> dict[str, Any]:
    """The whole protocol of one evaluation: per class its usual partners (by name), the two
    splits, the gap and the conditional false-positive rate; and a summary, the means over
    the classes where each number is defined ("gap" means over classes with both splits)."""
    pairs = _pairs(train_pairs)
    if len(names) != len(pairs):
        raise CnnrnnError(f"{len(names)} names for {len(pairs)} labels")
    partners = usual_partners(pairs, min_rate)
    partner = most_frequent_partner(pairs)
    cond = conditional_rates(pairs)
    splits = split_scores(y_true, y_pred, scores, partners, min_count)
    fps = conditional_false_positives(y_true, y_pred, partner, min_count)
    classes = []
    for c, name in enumerate(names):
        q = fps[c]["partner"]
        classes.append({
            "class": name,
            "partners": [names[j] for j in np.flatnonzero(partners[c])],
            "partner_rates": {names[j]: float(cond[c, j]) for j in np.flatnonzero(partners[c])},
            **splits[c],
            "false_positive": {**fps[c], "partner": names[q] if q >= 0 else None}})
    summary: dict[str, Any] = {}
    for key in ("f1", "ap"):
        for split in (*SPLITS, "gap"):
            summary[f"{split}_{key}"] = _mean([c[split][key] for c in classes])
    summary["conditional_fp_rate"] = _mean([c["false_positive"]["rate"] for c in classes])
    summary["base_fp_rate"] = _mean([c["false_positive"]["base_rate"] for c in classes])
    return {"min_rate": min_rate, "min_count": min_count, "classes": classes,
            "summary": summary}
