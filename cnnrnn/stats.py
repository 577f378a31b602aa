"""Statistics over seeds and paired tests on a fixed test set (docs/metrics.md, "Statistics").

- `summary`: n, mean, standard deviation (ddof=1) and the 95 % t-interval of the mean of one
  metric over seeds (scipy.stats.t).
- `paired_bootstrap`: two groups of runs (one per seed each) evaluated on the same items in the
  same order. Each resample draws N item indices with replacement, the same draw for every run
  of both groups; each metric is recomputed for every run on it, and the difference of the two
  groups' seed means is kept. The interval is the 2.5 and 97.5 percentiles of B differences.
- `mcnemar`: exact McNemar test (scipy.stats.binomtest on the discordant pairs) of two runs'
  per-item correctness (top-1 correct, or the whole label set right).
- `verdict`: "A wins", "B wins" or "tie", by whether the interval of A - B excludes 0, in the
  metric's better direction.

A resample is a vector of counts w (how often each item was drawn), so a metric that is a
ratio of sums over items (accuracy, exact match, O-F1 and C-F1 from TP/FP/FN counts, the mean
cost of the mistakes, hdist@k) is `combine(W @ per_item)` for a whole block of resamples at
once. mAP sorts each label's scores once per run and weights the sorted items by w (the same as
average precision on the resampled items, ties included); tests check every such formula
against `cnnrnn.metrics` on an explicit resample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from cnnrnn.errors import CnnrnnError
from cnnrnn.metrics.multilabel import top_k_labels
from cnnrnn.metrics.severity import set_severity

Samples = dict[str, np.ndarray]  # y_true, y_pred, scores (cnnrnn.evaluate.evaluate_samples)
BLOCK = 2_000_000  # resample counts held at once (block of resamples x items), ~16 MB


def summary(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """n, mean, sd (ddof=1) and the t-interval of the mean; with one value sd and the interval
    are NaN, with no spread the interval is the mean itself."""
    x = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "ci": [float("nan")] * 2}
    sd = float(x.std(ddof=1))
    if sd == 0:
        return {"n": n, "mean": mean, "sd": 0.0, "ci": [mean, mean]}
    low, high = sps.t.interval(confidence, n - 1, loc=mean, scale=sd / np.sqrt(n))
    return {"n": n, "mean": mean, "sd": sd, "ci": [float(low), float(high)]}


# ---- metrics over resamples ------------------------------------------------------------------

def _ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """num / den, `empty` where den is 0 (as cnnrnn.metrics: 0, or NaN for severity)."""
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, empty),
                     where=den > 0)


@dataclass(frozen=True)
class Metric:
    """A metric recomputed on resamples: `prepare` turns one run's samples into per-item
    arrays once; `resampled(items, W)` gives its value under each row of counts W (B, N)."""

    name: str
    higher_is_better: bool
    prepare: Callable[[Samples, np.ndarray | None], Any]
    resampled: Callable[[Any, np.ndarray], np.ndarray]
    correct: Callable[[Samples], np.ndarray] | None = None  # per-item 0/1, for McNemar


def _sums(per_item: Callable[[Samples, np.ndarray | None], np.ndarray],
          combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
          ) -> tuple[Callable[..., Any], Callable[..., np.ndarray]]:
    """A metric that is a function of sums over items: combine(W @ per_item, W.sum(1))."""
    return per_item, lambda items, w: combine(w @ items, w.sum(1))


def _top1(s: Samples) -> np.ndarray:
    return (s["y_true"] == s["y_pred"]).astype(np.float64)


def _exact(s: Samples) -> np.ndarray:
    return (s["y_true"] == s["y_pred"]).all(1).astype(np.float64)


def _counts(s: Samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, p = s["y_true"] != 0, s["y_pred"] != 0  # (N, K)
    return ((t & p).astype(np.float64), (~t & p).astype(np.float64),
            (t & ~p).astype(np.float64))


def _o_f1(s: Samples, costs: np.ndarray | None) -> np.ndarray:
    return np.stack([c.sum(1) for c in _counts(s)], 1)  # (N, 3): TP, FP, FN per item


def _combine_o_f1(sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    tp, fp, fn = sums.T  # 2 O-P O-R / (O-P + O-R) = 2 TP / (2 TP + FP + FN), 0 when 0/0
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _top3_o_f1(s: Samples, costs: np.ndarray | None) -> np.ndarray:
    """O-F1's counts under the paper's top-3 protocol: the three top-scored labels of each
    item stand for its predicted set (cnnrnn.metrics.multilabel.top_k_labels)."""
    return _o_f1({**s, "y_pred": top_k_labels(s["scores"], 3)}, costs)


def _c_f1(s: Samples, costs: np.ndarray | None) -> np.ndarray:
    return np.concatenate(_counts(s), 1)  # (N, 3K): TP_k, FP_k, FN_k per item


def _combine_c_f1(sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    tp, fp, fn = np.split(sums, 3, axis=1)  # (B, K) each
    cp = _ratio(tp, tp + fp).mean(1)
    cr = _ratio(tp, tp + fn).mean(1)
    return _ratio(2 * cp * cr, cp + cr)


def _mistake_cost(s: Samples, costs: np.ndarray) -> np.ndarray:
    wrong = s["y_true"] != s["y_pred"]
    return np.stack([costs[s["y_true"], s["y_pred"]] * wrong, wrong], 1)  # (N, 2)


def _hdist(k: int) -> Callable[[Samples, np.ndarray], np.ndarray]:
    def per_item(s: Samples, costs: np.ndarray) -> np.ndarray:
        # the decision's order: probabilities, or the least expected cost first under CRM
        rank = s.get("ranking", s["scores"]).astype(np.float64)
        top_k = np.argsort(-rank, 1, kind="stable")[:, :k]  # (N, k)
        return costs[s["y_true"][:, None], top_k].mean(1, keepdims=True)  # (N, 1)
    return per_item


def _swap_cost(s: Samples, costs: np.ndarray) -> np.ndarray:
    """Per mosaic: the matched swaps' total cost and their number (set_severity per row)."""
    out = np.zeros((len(s["y_true"]), 2))
    for i, (t, p) in enumerate(zip(s["y_true"], s["y_pred"], strict=True)):
        if (t != p).any():
            m = set_severity(t[None], p[None], costs)
            out[i] = (m["swap_cost"] or 0.0) * m["swaps"], m["swaps"]
    return out


