"""Label embeddings put to work: cost matrices, mistake severity, severity-aware training and
decisions, embedding maps; hand-computed cases and the CLI end to end at tiny size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnrnn.cli import app
from cnnrnn.costs import (
    CLASSES,
    HIERARCHY,
    check_costs,
    confusion_costs,
    embedding_costs,
    hierarchy_costs,
    read_costs,
    write_costs,
)
from cnnrnn.errors import CnnrnnError
from cnnrnn.losses import ExpectedCost, HierarchicalCrossEntropy, SoftLabels
from cnnrnn.metrics.severity import set_severity, severity_metrics
from cnnrnn.trees import ClassTree, class_tree, hierarchy_tree, tree_from_costs

REPO = Path(__file__).resolve().parents[1]
OLD_BCE = REPO / "tests" / "fixtures" / "old_runs" / "bce"
runner = CliRunner()
IDX = {name: i for i, name in enumerate(CLASSES)}


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def cnnrnn(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnrnn", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ})


def is_cost_matrix(c: np.ndarray) -> bool:
    return (c.shape == (10, 10) and np.allclose(c, c.T) and np.allclose(np.diag(c), 0)
            and np.isclose(c.max(), 1.0) and (c >= 0).all())


# ---- cost matrices -------------------------------------------------------------------------

def test_hierarchy_costs():
    c = hierarchy_costs()
    assert is_cost_matrix(c)
    assert c[IDX["Shirt"], IDX["T-shirt/top"]] == 0.5  # both tops
    assert c[IDX["Sneaker"], IDX["Sandal"]] == 0.5  # both footwear
    assert c[IDX["Shirt"], IDX["Ankle boot"]] == 1.0
    assert c[IDX["Bag"], IDX["Dress"]] == 1.0


def test_embedding_and_confusion_costs_are_cost_matrices():
    rng = np.random.default_rng(0)
    for metric in ("cosine", "euclidean"):
        assert is_cost_matrix(embedding_costs(rng.normal(size=(10, 16)), metric))
    v = np.eye(10)
    v[IDX["Shirt"]] = v[IDX["T-shirt/top"]] + 0.01  # Shirt's embedding next to T-shirt's
    c = embedding_costs(v)
    assert c[IDX["Shirt"], IDX["T-shirt/top"]] < 0.05 and c[IDX["Shirt"], IDX["Bag"]] > 0.9
    v[IDX["Shirt"]] = v[IDX["T-shirt/top"]]  # identical vectors: floored, not free
    c = embedding_costs(v)
    assert c[IDX["Shirt"], IDX["T-shirt/top"]] == pytest.approx(0.01)
    assert is_cost_matrix(c) and (c + np.eye(10) > 0).all()
    c = confusion_costs(shirt_confusion())
    assert is_cost_matrix(c)
    # symmetrised rate (10/100 + 0) / 2 = .05; never confused: the floor 1 / (2 x 910); the
    # cost is -log(rate) over -log(floor): more confused is cheaper, and never free
    assert c[IDX["Shirt"], IDX["T-shirt/top"]] == pytest.approx(np.log(20) / np.log(1820))
    assert c[IDX["Shirt"], IDX["Bag"]] == 1.0 and (c + np.eye(10) > 0).all()
    # a pair confused every time both ways still costs more than 0
    swapped = np.diag(np.full(10, 90))
    swapped[0, 0] = swapped[1, 1] = 0
    swapped[0, 1] = swapped[1, 0] = 90
    assert confusion_costs(swapped)[0, 1] > 0


def shirt_confusion() -> np.ndarray:
    """90 right of 100 per class; 10 Shirts taken for T-shirts."""
    cm = np.diag(np.full(10, 90))
    cm[IDX["Shirt"], IDX["T-shirt/top"]] = 10
    return cm


def test_crm_weighs_the_probabilities_of_the_most_confused_pair(tmp_path):
    """p(Shirt) .9, p(T-shirt) .05, p(Bag) .05 under the confusion costs: with the old
    C[Shirt, T-shirt] = 0 both had expected cost .05 and the tie went to T-shirt."""
    from cnnrnn.config import load_config
    from cnnrnn.tasks import get_task

    write_costs(tmp_path / "confusion.csv", confusion_costs(shirt_confusion()), "test")
    cfg = load_config("single-label", "cnn", overrides={
        "single_label.decision": "crm", "single_label.costs": str(tmp_path / "confusion.csv")})
    p = torch.zeros(1, 10)
    p[0, [IDX["Shirt"], IDX["T-shirt/top"], IDX["Bag"]]] = torch.tensor([0.9, 0.05, 0.05])

    def model(x: torch.Tensor) -> torch.Tensor:  # logits whose softmax is p
        return p.clamp(min=1e-30).log().expand(len(x), 10)

    out = get_task("single-label").predict(model, torch.zeros(1, 1, 28, 28), cfg)
    assert CLASSES[int(out["labels"][0])] == "Shirt"


def test_cost_files_read_in_every_layout(tmp_path):
    c = hierarchy_costs()
    written = write_costs(tmp_path / "h.csv", c, "test")
    assert [p.name for p in written] == ["h.csv", "h.json"]
    np.testing.assert_allclose(read_costs(tmp_path / "h.csv"), c)  # header row and column
    np.testing.assert_allclose(read_costs(tmp_path / "h.json"), c)
    np.savetxt(tmp_path / "plain.csv", 3 * c)  # numpy.savetxt: spaces, no header, other unit
    np.testing.assert_allclose(read_costs(tmp_path / "plain.csv"), c)  # scaled to max 1
    np.savetxt(tmp_path / "comma.csv", c, delimiter=",", fmt="%.3f")
    np.testing.assert_allclose(read_costs(tmp_path / "comma.csv"), c)


def test_bad_cost_files_are_one_line_errors(tmp_path, data_dir):
    c = hierarchy_costs()
    np.savetxt(tmp_path / "shape.csv", c[:9])
    neg = c.copy()
    neg[0, 1] = neg[1, 0] = -0.5
    np.savetxt(tmp_path / "negative.csv", neg)
    asym = c.copy()
    asym[0, 1] = 0.1
    np.savetxt(tmp_path / "asymmetric.csv", asym)
    diag = c + np.eye(10)
    np.savetxt(tmp_path / "diagonal.csv", diag)
    free = c.copy()
    free[IDX["Shirt"], IDX["T-shirt/top"]] = free[IDX["T-shirt/top"], IDX["Shirt"]] = 0
    np.savetxt(tmp_path / "free.csv", free)
    cases = {"shape.csv": "has shape (9, 10); a cost matrix is (10, 10)",
             "negative.csv": "has a negative cost (-0.5 for true 'T-shirt/top', predicted "
                             "'Trouser')",
             "asymmetric.csv": "is not symmetric",
             "diagonal.csv": "non-zero diagonal",
             "free.csv": "costs 0 for true 'T-shirt/top', predicted 'Shirt'; give every "
                         "mistake a cost > 0, or CRM ignores the probabilities",
             "missing.csv": "not found; make one with `cnnrnn analyze costs`"}
    for name, message in cases.items():
        with pytest.raises(CnnrnnError, match=None) as e:
            read_costs(tmp_path / name)
        assert message in str(e.value), (name, str(e.value))
    proc = cnnrnn("evaluate", OLD_BCE, "--costs", tmp_path / "asymmetric.csv", "--data-dir",
                  data_dir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "is not symmetric" in proc.stderr


# ---- severity metrics ----------------------------------------------------------------------

def test_mistake_severity_and_hdist_by_hand():
    c = hierarchy_costs()
    s, t, b = IDX["Shirt"], IDX["T-shirt/top"], IDX["Bag"]
    y = np.array([s, s, t, b])
    pred = np.array([t, b, t, b])  # a mild mistake (0.5), a severe one (1.0), two right
    probs = np.full((4, 10), 0.01)
    probs[np.arange(4), pred] = 0.9
    m = severity_metrics(y, pred, probs, c, CLASSES)
    assert m["mistake_severity"] == pytest.approx(0.75)  # over the mistakes only
    assert m["hdist@1"] == pytest.approx((0.5 + 1.0 + 0 + 0) / 4)  # over all samples
    assert m["per_class_severity"]["Shirt"]["mistake_severity"] == pytest.approx(0.75)
    assert m["per_class_severity"]["Bag"]["mistake_severity"] is None  # no mistake: undefined
    assert m["per_class_severity"]["Coat"] is None  # no sample
    right = severity_metrics(y, y, probs, c, CLASSES)
    assert right["mistake_severity"] is None


def crm_hand_case() -> tuple[np.ndarray, np.ndarray]:
    """True Shirt, Bag, Sandal. Sample 1 is confidently a T-shirt (a 0.5 mistake under both
    decisions), sample 2 confidently right; sample 3 has p(Bag) .40, p(Sneaker) .32,
    p(Sandal) .28: expected costs Bag .60, Sneaker .54, Sandal .56, so argmax says Bag (1.0)
    and CRM says Sneaker (0.5)."""
    y = np.array([IDX["Shirt"], IDX["Bag"], IDX["Sandal"]])
    probs = np.zeros((3, 10))
    probs[0, [IDX["T-shirt/top"], IDX["Shirt"]]] = [0.9, 0.1]
    probs[1, [IDX["Bag"], IDX["Sandal"]]] = [0.9, 0.1]
    probs[2, [IDX["Bag"], IDX["Sneaker"], IDX["Sandal"]]] = [0.40, 0.32, 0.28]
    return y, probs


def test_hdist_under_crm_ranks_by_expected_cost():
    c = hierarchy_costs()
    y, probs = crm_hand_case()
    crm = (probs @ c).argmin(1)
    assert [CLASSES[j] for j in crm] == ["T-shirt/top", "Bag", "Sneaker"]
    m = severity_metrics(y, crm, probs, c, CLASSES, decision="crm")
    assert m["hdist@1"] == pytest.approx(1 / 3, abs=1e-12)  # ranked by probability: 0.5
    # CRM top 3 (expected cost, lowest first; ties to the lowest index):
    # Shirt: T-shirt .05, Shirt .45, Pullover .50 -> costs .5, 0, .5
    # Bag: Bag .10, Sandal .90, Sneaker .95 -> 0, 1, 1; Sandal: Sneaker, Sandal, Bag -> .5, 0, 1
    assert m["hdist@3"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3, abs=1e-12)
    per = m["per_class_severity"]
    assert per["Shirt"]["hdist@1"] == pytest.approx(0.5) and per["Bag"]["hdist@1"] == 0.0
    assert per["Sandal"]["hdist@1"] == pytest.approx(0.5)
    assert per["Shirt"]["hdist@3"] == pytest.approx(1 / 3, abs=1e-12)
    assert per["Bag"]["hdist@3"] == pytest.approx(2 / 3, abs=1e-12)
    assert per["Sandal"]["hdist@3"] == pytest.approx(0.5, abs=1e-12)
    # CRM top 5 of the Shirt: + Coat .50 (0.5), then Trouser 1.0 (1): 2.5 / 5
    assert per["Shirt"]["hdist@5"] == pytest.approx(0.5, abs=1e-12)
    # the expected cost the decision used gives the same ranking as recomputing it
    same = severity_metrics(y, crm, probs, c, CLASSES, decision="crm", expected_cost=probs @ c)
    assert same == m
    # argmax ranks by probability: the Shirt's top 3 is T-shirt, Shirt, then Trouser (tie at 0)
    arg = severity_metrics(y, probs.argmax(1), probs, c, CLASSES)
    assert arg["hdist@1"] == pytest.approx(0.5, abs=1e-12)
    assert arg["hdist@3"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3, abs=1e-12)
    assert arg["per_class_severity"]["Shirt"]["hdist@3"] == pytest.approx(0.5, abs=1e-12)
    for decision, res, labels in (("crm", m, crm), ("argmax", arg, probs.argmax(1))):
        error = np.mean(labels != y)
        assert res["hdist@1"] == pytest.approx(error * res["mistake_severity"], abs=1e-6), \
            decision


def test_set_severity_by_hand():
    c = hierarchy_costs()
    k = {n: np.eye(10, dtype=np.uint8)[IDX[n]] for n in CLASSES}
    truth = np.stack([k["Shirt"] | k["Bag"], k["Sneaker"], k["Coat"], k["Dress"]])
    pred = np.stack([k["T-shirt/top"] | k["Bag"],  # Shirt -> T-shirt: a 0.5 swap
                     k["Sandal"] | k["Bag"] | k["Trouser"],  # a 0.5 swap and two extra labels
                     np.zeros(10, np.uint8),  # Coat missed outright
                     k["Dress"]])  # right
    m = set_severity(truth, pred, c)
    assert m["swaps"] == 2 and m["swap_cost"] == pytest.approx(0.5)
    assert m["unmatched_false_positives"] == 2 and m["unmatched_false_negatives"] == 1
    # more false positives than negatives: the cheapest one is matched
    m = set_severity(np.stack([k["Shirt"]]), np.stack([k["Bag"] | k["Pullover"]]), c)
    assert (m["swaps"], m["swap_cost"], m["unmatched_false_positives"]) == (1, 0.5, 1)
    assert set_severity(truth, truth, c) == {"swap_cost": None, "swaps": 0,
                                             "unmatched_false_positives": 0,
                                             "unmatched_false_negatives": 0}


def test_set_severity_matches_one_to_one():
    """Truth Shirt + Coat, predicted T-shirt/top + Bag: two false negatives, two false
    positives. One to one, the best matching is Shirt -> T-shirt (0.5) and Coat -> Bag (1.0),
    or the mirror: 0.75. Matching each false negative to its cheapest false positive would put
    both on T-shirt/top: 0.5."""
    c = hierarchy_costs()
    k = {n: np.eye(10, dtype=np.uint8)[IDX[n]] for n in CLASSES}
    m = set_severity(np.stack([k["Shirt"] | k["Coat"]]),
                     np.stack([k["T-shirt/top"] | k["Bag"]]), c)
    assert m == {"swap_cost": 0.75, "swaps": 2, "unmatched_false_positives": 0,
                 "unmatched_false_negatives": 0}


# ---- severity-aware losses and decisions ---------------------------------------------------

def test_soft_labels_sum_to_one_and_peak_at_the_true_class():
    costs = torch.from_numpy(hierarchy_costs())
    soft = SoftLabels(costs, beta=6.0)
    assert torch.allclose(soft.targets.sum(1), torch.ones(10))
    assert (soft.targets.argmax(1) == torch.arange(10)).all()
    s, t, b = IDX["Shirt"], IDX["T-shirt/top"], IDX["Bag"]
    assert soft.targets[s, t] > soft.targets[s, b]  # a sibling gets more mass
    logits = torch.randn(5, 10)
    y = torch.tensor([s, t, b, 0, 1])
    want = -(soft.targets[y] * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(soft(logits, y), want)


def test_soft_label_targets_are_exp_of_minus_beta_cost_normalised():
    """target[y, j] = exp(-beta C[y, j]) / sum_l exp(-beta C[y, l]) for a cost matrix with many
    distinct values and beta = 2.5 (softmax(-C / beta) differs)."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0.1, 1.0, size=(10, 10))
    c = (a + a.T) / 2
    np.fill_diagonal(c, 0.0)
    c = check_costs(c)
    beta = 2.5
    e = np.exp(-beta * c)  # (K, K)
    want = e / e.sum(1, keepdims=True)
    got = SoftLabels(torch.from_numpy(c), beta).targets.double().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_expected_cost_adds_the_weighted_mean_cost():
    costs = torch.from_numpy(hierarchy_costs()).float()
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    ec = ExpectedCost(costs, weight=2.0)(logits, y)
    by_hand = torch.nn.functional.cross_entropy(logits, y) + 2.0 * (
        logits.softmax(1) * costs[y]).sum(1).mean()
    assert torch.allclose(ec, by_hand)


