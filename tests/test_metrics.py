"""Metrics checked against scikit-learn, or against hand computations where it has no equivalent."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from cnnrnn.errors import CnnrnnError
from cnnrnn.metrics.multilabel import (
    average_precision_per_label,
    multilabel_metrics,
    top_k_labels,
)
from cnnrnn.metrics.single_label import (
    confusion_matrix,
    expected_calibration_error,
    hierarchical_distance_at_k,
    mistake_severity,
    normalized_confusion,
    single_label_metrics,
)

KEYS = {
    "C-P",
    "C-R",
    "C-F1",
    "O-P",
    "O-R",
    "O-F1",
    "macro-F1",
    "mAP",
    "exact_match",
    "hamming_loss",
    "per_label",
    *(f"top3_{name}" for name in ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")),
}


def random_multilabel(seed: int, n: int = 300, k: int = 10):
    """Random labels, noisy predictions and scores; label 0 never predicted, label 1 never
    present, label 2 predicted everywhere; scores rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, k)) < rng.uniform(0.05, 0.6, size=k)).astype(np.int64)
    scores = np.round(0.5 * y_true + rng.random((n, k)), 1)  # (N, K), many ties
    y_pred = (scores > 0.8).astype(np.int64)
    y_pred[:, 0] = 0
    y_true[:, 1] = 0
    y_pred[:, 2] = 1
    return y_true, y_pred, scores


