"""The numbers of tiny seeded runs (recorded before the redesign, re-recorded only for intended
changes: tests/golden_runs.py), and old run folders, still hold, on every CPU.

tests/golden_runs.py says how the runs were recorded and why there are two sets. On a CPU with a
record (tests/golden/results*.json) every number of both sets must be equal bit for bit. On any
other CPU the bf16 runs are compared loosely (and a warning says so) and the fp32 "portable"
runs within a tolerance measured against emulated CPUs; test_a_real_change_fails shows that this
tolerance still catches a 10 % higher learning rate or a dropped augmentation step.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from golden_runs import (
    ABS_FLOOR,
    CHANGES,
    GOLDEN,
    PORTABLE,
    PORTABLE_TOL,
    RUNS,
    VOLATILE,
    cpu_signature,
    differences,
    record_for,
    records,
    run_set,
    strip,
)
from typer.testing import CliRunner

from cnnrnn.cli import app

SIGNATURE = cpu_signature()
RECORD = record_for(SIGNATURE)
SAME_CPU = RECORD is not None
# the reference on a CPU without a record: the first record (the recording CPU's)
REFERENCE = RECORD or json.loads((GOLDEN / "results.json").read_text())
OLD_RUNS = Path(__file__).resolve().parent / "fixtures" / "old_runs"
runner = CliRunner()


def invoke(args: list[str]) -> str:
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_same(got, want, where: str, mode: str | None = None) -> None:
    """Equal for every key the recording has (new keys may be added): bit for bit on a recorded
    CPU, else within the mode's tolerance."""
    diffs = differences(got, want, mode or ("exact" if SAME_CPU else "loose"))
    assert not diffs, f"{where}: " + "; ".join(diffs[:8])


@pytest.fixture(scope="module")
def golden_results(tmp_path_factory, data_dir) -> dict[str, dict]:
    return run_set(RUNS, tmp_path_factory.mktemp("golden"), data_dir, invoke)


@pytest.fixture(scope="module")
def portable_results(tmp_path_factory, data_dir) -> dict[str, dict]:
    return run_set(PORTABLE, tmp_path_factory.mktemp("portable"), data_dir, invoke)


@pytest.mark.parametrize("name", list(RUNS))
def test_golden_run_repeats(golden_results, name):
    want = REFERENCE["runs"][name]
    if not SAME_CPU:
        warnings.warn(f"no golden record for this CPU ({SIGNATURE['cpu']}, "
                      f"{' '.join(SIGNATURE['isa'])}): bf16 run {name} compared loosely; the "
                      "fp32 portable runs are the sharp check here (record this CPU with "
                      "`python tests/golden_runs.py record`)", stacklevel=1)
    assert_same(golden_results[name]["history"], want["history"], f"{name} metrics.jsonl")
    assert_same(golden_results[name]["evaluate"], want["evaluate"], f"{name} evaluate")


@pytest.mark.parametrize("name", list(PORTABLE))
def test_portable_run_repeats_on_any_cpu(portable_results, name):
    want = REFERENCE["portable"][name]
    mode = "exact" if SAME_CPU else "portable"
    assert_same(portable_results[name]["history"], want["history"], f"{name} metrics.jsonl",
                mode)
    assert_same(portable_results[name]["evaluate"], want["evaluate"], f"{name} evaluate", mode)


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_real_change_fails_the_portable_check(change, tmp_path, data_dir):
    """On any CPU: a run with a real change is outside the portable tolerance, and not only in
    the key that names the change (the learning rate in metrics.jsonl)."""
    name, extra = CHANGES[change]
    got = run_set({name: PORTABLE[name]}, tmp_path, data_dir, invoke, {name: extra})[name]
    want = REFERENCE["portable"][name]
    diffs = differences(got, want, "portable")
    assert [d for d in diffs if not d.startswith(("history[0].lr", "evaluate.lr"))], change


def test_portable_tolerance_is_above_the_measured_spread():
    """tests/golden/spread.json: what emulated CPUs moved the portable runs, measured on the
    recording CPU; the tolerance must be at least ten times that."""
    measured = json.loads((GOLDEN / "spread.json").read_text())
    assert set(measured["emulated"]) and measured["largest"] >= 0
    for m in measured["emulated"].values():
        assert set(m["largest_relative_change"]) == set(PORTABLE)
    assert PORTABLE_TOL >= 10 * max(measured["largest"], ABS_FLOOR)


def test_golden_records_every_run():
    for rec in records():
        assert set(rec["runs"]) == set(RUNS), rec["cpu"]
        assert set(rec["portable"]) == set(PORTABLE), rec["cpu"]
        for name, run in {**rec["runs"], **rec["portable"]}.items():
            assert run["history"] and not VOLATILE & set(run["history"][0]), name


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