# ---- the hierarchical cross-entropy (HXE) and its class trees ----------------------------

def hierarchy_groups() -> set[frozenset[int]]:
    return {frozenset(IDX[n] for n in names) for names in HIERARCHY.values() if len(names) > 1}


def test_hierarchy_tree_collapses_one_class_groups():
    tree = hierarchy_tree()
    assert tree.groups() == hierarchy_groups()  # tops and footwear; no group of one
    root = len(tree.leaves) - 1
    for name in ("Dress", "Trouser", "Bag"):
        assert tree.parent[IDX[name]] == root
    assert tree.path(IDX["Shirt"]) == [IDX["Shirt"], tree.parent[IDX["Shirt"]], root]
    assert tree.depth(IDX["Shirt"]) == 2 and tree.depth(IDX["Bag"]) == 1


def test_clustering_the_hierarchy_costs_gives_back_the_hierarchy():
    """Average linkage merges two at a time; merges of equal height are one node, so the four
    tops and the three shoes come back as two groups under the root, and nothing else."""
    tree = tree_from_costs(hierarchy_costs())
    assert tree.groups() == hierarchy_groups()
    assert tree == hierarchy_tree()


def test_a_tree_from_embedding_costs_nests_by_distance(tmp_path):
    # classes 0-4 near one point, 5-9 near another; inside each, 0,1 and 5,6 closest
    v = np.zeros((10, 3))
    v[:5, 0], v[5:, 1] = 10.0, 10.0
    v[[0, 1], 2], v[[5, 6], 2] = 0.1, 0.1
    v[[2, 3, 4, 7, 8, 9], 2] = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    tree = tree_from_costs(embedding_costs(v, "euclidean"))
    groups = tree.groups()
    assert {frozenset(range(5)), frozenset(range(5, 10)), frozenset({0, 1}),
            frozenset({5, 6})} <= groups
    assert all(a <= b or b <= a or not a & b for a in groups for b in groups)  # nested
    write_costs(tmp_path / "emb.csv", embedding_costs(v, "euclidean"), "test")
    assert class_tree(str(tmp_path / "emb.csv")) == tree  # a cost file gives its clustering