def _ap_prepare(s: Samples, costs: np.ndarray | None) -> list[tuple[np.ndarray, ...]]:
    """Per label: the items by score (highest first, stable); the ranks of the positives; and
    for each positive the last rank of its tie group (a threshold takes every item of equal
    score) and the last positive at or before that rank."""
    t = s["y_true"] != 0
    scores = s["scores"].astype(np.float64)
    n = len(t)
    out = []
    for k in range(t.shape[1]):
        order = np.argsort(-scores[:, k], kind="stable")
        ranked = scores[order, k]
        end = np.where(np.r_[ranked[:-1] != ranked[1:], True], np.arange(n), n - 1)
        end = np.minimum.accumulate(end[::-1])[::-1]  # (N,) last rank of each tie group
        pos = np.flatnonzero(t[order, k])  # (P,) ranks of the positives
        last_pos = np.searchsorted(pos, end[pos], side="right") - 1  # (P,)
        out.append((order, pos, end[pos], last_pos))
    return out


def _ap_resampled(labels: list[tuple[np.ndarray, ...]], w: np.ndarray) -> np.ndarray:
    """mAP under counts w (B, N): AP_k = sum over positives of w_i precision(threshold_i) /
    sum of their w_i, precision = counted positives / counted items up to the threshold."""
    # (N, B), rows move whole when items are reordered; float32 counts are exact below 2**24
    wt = np.ascontiguousarray(w.T, dtype=np.float32)
    aps = []
    for order, pos, pos_end, last_pos in labels:
        ranked = wt[order]  # (N, B) counts in score order
        seen = np.cumsum(ranked, 0)[pos_end]  # (P, B) items up to each positive's threshold
        wp = ranked[pos]  # (P, B)
        hits = np.cumsum(wp, 0)[last_pos]  # (P, B) positives up to it
        aps.append(_ratio((wp * _ratio(hits, seen)).sum(0), wp.sum(0), np.nan))  # (B,)
    ap = np.stack(aps, 1)  # (B, K), NaN where the label is absent from the resample
    present = ~np.isnan(ap)
    return _ratio(np.where(present, ap, 0).sum(1), present.sum(1), np.nan)


