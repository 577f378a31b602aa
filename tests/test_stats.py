"""Statistics over seeds and paired tests (cnnrnn.stats, `cnnrnn compare --stats`): hand
numbers, the resample formulas against cnnrnn.metrics, saved evaluations reused and
invalidated, and the CLI end to end on tiny single-label runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnrnn import stats
from cnnrnn.cli import app
from cnnrnn.costs import load_costs
from cnnrnn.errors import CnnrnnError
from cnnrnn.metrics.multilabel import multilabel_metrics
from cnnrnn.metrics.severity import set_severity, severity_metrics
from cnnrnn.metrics.single_label import single_label_metrics

runner = CliRunner()
COSTS = load_costs("hierarchy")


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def single_label(n: int, accuracy: float, seed: int) -> dict[str, np.ndarray]:
    """Fake single-label outputs of a model right on about `accuracy` of n fixed items."""
    y = np.random.default_rng(0).integers(0, 10, n)  # the same items in every group
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10), n).astype(np.float32)
    right = rng.random(n) < accuracy
    probs[right, y[right]] += 1
    probs /= probs.sum(1, keepdims=True)
    return {"y_true": y, "y_pred": probs.argmax(1), "scores": probs}


def multilabel(n: int, seed: int) -> dict[str, np.ndarray]:
    t = (np.random.default_rng(0).random((n, 10)) < 0.25).astype(np.uint8)
    rng = np.random.default_rng(seed)
    scores = (t * 0.4 + rng.random((n, 10))).round(2).astype(np.float32)  # ties too
    return {"y_true": t, "y_pred": (scores > 0.6).astype(np.uint8), "scores": scores}


# ---- the statistics by hand ------------------------------------------------------------------

def test_summary_by_hand():
    s = stats.summary([1.0, 2.0, 3.0, 4.0])
    # sd = sqrt(5/3); t(0.975, 3) = 3.182446; half width = 3.182446 * 1.290994 / 2 = 2.054260
    assert s["n"] == 4 and s["mean"] == 2.5
    assert s["sd"] == pytest.approx(1.290994, abs=1e-6)
    assert s["ci"] == pytest.approx([2.5 - 2.054260, 2.5 + 2.054260], abs=1e-5)
    assert stats.summary([0.5, 0.5, 0.5])["ci"] == [0.5, 0.5]


def test_mcnemar_is_the_exact_binomial_of_the_discordant_pairs():
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 3)  # 8 A-only, 2 B-only, 8 concordant
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 3)
    out = stats.mcnemar(a, b)
    # two-sided: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert (out["a_only"], out["b_only"]) == (8, 2)
    assert out["p"] == pytest.approx(112 / 1024)
    assert stats.mcnemar(a, a)["p"] == 1.0


def test_resample_formulas_equal_the_metric_functions():
    """Every metric on an explicit resample of the items (duplicates, ties) equals the value
    its counts give: the bootstrap recomputes cnnrnn.metrics' definitions."""
    idx = np.random.default_rng(5).integers(0, 3000, 3000)
    w = np.bincount(idx, minlength=3000)[None].astype(np.float64)
    s = single_label(3000, 0.7, 1)
    r = {k: v[idx] for k, v in s.items()}
    ref = {**single_label_metrics(r["y_true"], r["y_pred"]),
           **severity_metrics(r["y_true"], r["y_pred"], r["scores"], COSTS, list("0123456789"))}
    m = multilabel(3000, 1)
    rm = {k: v[idx] for k, v in m.items()}
    ref |= {**multilabel_metrics(rm["y_true"], rm["y_pred"], rm["scores"]),
            **set_severity(rm["y_true"], rm["y_pred"], COSTS)}
    for task, samples in (("single-label", s), ("multilabel", m)):
        for name in stats.task_metrics(task, True):
            metric = stats.METRICS[name]
            got = metric.resampled(metric.prepare(samples, COSTS), w)[0]
            assert got == pytest.approx(ref[name], abs=1e-7), name