def test_a_malformed_tree_is_refused():
    with pytest.raises(CnnrnnError, match="does not hold its classes"):
        ClassTree(tuple(frozenset({k}) for k in range(10)) + (frozenset({0}),
                                                              frozenset(range(10))),
                  (10,) + (11,) * 10 + (-1,))


@pytest.mark.parametrize("tree", [hierarchy_tree(), tree_from_costs(embedding_costs(
    np.random.default_rng(0).normal(size=(10, 4))))], ids=["hierarchy", "clustered"])
def test_hxe_with_alpha_0_is_the_cross_entropy(tree):
    """The conditionals telescope: prod_l p(C_l | C_l+1) = p(y) / p(root) = p(y)."""
    gen = torch.Generator().manual_seed(0)
    logits, y = 3 * torch.randn(64, 10, generator=gen), torch.arange(64) % 10
    hxe = HierarchicalCrossEntropy(tree, alpha=0.0)(logits, y)
    assert hxe.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(),
                                       abs=1e-6)
    assert HierarchicalCrossEntropy(tree, alpha=0.5)(logits, y).item() != pytest.approx(
        hxe.item(), abs=1e-3)


def test_hxe_by_hand():
    """The hierarchy tree, alpha = 0.5: Shirt's path is Shirt -> tops -> root, Dress's is
    Dress -> root; the edge above a node at depth d weighs exp(-0.5 d)."""
    p = torch.tensor([.05, .05, .1, .2, .05, .05, .3, .05, .1, .05])  # tops: 0, 2, 4, 6
    tops = .05 + .1 + .05 + .3
    shirt = -(math.exp(-1.0) * math.log(.3 / tops) + math.exp(-.5) * math.log(tops))
    dress = -math.exp(-.5) * math.log(.2)
    loss = HierarchicalCrossEntropy(hierarchy_tree(), alpha=0.5)(
        p.log().expand(2, 10), torch.tensor([IDX["Shirt"], IDX["Dress"]]))
    assert loss.item() == pytest.approx((shirt + dress) / 2, abs=1e-6)


