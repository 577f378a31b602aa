"""`make reproduce` (scripts/reproduce.py): the generated blocks of the pages, the plan's steps,
and a finished run told from an unfinished one. CI runs the whole reproduction at tiny sizes
(`make reproduce QUICK=1`); these tests check its parts in seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import reproduce  # noqa: E402
import reproduce_tables  # noqa: E402


def blocks(text: str) -> list[str]:
    return [m["name"] for m in reproduce.MARK.finditer(text)]


def test_every_block_of_the_pages_has_a_generator_and_every_generator_a_block():
    names = [n for page in reproduce.PAGES for n in blocks(page.read_text())]
    assert names, "the pages hold no generated blocks"
    assert set(names) <= set(reproduce_tables.GENERATORS)
    assert set(reproduce_tables.GENERATORS) <= set(names)


def test_fill_rewrites_blocks_and_leaves_the_ones_without_runs(monkeypatch, tmp_path):
    def missing(runs, quick):
        raise reproduce_tables.MissingRuns("not trained")

    monkeypatch.setattr(reproduce_tables, "GENERATORS", {
        "a": lambda runs, quick: f"new {quick}\n", "b": missing})
    page = ("x\n<!-- reproduce:a -->\nold\n<!-- /reproduce:a -->\n"
            "<!-- reproduce:b -->\nkept\n<!-- /reproduce:b -->\n")
    text, filled, left = reproduce.fill(page, tmp_path, True)
    assert text == ("x\n<!-- reproduce:a -->\nnew True\n<!-- /reproduce:a -->\n"
                    "<!-- reproduce:b -->\nkept\n<!-- /reproduce:b -->\n")
    assert filled == ["a"] and left == ["b (not trained)"]
    with pytest.raises(SystemExit, match="no generator"):
        reproduce.fill("<!-- reproduce:zz -->\n<!-- /reproduce:zz -->", tmp_path, True)


def test_plan_pins_one_thread_and_orders_every_step_after_its_inputs(tmp_path):
    for quick in (False, True):
        steps = reproduce.plan(quick)
        outs = [s.out for s in steps]
        assert len(outs) == len(set(outs))
        for i, step in enumerate(steps):
            for need in step.after:  # made by an earlier step
                assert need in outs[:i], (step.out, need)
            if step.tuned:  # its command needs the tuning's results: the test below
                continue
            cmd = reproduce.command(step, tmp_path, ["cnnrnn"])
            if step.train:
                i = cmd.index("threads=1")
                assert cmd[i - 1] == "--set" and "threads=" not in " ".join(cmd[i + 1:])
        # the severity study: 5 methods x 3 seeds of the one-direction lstm
        runs = [s for s in steps if s.train and s.out.startswith("severity-lstm/")]
        assert len(runs) == 15


def test_a_run_is_finished_when_it_holds_every_epoch(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    assert not reproduce_tables.run_finished(run)
    (run / "config.toml").write_text("epochs = 2\n")
    (run / "best.pt").write_bytes(b"")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    assert not reproduce_tables.run_finished(run)
    step = reproduce.Step("r", ["train"], train=True)
    assert reproduce.command(step, tmp_path, ["cnnrnn"])[-1] == "--overwrite"
    (run / "last.pt").write_bytes(b"")
    assert reproduce.command(step, tmp_path, ["cnnrnn"])[1:3] == ["train", "--resume"]
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n"
                                       + json.dumps({"epoch": 2}) + "\n")
    assert reproduce_tables.run_finished(run)


def test_plan_trains_each_peer_on_its_shipped_recipe_under_every_seed():
    steps = [s for s in reproduce.plan(False) if s.out.startswith("peers/")]
    assert [s.out for s in steps] == [f"peers/{name}-s{seed}" for name in reproduce.PEERS
                                      for seed in reproduce.SEEDS]
    assert set(reproduce.PEERS) == {"cnn-rnn", "bce", "bce-asl", "query", "query-asl",
                                    "bce-count"}
    by_name = {s.out.split("/")[1]: " ".join(s.args) for s in steps}
    assert by_name["cnn-rnn-s0"] == "train --task multilabel --seed 0"  # the default recipe
    assert "--model query --set multilabel.loss=asl" in by_name["query-asl-s2"]
    assert "--model bce --set model.count_head=true" in by_name["bce-count-s1"]
    # no peer names a prior: each trains on its recipe's, the held-out ones stay unseen
    assert not any("--prior" in s.args or "prior" in " ".join(s.args) for s in steps)
    quick = [s for s in reproduce.plan(True) if s.out.startswith("peers/")]
    assert all(s.args[-len(reproduce.QUICK_MULTI):] == reproduce.QUICK_MULTI for s in quick)


def test_the_peers_verdict_checks_each_target_on_the_runs(monkeypatch, tmp_path):
    """Fake evaluations: the CNN-RNN right on 95 % of the labels under `outfits`, every peer
    on 80 %; under the held-out priors the CNN-RNN drops to 80 %, the query head to 90 %."""
    import numpy as np

    from cnnrnn.metrics.multilabel import multilabel_metrics

    truth = (np.random.default_rng(0).random((600, 10)) < 0.3).astype(np.uint8)

    def evaluated(name, prior, seed):
        right = {"cnn-rnn": 0.95 if prior == "outfits" else 0.8,
                 "query": 0.9 if prior != "outfits" else 0.8}.get(name, 0.8)
        rng = np.random.default_rng([seed, len(name), len(prior)])
        flip = rng.random(truth.shape) > right
        pred = np.where(flip, 1 - truth, truth).astype(np.uint8)
        scores = (pred * 0.5 + rng.random(truth.shape) * 0.5).astype(np.float32)
        samples = {"y_true": truth, "y_pred": pred, "scores": scores}
        return multilabel_metrics(truth, pred, scores), samples

    monkeypatch.setattr(reproduce_tables, "_peers", lambda runs, name, prior: [
        evaluated(name, prior, s) for s in reproduce_tables.SEEDS])
    monkeypatch.setattr(reproduce_tables, "RESAMPLES", 200)
    text = reproduce_tables.peers_verdict(tmp_path)
    first, second, third = text.split("\n\n")[:3]
    assert first.startswith("**Target 1**") and ": met. The closest: " in first
    assert "on O-F1 +0.2" in first  # O-F1 is the narrower margin here
    assert ": not met. `street`: CNN-RNN minus the best peer there, query head, -0.1" in second
    assert "`inverted`: CNN-RNN minus the best peer there, query head" in second
    assert ": not met. `street`: the CNN-RNN -0.2" in third and "query head +0.1" in third


def test_each_peer_trains_with_the_setting_its_tuning_chose_on_validation(tmp_path):
    """The peers wait for their tuning runs; the setting with the best validation O-F1 is
    added to their command; a peers run trained with another setting is not done."""
    grid = reproduce.tuning_grid("bce-asl", False)
    assert len(grid) == 6 and len(reproduce.tuning_grid("bce", False)) == 3
    tune = [s for s in reproduce.plan(False) if s.out.startswith("tune/")]
    assert len(tune) == 4 * 3 + 2 * 6
    assert all("--epochs" in s.args and "--prior" not in s.args for s in tune)
    peer = next(s for s in reproduce.plan(False) if s.out == "peers/bce-asl-s1")
    assert set(peer.after) == {f"tune/bce-asl/{label}" for label in grid}
    with pytest.raises(SystemExit, match="the peers wait for their tuning"):
        reproduce.command(peer, tmp_path, ["cnnrnn"])
    scores = dict(zip(grid, [0.90, 0.91, 0.95, 0.93, 0.80, 0.94], strict=True))
    for label, score in scores.items():  # lr 0.001, gneg 2 is the best on validation
        run = tmp_path / f"tune/bce-asl/{label}"
        run.mkdir(parents=True)
        (run / "val_metrics.json").write_text(json.dumps({"O-F1": score, "exact_match": 1.0}))
    finished = reproduce_tables.run_finished
    try:
        reproduce_tables.run_finished = lambda path: True
        cmd = reproduce.command(peer, tmp_path, ["cnnrnn"])
        assert " ".join(cmd[-9:-5]) == "--set lr=0.001 --set multilabel.asl_gamma_neg=2"
        assert " ".join(cmd[-5:-1]) == "--set threads=1 --quiet --out"
        out = tmp_path / "peers/bce-asl-s1"
        out.mkdir(parents=True)
        (out / "config.toml").write_text("lr = 0.001\n[multilabel]\nasl_gamma_neg = 4.0\n")
        assert not reproduce.done(peer, tmp_path)  # the recipe's gamma, not the chosen one
        assert reproduce.command(peer, tmp_path, ["cnnrnn"])[-1] == "--overwrite"
        (out / "config.toml").write_text("lr = 0.001\n[multilabel]\nasl_gamma_neg = 2.0\n")
        assert reproduce.done(peer, tmp_path)
    finally:
        reproduce_tables.run_finished = finished


def test_the_cost_block_keeps_runs_seen_before_in_its_ledger(monkeypatch, tmp_path):
    """A fresh machine holds only the run folders it trained: the ledger keeps the others."""
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps({"runs": {"old/a-s0": {"cpu": "CPU X", "threads": 1,
                                                        "minutes": 30.0}},
                                  "encoders": {"enc": {"cpu": "CPU X", "minutes": 6.0}}}))
    monkeypatch.setattr(reproduce_tables, "LEDGER", ledger)
    runs = tmp_path / "runs"
    runs.mkdir()
    text = reproduce_tables.cost(runs, False)
    assert "| old/a-s0 | CPU X | 1 | 30.0 |" in text
    assert "these 1 runs: 0.50 hours (CPU X), plus 6.0 minutes" in text
    with pytest.raises(reproduce_tables.MissingRuns):  # QUICK runs never read the ledger
        reproduce_tables.cost(runs, True)
