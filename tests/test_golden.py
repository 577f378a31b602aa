"""The numbers of tiny seeded runs (recorded before the redesign, re-recorded only for intended
changes: tests/golden_runs.py), and old run folders, still hold.

tests/golden_runs.py says how the runs were recorded. On the CPU model that recorded them every
number must be equal bit for bit; on another CPU model a seeded run's last digits may differ
(other kernels, other sums), so there the numbers must agree within a relative 2e-2.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from golden_runs import GOLDEN, VOLATILE, cpu_model, run_all, strip
from typer.testing import CliRunner

from cnnrnn.cli import app

RECORDED = json.loads((GOLDEN / "results.json").read_text())
SAME_CPU = RECORDED["cpu"] == cpu_model()
OLD_RUNS = Path(__file__).resolve().parent / "fixtures" / "old_runs"
runner = CliRunner()


def invoke(args: list[str]) -> str:
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_same(got, want, where: str) -> None:
    """Equal for every key the recording has (new keys may be added); floats bit for bit on the
    recording CPU model."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        for key, value in want.items():
            assert key in got, f"{where}: {key} missing"
            assert_same(got[key], value, f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not SAME_CPU:
        assert math.isclose(got, want, rel_tol=2e-2, abs_tol=1e-3), (where, got, want)
    else:
        assert got == want, (where, got, want)


@pytest.fixture(scope="module")
def golden_results(tmp_path_factory, data_dir) -> dict[str, dict]:
    return run_all(tmp_path_factory.mktemp("golden"), data_dir, invoke)


@pytest.mark.parametrize("name", list(RECORDED["runs"]))
def test_golden_run_repeats(golden_results, name):
    want = RECORDED["runs"][name]
    assert_same(golden_results[name]["history"], want["history"], f"{name} metrics.jsonl")
    assert_same(golden_results[name]["evaluate"], want["evaluate"], f"{name} evaluate")


def test_golden_records_every_run():
    from golden_runs import RUNS

    assert set(RECORDED["runs"]) == set(RUNS)
    for name, rec in RECORDED["runs"].items():
        assert rec["history"] and not VOLATILE & set(rec["history"][0]), name


@pytest.mark.parametrize("name", ["gru", "bce"])
def test_old_run_folders_evaluate_predict_and_resume(name, data_dir, tmp_path, fmnist):
    run = tmp_path / name
    shutil.copytree(OLD_RUNS / name, run)
    got = strip(json.loads(invoke(["evaluate", str(run), "--json", "--data-dir",
                                   str(data_dir)])))
    # what the folder evaluated to when it was written (the golden record of that day; the
    # record itself moves on when a change of numbers is intended)
    want = json.loads((OLD_RUNS / name / "evaluate.json").read_text())
    assert_same(got, want, f"old {name} evaluate")
    first_row = (OLD_RUNS / name / "metrics.jsonl").read_text().splitlines()[0]

    size = 28 if name == "gru" else 56
    images = fmnist.test_images[:3].numpy()
    if size == 56:
        images = np.tile(images, (1, 2, 2))
    np.save(tmp_path / "x.npy", images)
    pred = json.loads(invoke(["predict", str(run), str(tmp_path / "x.npy")]))
    assert len(pred["labels" if name == "gru" else "label_sets"]) == 3

    invoke(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(data_dir),
            "--quiet"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0] == json.loads(first_row)  # the old epoch is kept
    saved = (run / "config.toml").read_text()
    assert "[single_label]" in saved if name == "gru" else "[multilabel]" in saved