def test_hxe_options_are_checked():
    from cnnrnn.config import load_config
    from cnnrnn.errors import ConfigError

    with pytest.raises(ConfigError, match="'hxe' needs a cost matrix"):
        load_config("single-label", "cnn", overrides={"single_label.loss": "hxe"})
    with pytest.raises(ConfigError, match="single_label.alpha must be a finite number >= 0"):
        load_config("single-label", "cnn", overrides={"single_label.loss": "hxe",
                                                      "single_label.costs": "hierarchy",
                                                      "single_label.alpha": -0.1})
    with pytest.raises(ConfigError, match="hierarchical cross-entropy takes no label smooth"):
        load_config("single-label", "cnn", overrides={"single_label.loss": "hxe",
                                                      "single_label.costs": "hierarchy",
                                                      "single_label.label_smoothing": 0.1})
    assert load_config("single-label", "cnn").single_label.alpha == 0.1  # the reference's


def test_crm_with_zero_one_costs_is_the_argmax(tmp_path):
    from cnnrnn.config import load_config
    from cnnrnn.tasks import get_task

    zero_one = 1 - np.eye(10)
    np.savetxt(tmp_path / "01.csv", zero_one)
    task = get_task("single-label")
    cfg = load_config("single-label", "cnn", overrides={
        "model.channels": 4, "model.hidden": 8, "single_label.decision": "crm",
        "single_label.costs": str(tmp_path / "01.csv")})
    model = task.build(cfg, None).eval()
    x = torch.randn(64, 1, 28, 28)
    out = task.predict(model, x, cfg)
    assert torch.equal(out["labels"], out["logits"].argmax(1))
    hier = load_config("single-label", "cnn", overrides={
        "model.channels": 4, "model.hidden": 8, "single_label.decision": "crm",
        "single_label.costs": "hierarchy"})
    crm = task.predict(model, x, hier)["labels"]
    probs = out["probs"].double()
    expected = probs @ torch.from_numpy(hierarchy_costs())  # (N, K) expected cost per choice
    assert torch.equal(crm, expected.argmin(1))