def test_identical_groups_tie_with_a_zero_width_interval():
    group = [single_label(2000, 0.8, seed) for seed in range(3)]
    out = stats.paired_bootstrap(group, group, stats.task_metrics("single-label", True), COSTS,
                                 resamples=200)
    for name, r in out.items():
        assert r["diff"] == 0 and r["ci"][0] <= 0 <= r["ci"][1], name
        assert r["ci"][1] - r["ci"][0] < 1e-12, name
        assert stats.verdict(r["ci"], stats.METRICS[name].higher_is_better) == "tie"


def test_a_clearly_better_group_wins_in_the_metrics_direction():
    good = [single_label(2000, 0.9, seed) for seed in range(3)]
    bad = [single_label(2000, 0.6, seed + 10) for seed in range(3)]
    out = stats.paired_bootstrap(good, bad, ["accuracy", "hdist@1"], COSTS, resamples=300)
    assert out["accuracy"]["ci"][0] > 0.2  # about 0.3 apart
    assert stats.verdict(out["accuracy"]["ci"], True, "good", "bad") == "good wins"
    assert out["hdist@1"]["ci"][1] < 0  # fewer mistakes: lower is better, good still wins
    assert stats.verdict(out["hdist@1"]["ci"], False, "good", "bad") == "good wins"
    assert stats.verdict(out["accuracy"]["ci"], True, "bad", "good") == "bad wins"
    ml = stats.paired_bootstrap([multilabel(500, s) for s in range(3)],
                                [multilabel(500, s + 3) for s in range(3)],
                                stats.task_metrics("multilabel", False), resamples=100)
    assert set(ml) == {"exact_match", "O-F1", "C-F1", "mAP", "hamming_loss", "top3_O-F1"}


def test_groups_on_different_items_are_refused():
    a = single_label(100, 0.8, 0)
    b = {**a, "y_true": np.roll(a["y_true"], 1)}
    with pytest.raises(CnnrnnError, match="not evaluated on the same items"):
        stats.paired_bootstrap([a], [b], ["accuracy"])


# ---- saved evaluations and the CLI at tiny size ----------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("stats")
    tiny = ["--epochs", "1", "--limit-train", "256", "--batch-size", "64", "--set",
            "val_size=500", "--set", "model.channels=4", "--set", "model.hidden=8",
            "--quiet", "--data-dir", data_dir]
    out: dict[str, list[Path]] = {"ce": [], "soft": []}
    for seed in range(3):
        out["ce"].append(root / f"ce-s{seed}")
        cli("train", "--model", "cnn", "--seed", seed, "--out", out["ce"][-1], *tiny)
        out["soft"].append(root / f"soft-s{seed}")
        cli("train", "--model", "cnn", "--seed", seed, "--out", out["soft"][-1], "--loss",
            "soft-labels", "--costs", "hierarchy", *tiny)
    return out


def test_saved_evaluation_is_reused_until_the_checkpoint_changes(runs, data_dir, monkeypatch):
    import cnnrnn.evaluate as ev
    from cnnrnn.run_dir import RunDir

    run = runs["ce"][0]
    calls = []
    predict = ev.predict_images
    monkeypatch.setattr(ev, "predict_images", lambda *a, **k: calls.append(1) or predict(*a, **k))
    first, samples = ev.evaluate_samples(run, data_dir=data_dir, options={"costs": "hierarchy"})
    assert len(calls) == 1 and "reused" not in first
    assert samples["y_true"].shape == (10000,) and samples["scores"].shape == (10000, 10)
    assert (samples["y_true"] == samples["y_pred"]).mean() == pytest.approx(first["accuracy"])
    saved = sorted(run.glob("eval_test_best_*"))
    assert [p.suffix for p in saved] == [".json", ".npz"]
    with np.load(saved[1], allow_pickle=False) as z:
        assert np.array_equal(z["y_pred"], samples["y_pred"])
    again, _ = ev.evaluate_samples(run, data_dir=data_dir, options={"costs": "hierarchy"})
    assert len(calls) == 1 and again["reused"] and again["accuracy"] == first["accuracy"]
    shown = json.loads(cli("evaluate", run, "--json", "--save-samples", "--costs", "hierarchy",
                           "--data-dir", data_dir))
    assert len(calls) == 1 and shown == first  # evaluate's output as before, read back
    ev.evaluate_samples(run, data_dir=data_dir)  # other options: evaluated and saved apart
    assert len(calls) == 2 and len(list(run.glob("eval_test_best_*.npz"))) == 2
    state = RunDir(run).load("best")
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    RunDir(run).save(state, "best")
    changed, _ = ev.evaluate_samples(run, data_dir=data_dir, options={"costs": "hierarchy"})
    assert len(calls) == 3 and "reused" not in changed


