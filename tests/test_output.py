"""Output for people: evaluations saved in the run folder that evaluate and compare read back
while the checkpoint is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnrnn.cli import app

runner = CliRunner()
TINY = ["--model", "gru", "--epochs", "1", "--limit-train", "256", "--batch-size", "64",
        "--set", "val_size=500", "--set", "model.hidden_size=16", "--quiet"]


def invoke(*args: str | Path):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def cli(*args: str | Path) -> str:
    return invoke(*args).stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "gru"
    cli("train", "--out", out, "--data-dir", data_dir, *TINY)
    return out


# ---- saved evaluations: evaluate, compare -------------------------------------------------

def test_evaluate_saves_and_compare_reuses_until_best_pt_changes(run, data_dir, monkeypatch):
    import cnnrnn.evaluate as ev
    from cnnrnn.run_dir import RunDir

    first = json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir))
    assert sorted(p.suffix for p in run.glob("eval_test_best_*")) == [".json", ".npz"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model ran although a saved evaluation matched")

    monkeypatch.setattr(ev, "predict_images", must_not_run)
    assert json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir)) == first
    table = invoke("evaluate", run, "--data-dir", data_dir)
    assert "read the saved evaluation" in table.stderr
    assert f"{100 * first['accuracy']:.2f} %" in table.stdout
    row = ev.compare_runs([run], data_dir)[0]
    assert row["test"] == first["accuracy"]
    # a changed checkpoint (as resuming further writes one) is evaluated again
    state = RunDir(run).load("best")
    state["model"] = {k: v + 0.05 if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    RunDir(run).save(state, "best")
    with pytest.raises(AssertionError, match="the model ran"):
        ev.compare_runs([run], data_dir)
    monkeypatch.undo()
    row = ev.compare_runs([run], data_dir)[0]
    fresh = json.loads(cli("evaluate", run, "--json", "--data-dir", data_dir))
    assert row["test"] == fresh["accuracy"] != first["accuracy"]
    assert len(list(run.glob("eval_test_best_*.json"))) == 2