def test_severity_options_are_checked():
    from cnnrnn.config import load_config
    from cnnrnn.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a cost matrix"):
        load_config("single-label", "cnn", overrides={"single_label.loss": "soft-labels"})
    with pytest.raises(ConfigError, match="soft labels replace label smoothing"):
        load_config("single-label", "vgg16", overrides={"single_label.loss": "soft-labels",
                                                        "single_label.costs": "hierarchy"})
    with pytest.raises(ConfigError, match="single_label.loss = 'x' is not one of"):
        load_config("single-label", "cnn", overrides={"single_label.loss": "x"})


# ---- the CLI end to end --------------------------------------------------------------------

TINY_CNN = ["--epochs", "1", "--limit-train", "512", "--batch-size", "64", "--set",
            "val_size=500", "--set", "model.channels=8", "--set", "model.hidden=16", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sev")
    tiny = [*TINY_CNN, "--data-dir", data_dir]
    out = {"plain": root / "plain", "soft": root / "soft", "ec": root / "ec"}
    cli("train", "--model", "cnn", "--out", out["plain"], *tiny)
    cli("train", "--model", "cnn", "--out", out["soft"], "--loss", "soft-labels", "--costs",
        "hierarchy", *tiny)
    cli("train", "--model", "cnn", "--out", out["ec"], "--loss", "expected-cost", "--costs",
        "hierarchy", *tiny)
    return out


def test_severity_aware_training_and_evaluation(runs, data_dir, tmp_path):
    from cnnrnn.config import read_toml

    assert read_toml(runs["soft"] / "config.toml")["single_label"]["loss"] == "soft-labels"
    history = [json.loads(x) for x in (runs["ec"] / "metrics.jsonl").read_text().splitlines()]
    assert "val_hdist@1" in history[0]  # trained with costs: validation measures severity
    plain = json.loads(cli("evaluate", runs["plain"], "--json", "--costs", "hierarchy",
                           "--data-dir", data_dir))
    assert plain["costs"] == "hierarchy" and 0 <= plain["mistake_severity"] <= 1
    assert set(plain["per_class_severity"]) == set(CLASSES)
    crm = json.loads(cli("evaluate", runs["plain"], "--json", "--costs", "hierarchy",
                         "--decision", "crm", "--data-dir", data_dir))
    assert crm["decision"] == "crm" and crm["accuracy"] != plain["accuracy"]
    for result in (plain, crm):  # hdist@1 is the cost of the class each decision predicted
        assert result["hdist@1"] == pytest.approx(
            (1 - result["accuracy"]) * result["mistake_severity"], abs=1e-6), result["decision"]
        for name, acc in zip(CLASSES, result["per_class_accuracy"], strict=True):
            sev = result["per_class_severity"][name]
            assert sev["hdist@1"] == pytest.approx(
                (1 - acc) * (sev["mistake_severity"] or 0.0), abs=1e-6), name
        assert {"hdist@5", "ece"} <= set(result) and 0 <= result["ece"] <= 1
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.uint8))
    pred = json.loads(cli("predict", runs["plain"], tmp_path / "x.npy", "--decision", "crm",
                          "--costs", "hierarchy"))
    assert len(pred["labels"]) == 3
    proc = cnnrnn("evaluate", runs["plain"], "--decision", "crm", "--data-dir", data_dir)
    assert proc.returncode == 2 and "needs a cost matrix" in proc.stderr
    proc = cnnrnn("evaluate", OLD_BCE, "--decision", "crm", "--data-dir", data_dir)
    assert proc.returncode == 2 and "--decision applies to single-label runs" in proc.stderr