def _ece_prepare(s: Samples, costs: np.ndarray | None) -> np.ndarray:
    """(N, 2 * bins) per item: (right - confidence) and 1 in its confidence bin, else 0
    (cnnrnn.metrics.single_label.expected_calibration_error's bins and rule)."""
    from cnnrnn.metrics.single_label import ECE_BINS

    p = s["scores"].astype(np.float64)
    confidence = p.max(1)
    right = (p.argmax(1) == s["y_true"]).astype(np.float64)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, ECE_BINS - 1)
    onehot = np.eye(ECE_BINS)[which]  # (N, bins)
    return np.concatenate([onehot * (right - confidence)[:, None], onehot], 1)


def _ece_resampled(items: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_b |sum_{i in b} w_i (right_i - conf_i)| / sum_i w_i, per row of counts W (B, N)."""
    sums = w @ items  # (B, 2 * bins)
    gaps = np.abs(sums[:, :sums.shape[1] // 2]).sum(1)
    return _ratio(gaps, sums[:, sums.shape[1] // 2:].sum(1))


def _metric(name: str, higher: bool, pair: tuple[Callable[..., Any], Callable[..., Any]],
            correct: Callable[[Samples], np.ndarray] | None = None) -> Metric:
    return Metric(name, higher, pair[0], pair[1], correct)


METRICS: dict[str, Metric] = {m.name: m for m in (
    # single-label
    _metric("accuracy", True, _sums(lambda s, c: _top1(s)[:, None],
                                    lambda x, n: _ratio(x[:, 0], n)), _top1),
    _metric("mistake_severity", False, _sums(_mistake_cost,
                                             lambda x, n: _ratio(x[:, 0], x[:, 1], np.nan))),
    _metric("hdist@1", False, _sums(_hdist(1), lambda x, n: _ratio(x[:, 0], n))),
    _metric("hdist@3", False, _sums(_hdist(3), lambda x, n: _ratio(x[:, 0], n))),
    _metric("hdist@5", False, _sums(_hdist(5), lambda x, n: _ratio(x[:, 0], n))),
    _metric("ece", False, (_ece_prepare, _ece_resampled)),
    # multilabel
    _metric("exact_match", True, _sums(lambda s, c: _exact(s)[:, None],
                                       lambda x, n: _ratio(x[:, 0], n)), _exact),
    _metric("O-F1", True, _sums(_o_f1, _combine_o_f1)),
    _metric("C-F1", True, _sums(_c_f1, _combine_c_f1)),
    _metric("top3_O-F1", True, _sums(_top3_o_f1, _combine_o_f1)),
    _metric("mAP", True, (_ap_prepare, _ap_resampled)),
    _metric("hamming_loss", False, _sums(
        lambda s, c: (s["y_true"] != s["y_pred"]).mean(1, keepdims=True),
        lambda x, n: _ratio(x[:, 0], n))),
    _metric("swap_cost", False, _sums(_swap_cost,
                                      lambda x, n: _ratio(x[:, 0], x[:, 1], np.nan))),
)}
COST_METRICS = ("mistake_severity", "hdist@1", "hdist@3", "hdist@5", "swap_cost")
TASK_METRICS = {"single-label": ("accuracy", "mistake_severity", "hdist@1", "hdist@3",
                                 "hdist@5", "ece"),
                "multilabel": ("exact_match", "O-F1", "C-F1", "mAP", "hamming_loss",
                               "top3_O-F1", "swap_cost")}


def task_metrics(task: str, with_costs: bool) -> tuple[str, ...]:
    """The metrics compared for a task; those that need a cost matrix only with one."""
    return tuple(m for m in TASK_METRICS[task] if with_costs or m not in COST_METRICS)


def value(metric: str, samples: Samples, costs: np.ndarray | None = None) -> float:
    """The metric on all items (every count 1), through the same formula as the resamples."""
    m = METRICS[metric]
    items = m.prepare(samples, costs)
    return float(m.resampled(items, np.ones((1, len(samples["y_true"]))))[0])


# ---- tests -----------------------------------------------------------------------------------

def _same_items(groups: Sequence[Sequence[Samples]]) -> int:
    first = groups[0][0]["y_true"]
    for group in groups:
        for s in group:
            if s["y_true"].shape != first.shape or not np.array_equal(s["y_true"], first):
                raise CnnrnnError("the runs were not evaluated on the same items (their true "
                                  "labels differ); compare runs evaluated on one split, prior "
                                  "and val_size")
    return len(first)


def paired_bootstrap(group_a: Sequence[Samples], group_b: Sequence[Samples],
                     metrics: Sequence[str], costs: np.ndarray | None = None,
                     resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per metric: the observed difference of seed means (A - B) and its paired bootstrap
    95 % interval over items, `{"diff", "ci": [low, high], "resamples"}`."""
    if not group_a or not group_b:
        raise CnnrnnError("each group needs at least one run")
    if resamples < 1:
        raise CnnrnnError(f"--resamples is {resamples}; give a positive number (e.g. 2000)")
    n = _same_items([group_a, group_b])
    if costs is None and any(m in COST_METRICS for m in metrics):
        raise CnnrnnError("mistake severity, hdist@k and swap cost need a cost matrix; give "
                          "--costs")
    prepared = {m: ([METRICS[m].prepare(s, costs) for s in group_a],
                    [METRICS[m].prepare(s, costs) for s in group_b]) for m in metrics}

    def differences(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for m, (a, b) in prepared.items():
            f = METRICS[m].resampled
            out[m] = (np.mean([f(x, w) for x in a], 0) - np.mean([f(x, w) for x in b], 0))
        return out

    observed = differences(np.ones((1, n)))
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, BLOCK // max(n, 1)))
    draws: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        idx = rng.integers(0, n, size=(b, n))  # (b, N) items drawn
        w = np.bincount((idx + n * np.arange(b)[:, None]).ravel(),
                        minlength=b * n).reshape(b, n).astype(np.float64)  # (b, N) counts
        for m, d in differences(w).items():
            draws[m].append(d)
    out = {}
    for m in metrics:
        d = np.concatenate(draws[m])
        low, high = (np.nanpercentile(d, [2.5, 97.5]) if np.isfinite(d).any()
                     else (np.nan, np.nan))
        out[m] = {"diff": float(observed[m][0]), "ci": [float(low), float(high)],
                  "resamples": resamples}
    return out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two runs' per-item correctness (0/1, same items): the two-sided
    binomial p-value of the discordant pairs, `a_only` (A right, B wrong) among
    `a_only + b_only`, under p = 1/2."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise CnnrnnError(f"McNemar needs the same items: {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if a_only + b_only == 0 else sps.binomtest(a_only, a_only + b_only, 0.5).pvalue
    return {"a_only": a_only, "b_only": b_only, "p": float(p)}


def verdict(ci: Sequence[float], higher_is_better: bool, a: str = "A", b: str = "B") -> str:
    """`a` wins, `b` wins or tie, from the interval of the difference a - b."""
    low, high = ci
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 <= high:
        return "tie"
    a_higher = low > 0
    return f"{a if a_higher == higher_is_better else b} wins"