def test_compare_stats_prints_the_tables(runs, data_dir):
    all_runs = [*runs["ce"], *runs["soft"]]
    text = cli("compare", "--stats", *all_runs, "--costs", "hierarchy", "--resamples", "200",
               "--data-dir", data_dir)
    assert "| ce | 0, 1, 2 |" in text and "| soft | 0, 1, 2 |" in text
    assert "| soft - ce | accuracy | higher |" in text
    assert "| soft - ce | hdist@1 | lower |" in text
    assert "note:" not in text
    result = json.loads(cli("compare", "--stats", "--json", "--resamples", "200", "--costs",
                            "hierarchy", "--group", "a=" + ",".join(map(str, runs["ce"])),
                            "--group", "b=" + ",".join(map(str, runs["soft"])),
                            "--data-dir", data_dir))
    acc = result["comparisons"][0]["metrics"]["accuracy"]
    assert len(acc["mcnemar"]) == 3 and acc["verdict"] in ("a wins", "b wins", "tie")
    a = result["groups"]["a"]["metrics"]["accuracy"]
    assert a["n"] == 3 and a["ci"][0] <= a["mean"] <= a["ci"][1]
    # each group against the first, the reference: b - a
    assert acc["diff"] == pytest.approx(result["groups"]["b"]["metrics"]["accuracy"]["mean"]
                                        - a["mean"])


def test_unequal_or_too_few_seeds_are_refused(runs, data_dir, user_error):
    line = user_error("compare", "--stats", *runs["ce"], *runs["soft"][:2], "--data-dir",
                      data_dir)
    assert "unequal seed counts (ce: 3, soft: 2)" in line
    line = user_error("compare", "--stats", *runs["ce"][:2], *runs["soft"][:2])
    assert "at least 3 per group" in line and "--allow-few-seeds" in line
    text = cli("compare", "--stats", "--allow-few-seeds", *runs["ce"][:2], *runs["soft"][:2],
               "--resamples", "50", "--data-dir", data_dir)
    assert "note: only 2 seeds per group (--allow-few-seeds)" in text
    assert "--group" in user_error("compare", *runs["ce"], "--group", "x=y")


def test_resampled_hdist_under_crm_ranks_by_expected_cost():
    """Under CRM the saved `ranking` is minus the expected cost, and the bootstrap's hdist@k
    equals the metric's (which ranks by expected cost); ranking by the probabilities instead
    gives another value on these items."""
    s = single_label(2000, 0.6, 3)
    expected = s["scores"].astype(np.float64) @ COSTS  # (N, K)
    crm = {**s, "y_pred": expected.argmin(1), "ranking": -expected}
    ref = severity_metrics(crm["y_true"], crm["y_pred"], crm["scores"], COSTS,
                           list("0123456789"), "crm", expected)
    w = np.ones((1, 2000))
    for k in ("hdist@1", "hdist@3", "hdist@5"):
        metric = stats.METRICS[k]
        assert metric.resampled(metric.prepare(crm, COSTS), w)[0] == pytest.approx(ref[k]), k
    by_probs = {k: v for k, v in crm.items() if k != "ranking"}
    metric = stats.METRICS["hdist@1"]
    assert metric.resampled(metric.prepare(by_probs, COSTS), w)[0] != pytest.approx(
        ref["hdist@1"])