def test_evaluate_takes_your_own_hierarchy_file(runs, data_dir, tmp_path):
    """A hierarchy file (cnnrnn.hierarchy) scores a run as the matrix it makes does."""
    deep = {"upper": {"tops": ["T-shirt/top", "Pullover", "Shirt"], "outer": ["Coat"]},
            "lower": ["Trouser", "Dress"],
            "rest": ["Bag", {"shoes": ["Sandal", "Sneaker", "Ankle boot"]}]}
    (tmp_path / "deep.json").write_text(json.dumps(deep))
    cli("analyze", "costs", "hierarchy", "--hierarchy", tmp_path / "deep.json", "--out",
        tmp_path / "deep-costs.csv")
    by_file, by_matrix = (json.loads(cli("evaluate", runs["plain"], "--json", "--costs", spec,
                                         "--decision", "crm", "--data-dir", data_dir))
                          for spec in (tmp_path / "deep.json", tmp_path / "deep-costs.csv"))
    for key in ("accuracy", "mistake_severity", "hdist@1", "hdist@3"):
        assert by_file[key] == pytest.approx(by_matrix[key], abs=1e-6), key
    under_built_in = json.loads(cli("evaluate", runs["plain"], "--json", "--costs", "hierarchy",
                                    "--decision", "crm", "--data-dir", data_dir))
    assert by_file["hdist@3"] != pytest.approx(under_built_in["hdist@3"], abs=1e-4)


def test_hxe_trains_through_the_cli(tmp_path, data_dir):
    from cnnrnn.config import read_toml

    run = tmp_path / "hxe"
    cli("train", "--model", "cnn", "--out", run, "--loss", "hxe", "--costs", "hierarchy",
        "--set", "single_label.alpha=0.3", *TINY_CNN, "--data-dir", data_dir)
    written = read_toml(run / "config.toml")["single_label"]
    assert (written["loss"], written["costs"], written["alpha"]) == ("hxe", "hierarchy", 0.3)
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert "val_hdist@1" in history[0] and (run / "best.pt").is_file()


def test_analyze_costs_and_compare(runs, tmp_path):
    for source, extra in (("hierarchy", []), ("embeddings", [runs["plain"]]),
                          ("confusion", [runs["plain"]])):
        cli("analyze", "costs", source, *extra, "--out", tmp_path / f"{source}.csv")
        assert is_cost_matrix(read_costs(tmp_path / f"{source}.csv")), source
        assert (tmp_path / f"{source}.json").is_file()
    result = json.loads(cli("analyze", "compare-costs", tmp_path / "hierarchy.csv",
                            tmp_path / "embeddings.csv", tmp_path / "confusion.csv", "--json",
                            "--plot", tmp_path / "side.png"))
    assert (tmp_path / "side.png").read_bytes()[:4] == b"\x89PNG"
    assert set(result["spearman"]) == {"hierarchy vs embeddings", "hierarchy vs confusion",
                                       "embeddings vs confusion"}
    assert all(-1 <= r <= 1 for r in result["spearman"].values())
    assert all(result["sanity"]["hierarchy"].values())  # the hierarchy is sane by design
    # in the hierarchy, look-alike pairs share a group (0.5) and worn-together pairs do not
    assert result["groups"]["hierarchy"]["look alike"] == pytest.approx(0.5)
    assert result["groups"]["hierarchy"]["worn together"] > 0.9
    proc = cnnrnn("analyze", "costs", "confusion", OLD_BCE)
    assert proc.returncode == 2
    assert "the confusion source reads a finished single-label run" in proc.stderr