def sklearn_ap(y_true, scores):
    """scikit-learn's AP per label (NaN for labels without positives)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found" for absent labels
        aps = skm.average_precision_score(y_true, scores, average=None)
    return np.where(y_true.sum(axis=0) > 0, aps, np.nan)


# --- multilabel ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_matches_sklearn_on_random_predictions(seed):
    y_true, y_pred, scores = random_multilabel(seed)
    m = multilabel_metrics(y_true, y_pred, scores)
    kw = {"zero_division": 0}
    macro_p = skm.precision_score(y_true, y_pred, average="macro", **kw)
    macro_r = skm.recall_score(y_true, y_pred, average="macro", **kw)
    assert set(m) == KEYS
    top3 = multilabel_metrics(y_true, top_k_labels(scores, 3), scores)  # the top-3 sets
    for name in ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1"):
        assert m[f"top3_{name}"] == top3[name]
    assert (top_k_labels(scores, 3).sum(1) == 3).all()
    assert m["C-P"] == pytest.approx(macro_p)
    assert m["C-R"] == pytest.approx(macro_r)
    assert m["C-F1"] == pytest.approx(2 * macro_p * macro_r / (macro_p + macro_r))
    assert m["O-P"] == pytest.approx(skm.precision_score(y_true, y_pred, average="micro", **kw))
    assert m["O-R"] == pytest.approx(skm.recall_score(y_true, y_pred, average="micro", **kw))
    assert m["O-F1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="micro", **kw))
    assert m["macro-F1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", **kw))
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y_true, y_pred))

    per_p = skm.precision_score(y_true, y_pred, average=None, **kw)
    per_r = skm.recall_score(y_true, y_pred, average=None, **kw)
    per_f1 = skm.f1_score(y_true, y_pred, average=None, **kw)
    aps = sklearn_ap(y_true, scores)
    for k, row in enumerate(m["per_label"].values()):
        assert row["precision"] == pytest.approx(per_p[k])
        assert row["recall"] == pytest.approx(per_r[k])
        assert row["f1"] == pytest.approx(per_f1[k])
        assert row["support"] == y_true[:, k].sum()
        assert row["ap"] is None if np.isnan(aps[k]) else row["ap"] == pytest.approx(aps[k])
    assert m["mAP"] == pytest.approx(np.nanmean(aps))
    json.dumps(m, allow_nan=False)  # plain JSON: no NaN, no numpy types


def test_average_precision_matches_sklearn_with_and_without_ties():
    rng = np.random.default_rng(7)
    y_true = (rng.random((500, 6)) < 0.3).astype(int)
    for scores in (rng.normal(size=(500, 6)), rng.integers(0, 4, size=(500, 6)).astype(float)):
        expected = skm.average_precision_score(y_true, scores, average=None)
        np.testing.assert_allclose(average_precision_per_label(y_true, scores), expected)


def test_infinite_scores_rank_like_extreme_finite_ones():
    # Log-probabilities of a label a decoder never emits are -inf; they tie at the bottom.
    rng = np.random.default_rng(3)
    y_true = (rng.random((200, 4)) < 0.4).astype(int)
    scores = rng.normal(size=(200, 4))
    scores[rng.random((200, 4)) < 0.3] = -np.inf
    scores[0, 0] = np.inf
    finite = np.clip(scores, -1e9, 1e9)
    expected = skm.average_precision_score(y_true, finite, average=None)
    np.testing.assert_allclose(average_precision_per_label(y_true, scores), expected)


def test_c_f1_is_not_macro_f1_and_equals_hand_computation():
    # label 0: TP 1, FN 1 -> P 1, R 1/2, F1 2/3; label 1: TP 1, FP 1 -> P 1/2, R 1, F1 2/3.
    y_true = np.array([[1, 1], [1, 0]])
    y_pred = np.array([[1, 1], [0, 1]])
    m = multilabel_metrics(y_true, y_pred, y_pred.astype(float), label_names=["a", "b"])
    assert m["C-P"] == pytest.approx(0.75)
    assert m["C-R"] == pytest.approx(0.75)
    assert m["C-F1"] == pytest.approx(0.75)
    assert m["macro-F1"] == pytest.approx(2 / 3)
    assert m["macro-F1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["O-P"] == m["O-R"] == m["O-F1"] == pytest.approx(2 / 3)
    assert m["exact_match"] == 0.5
    assert m["hamming_loss"] == 0.5
    assert m["per_label"]["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "ap": 1.0,
        "support": 2,
    }
    # label b: scores 1, 1 for truths 1, 0 -> one tied threshold, precision 1/2.
    assert m["per_label"]["b"]["ap"] == pytest.approx(0.5)
    assert m["mAP"] == pytest.approx(0.75)


def test_never_predicted_and_never_present_labels():
    y_true = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1]])
    y_pred = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]])  # label 2 never predicted
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.7], [0.1, 0.3, 0.6]])
    m = multilabel_metrics(y_true, y_pred, scores)
    absent, unpredicted = m["per_label"]["1"], m["per_label"]["2"]
    assert absent == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "ap": None, "support": 0}
    assert unpredicted["precision"] == 0.0
    assert unpredicted["recall"] == 0.0
    # label 2 ranked: 0.7 (neg), 0.6 (pos), 0.2 (pos) -> AP = (1/2 + 2/3) / 2
    assert unpredicted["ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["mAP"] == pytest.approx((1.0 + (1 / 2 + 2 / 3) / 2) / 2)  # label 1 left out
    assert m["C-P"] == pytest.approx(1 / 3)  # labels 1 and 2 count as 0
    assert m["C-R"] == pytest.approx(1 / 3)
    assert m["O-P"] == 1.0
    assert m["O-R"] == pytest.approx(2 / 4)


def test_all_correct_and_all_wrong():
    y_true, _, _ = random_multilabel(0, n=50, k=5)
    y_true[0] = 1  # every label present somewhere, so every recall and AP is defined
    right = multilabel_metrics(y_true, y_true, y_true.astype(float))
    for key in KEYS - {"per_label", "hamming_loss"}:
        if not key.startswith("top3_"):  # 3 labels per sample: perfect only with 3 true ones
            assert right[key] == 1.0, key
    assert right["hamming_loss"] == 0.0
    wrong = multilabel_metrics(y_true, 1 - y_true, -y_true.astype(float))
    for key in ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "macro-F1", "exact_match"):
        assert wrong[key] == 0.0, key
    assert wrong["hamming_loss"] == 1.0
    assert wrong["mAP"] < 1.0


def test_nothing_present_nothing_predicted_is_all_zero_and_no_map():
    zeros = np.zeros((4, 3), dtype=int)
    m = multilabel_metrics(zeros, zeros, np.zeros((4, 3)))
    assert m["mAP"] is None
    assert m["C-F1"] == m["O-F1"] == m["macro-F1"] == 0.0
    assert m["exact_match"] == 1.0 and m["hamming_loss"] == 0.0
    json.dumps(m, allow_nan=False)


def test_torch_and_bool_inputs_give_the_same_result():
    y_true, y_pred, scores = random_multilabel(1, n=60, k=4)
    expected = multilabel_metrics(y_true, y_pred, scores)
    as_torch = multilabel_metrics(
        torch.from_numpy(y_true).bool(),
        torch.from_numpy(y_pred),
        torch.tensor(scores, dtype=torch.float32, requires_grad=True),
    )
    assert as_torch == expected  # float32 keeps the order of scores rounded to 0.1


@pytest.mark.parametrize(
    ("y_pred", "scores", "names", "match"),
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), None, "scores has shape"),
        (np.zeros((4, 3)), np.zeros((5, 3)), None, "y_pred has shape"),
        (np.full((5, 3), 2), np.zeros((5, 3)), None, "values other than 0 and 1"),
        (np.zeros(5), np.zeros((5, 3)), None, r"y_pred has shape \(5,\)"),
        (np.zeros((5, 3)), np.full((5, 3), np.nan), None, "scores contain NaN"),
        (np.zeros((5, 3)), np.zeros((5, 3)), ["a", "b"], "label_names has 2 entries"),
        (np.zeros((5, 3)), np.zeros((5, 3)), ["a", "a", "b"], "one distinct name"),
        (np.array([["0"] * 3] * 5), np.zeros((5, 3)), None, "pass a numeric array"),
    ],
)
def test_multilabel_errors_are_one_line(y_pred, scores, names, match):
    with pytest.raises(CnnrnnError, match=match) as info:
        multilabel_metrics(np.zeros((5, 3)), y_pred, scores, label_names=names)
    assert "\n" not in str(info.value)


def test_empty_multilabel_input_is_an_error():
    with pytest.raises(CnnrnnError, match="non-empty"):
        multilabel_metrics(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)))


# --- single label ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_single_label_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 10, size=400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, rng.integers(0, 10, size=400))
    m = single_label_metrics(torch.from_numpy(y_true), y_pred, class_names=list("abcdefghij"))
    labels = list(range(10))
    assert m["classes"] == list("abcdefghij")
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    np.testing.assert_allclose(
        m["per_class_accuracy"], skm.recall_score(y_true, y_pred, labels=labels, average=None)
    )
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    json.dumps(m, allow_nan=False)


def test_absent_class_has_no_accuracy_and_a_zero_confusion_row():
    y_true = np.array([0, 0, 2, 2])
    y_pred = np.array([0, 1, 1, 2])
    m = single_label_metrics(y_true, y_pred, num_classes=3)
    assert m["per_class_accuracy"] == [0.5, None, 0.5]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 0, 0], [0, 1, 1]]
    assert m["accuracy"] == 0.5
    norm = normalized_confusion(m["confusion_matrix"])
    np.testing.assert_allclose(norm, [[0.5, 0.5, 0], [0, 0, 0], [0, 0.5, 0.5]])


def test_normalized_confusion_matches_sklearn_normalize_true():
    rng = np.random.default_rng(4)
    y_true, y_pred = rng.integers(0, 7, size=100), rng.integers(0, 7, size=100)
    cm = confusion_matrix(y_true, y_pred, num_classes=8)  # class 7 never occurs
    norm = normalized_confusion(cm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.confusion_matrix(y_true, y_pred, labels=range(8), normalize="true")
    np.testing.assert_allclose(norm, expected)
    np.testing.assert_allclose(norm.sum(axis=1), [1] * 7 + [0])


CLOTHING = np.array([0, 1, 0, 2, 0, 3, 0, 3, 4, 3])  # tops, trouser, dress, footwear, bag


def clothing_distance():
    """Two-level hand hierarchy: 0 same class, 1 same group, 2 otherwise."""
    same_group = CLOTHING[:, None] == CLOTHING[None, :]
    return np.where(np.eye(10, dtype=bool), 0.0, np.where(same_group, 1.0, 2.0))


def test_mistake_severity_hand_computation():
    d = clothing_distance()
    # Shirt->T-shirt (1), Sneaker->Bag (2), Coat->Coat (correct, ignored), Trouser->Dress (2)
    y_true = np.array([6, 7, 4, 1])
    y_pred = np.array([0, 8, 4, 3])
    assert mistake_severity(y_true, y_pred, d) == pytest.approx(5 / 3)
    assert math.isnan(mistake_severity(y_true, y_true, d))


def test_hierarchical_distance_at_k_hand_and_loop_reference():
    d = clothing_distance()
    probs = np.zeros((2, 10))
    probs[0, [6, 0, 8]] = [0.5, 0.3, 0.2]  # true Shirt: top-3 = Shirt, T-shirt, Bag
    probs[1, [5, 7]] = [0.6, 0.4]  # true Sandal: Sandal, Sneaker, then a tie at 0 -> T-shirt
    y_true = np.array([6, 5])
    assert hierarchical_distance_at_k(y_true, probs, d, 1) == 0.0
    assert hierarchical_distance_at_k(y_true, probs, d, 3) == pytest.approx((3 / 3 + 3 / 3) / 2)

    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 10, size=50)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(50, 10))), dim=1)
    for k in (1, 2, 5, 10):
        loop = [
            np.mean([d[y, j] for j in np.argsort(-p.numpy())[:k]])
            for y, p in zip(y_true, probs, strict=True)
        ]
        assert hierarchical_distance_at_k(y_true, probs, d, k) == pytest.approx(np.mean(loop))
    # hdist@1 spreads the severity of the mistakes over all samples (zero diagonal)
    top1 = probs.argmax(dim=1).numpy()
    error = np.mean(top1 != y_true)
    assert hierarchical_distance_at_k(y_true, probs, d, 1) == pytest.approx(
        error * mistake_severity(y_true, top1, d)
    )


def test_expected_calibration_error_by_hand():
    """15 equal-width bins of the top probability: .95 (twice), .62 and .68 fall in bins 14, 9
    and 10; with 10 bins .62 and .68 would share one and the value would differ."""
    probs = np.array([[0.95, 0.05, 0.0], [0.95, 0.05, 0.0], [0.62, 0.38, 0.0],
                      [0.68, 0.32, 0.0]])
    y_true = np.array([0, 1, 0, 1])  # right, wrong, right, wrong
    # bin 14: 2 samples, accuracy 1/2, confidence .95; bin 9: right at .62; bin 10: wrong at .68
    by_hand = (2 * abs(0.5 - 0.95) + abs(1 - 0.62) + abs(0 - 0.68)) / 4
    assert by_hand == pytest.approx(0.49)
    assert expected_calibration_error(y_true, probs) == pytest.approx(by_hand, abs=1e-12)
    m = single_label_metrics(y_true, probs.argmax(1), 3, probs=probs)
    assert m["ece"] == pytest.approx(0.49, abs=1e-12)
    assert "ece" not in single_label_metrics(y_true, probs.argmax(1), 3)  # no probs: no ECE
    # perfectly calibrated: confidence .75 and three right of four in the one bin
    even = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error([0, 0, 0, 1], even) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: single_label_metrics([0, 10], [0, 1]), "expected 0 .. 9"),
        (lambda: single_label_metrics([0.0, 1.0], [0, 1]), "pass integer class indices"),
        (lambda: single_label_metrics([0, 1, 2], [0, 1]), "y_true has 3 samples"),
        (lambda: single_label_metrics([], []), "non-empty"),
        (lambda: single_label_metrics([0], [0], class_names=["a"]), "class_names has 1"),
        (lambda: normalized_confusion(np.ones((2, 3))), "square matrix"),
        (lambda: mistake_severity([0], [1], np.ones((2, 3))), "distance has shape"),
        (lambda: mistake_severity([0], [2], np.ones((2, 2))), "expected 0 .. 1"),
        (lambda: hierarchical_distance_at_k([0], np.ones((1, 2)), np.ones((2, 2)), 3), "k is 3"),
        (
            lambda: hierarchical_distance_at_k([0], np.ones((1, 3)), np.ones((2, 2)), 1),
            "probs has shape",
        ),
        (lambda: hierarchical_distance_at_k([0], [[np.nan, 1]], np.ones((2, 2)), 1), "NaN"),
    ],
)
def test_single_label_errors_are_one_line(call, match):
    with pytest.raises(CnnrnnError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