def test_analyze_costs_of_a_cnn_rnn_are_the_cosine_distances_of_u_l(tmp_path, data_dir, fmnist,
                                                                     monkeypatch):
    """The cost file HXE, soft labels and the expected cost train on, from a CNN-RNN run: the
    cosine distances of the label rows of U_l (not END's or START's), scaled to a maximum of
    1, computed here apart from cnnrnn.costs; and the same run's UMAP maps."""
    from cnnrnn.config import load_config
    from cnnrnn.encoders import prepare
    from cnnrnn.evaluate import load_run
    from cnnrnn.train import train

    encoder = tmp_path / "vgg"
    train(load_config("single-label", "vgg16", overrides={
        "epochs": 1, "limit_train": 128, "val_size": 100, "model.width": 0.0625,
        "batch_size": 64, "single_label.label_smoothing": 0.0}), encoder, data_dir=data_dir)
    over = {"epochs": 1, "limit_train": 64, "batch_size": 32, "model.hidden_size": 8,
            "model.embed_dim": 16, "multilabel.val_mosaics": 50, "multilabel.test_mosaics": 50,
            "multilabel.beam_width": 1, "multilabel.encoder_checkpoint": str(encoder)}
    run = tmp_path / "cnn-rnn"
    train(prepare(load_config("multilabel", "cnn-rnn", overrides=over), explicit=over), run,
          data_dir=data_dir)
    cli("analyze", "costs", "embeddings", run, "--out", tmp_path / "u_l.csv")
    _, _, model, _ = load_run(run)
    assert model.U_l.shape[0] > 10  # END (and START) rows too: the cost file leaves them out
    u = torch.nn.functional.normalize(model.U_l[:10].detach().double(), dim=1)
    cosine = (1 - u @ u.T).clamp(min=0).fill_diagonal_(0)
    expected = (cosine / cosine.max()).numpy()
    assert np.allclose(read_costs(tmp_path / "u_l.csv"), expected, atol=2e-6)
    source = json.loads((tmp_path / "u_l.json").read_text())["source"]
    assert source.startswith("cosine distances of the label embeddings")

    # its UMAP maps: titled in mathtext with the paper's names, no two class names overprinted
    from matplotlib.text import Text

    from cnnrnn import plots
    from cnnrnn.analysis import embeddings

    drawn = {}

    def keep(points, colour, labels, names, out, title, stars):
        drawn[Path(out).stem] = plots.embedding_map_figure(points, colour, labels, names, title,
                                                           stars)
        return plots.plot_embedding_map(points, colour, labels, names, out, title, stars)

    monkeypatch.setattr(embeddings, "plot_embedding_map", keep)
    embeddings.analyze_embeddings(run, fmnist, tmp_path / "emb", n=20)
    assert set(drawn) == {"umap_single_items", "umap_mosaics"}
    for fig in drawn.values():
        ax = fig.axes[0]
        assert r"$U_I^{x}\,I$" in ax.get_title()
        assert "$U_l$" in ax.get_legend().get_title().get_text()
        fig.canvas.draw()  # the mathtext parses
        renderer = fig.canvas.get_renderer()
        boxes = [Text.get_window_extent(t, renderer) for t in ax.texts
                 if t.get_text() in CLASSES]
        assert len(boxes) == 10
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])

def test_compare_costs_ranks_the_off_diagonal_pairs_only():
    """b = 2 - a off the diagonal reverses the order of the 45 pairs: rho = -1 exactly. Both
    zero diagonals rank lowest together, so counting them would raise rho above -1."""
    from cnnrnn.analysis.costs import compare_costs

    rng = np.random.default_rng(4)
    a = rng.uniform(0.1, 1.0, size=(10, 10))
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0.0)
    b = 2.0 - a
    np.fill_diagonal(b, 0.0)
    rho = compare_costs({"a": check_costs(a), "b": check_costs(b)})["spearman"]["a vs b"]
    assert rho == pytest.approx(-1.0, abs=1e-12)


def test_analyze_embeddings_writes_every_file_and_repeats(runs, tmp_path, data_dir):
    out = tmp_path / "emb"
    cli("analyze", "embeddings", runs["plain"], "--out", out, "--n", "60", "--data-dir",
        data_dir)
    names = {p.name for p in out.iterdir()}
    assert {"embeddings.json", "distances_cosine.csv", "distances_cosine.json",
            "distances_euclidean.csv", "distances_euclidean.json", "distances.png",
            "dendrogram.png", "umap_test_images.png", "umap_test_images.json"} <= names
    first = json.loads((out / "umap_test_images.json").read_text())
    assert len(first["points"]) == 60 and set(first["labels"]) == set(CLASSES)
    cli("analyze", "embeddings", runs["plain"], "--out", tmp_path / "again", "--n", "60",
        "--data-dir", data_dir)
    again = json.loads((tmp_path / "again" / "umap_test_images.json").read_text())
    assert again["points"] == first["points"]  # the same seed gives the same map
    d = np.array(json.loads((out / "distances_cosine.json").read_text())["distances"])
    assert d.shape == (10, 10) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)


def test_cnn_rnn_embeddings_and_maps(tmp_path, data_dir):
    """The old multilabel fixture is a bce run; its head rows are its label embeddings, and
    its maps are of single-item and all mosaics."""
    out = tmp_path / "ml"
    cli("analyze", "embeddings", OLD_BCE, "--out", out, "--n", "40", "--data-dir", data_dir)
    names = {p.name for p in out.iterdir()}
    assert {"umap_single_items.png", "umap_mosaics.png", "umap_mosaics.json"} <= names


@pytest.mark.parametrize("decoder", ["paper", "attention"])
def test_cnn_rnn_label_embeddings_are_the_rows_of_u_l(decoder):
    from cnnrnn.config import load_config
    from cnnrnn.models.embeddings import class_embeddings, embed_images
    from cnnrnn.tasks import get_task

    cfg = load_config("multilabel", overrides={"model.encoder_width": 0.0625,
                                               "model.embed_dim": 16, "model.hidden_size": 8,
                                               "model.decoder": decoder})
    model = get_task("multilabel").build(cfg, None).eval()
    assert torch.equal(class_embeddings(model), model.U_l[:10].detach())
    x = torch.randn(3, 1, 56, 56)
    points = embed_images(model, x)  # U_I^x I: the image term of eq. 4
    assert points.shape == (3, 16)
    features = model.encode(x)
    if decoder == "paper":
        assert torch.allclose(points, model.U_I_x(features))
    else:  # the image term under uniform attention: U_I^x of the mean cell
        cells = model.encoder.cells(features)  # (3, 4, C)
        assert torch.allclose(points, model.U_I_x(cells.mean(1)), atol=1e-5)


def test_a_model_without_label_embeddings_is_refused():
    from cnnrnn.models.embeddings import class_embeddings

    with pytest.raises(CnnrnnError, match="has no label embeddings"):
        class_embeddings(torch.nn.Conv2d(1, 1, 3))
    assert check_costs(hierarchy_costs()).max() == 1.0


def test_analyze_severity_draws_per_class_bars(runs, tmp_path, data_dir, monkeypatch):
    """Runs given one --label are one variant's seeds: mean bars with error bars; the bottom
    panel counts each class's mistakes; the hierarchy's classes whose every mistake costs the
    same are hatched."""
    from matplotlib.container import BarContainer

    from cnnrnn import plots

    drawn = []
    figure = plots.per_class_severity_figure
    monkeypatch.setattr(plots, "per_class_severity_figure",
                        lambda *a, **k: drawn.append(figure(*a, **k)) or drawn[-1])
    out = cli("analyze", "severity", runs["plain"], runs["plain"], runs["ec"], runs["soft"],
              "--costs", "hierarchy", "--label", "cross-entropy", "--label", "cross-entropy",
              "--label", "cross-entropy", "--label", "soft labels", "--out",
              tmp_path / "sev.png", "--data-dir", data_dir)
    lines = out.splitlines()
    assert lines[0].startswith("cross-entropy (plain): accuracy ") and "mistake severity" in out
    assert lines[3].startswith("soft labels: accuracy ")
    assert (tmp_path / "sev.png").read_bytes()[:4] == b"\x89PNG"
    ax_sev, ax_n = drawn[0].axes
    seeds, soft = [c for c in ax_sev.containers if isinstance(c, BarContainer)]
    assert seeds.errorbar.has_yerr and soft.errorbar is None
    assert {CLASSES[k] for k, bar in enumerate(seeds) if bar.get_hatch()} == {
        "Trouser", "Dress", "Bag"}
    cm = np.array(json.loads(cli("evaluate", runs["soft"], "--json", "--data-dir", data_dir))[
        "confusion_matrix"])
    counts = [bar.get_height() for bar in
              [c for c in ax_n.containers if isinstance(c, BarContainer)][1]]
    assert counts == (cm.sum(1) - np.diag(cm)).tolist()
    proc = cnnrnn("analyze", "severity", OLD_BCE, "--costs", "hierarchy", "--data-dir",
                  data_dir)
    assert proc.returncode == 2 and "analyze severity compares single-label runs" in proc.stderr
