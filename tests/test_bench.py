"""`cnnrnn bench`: the tiny run's JSON holds every promised key with positive finite numbers, the
report prints it, and the FLOP count of known layers equals the hand count."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnrnn.bench import count_flops, format_report, parse_models
from cnnrnn.cli import app
from cnnrnn.errors import CnnrnnError
from cnnrnn.time_to_accuracy import Race, run_time_to_accuracy

STEP_KEYS = {"ms_per_step", "samples_per_second", "gflops", "peak_share"}
PIPELINE_KEYS = {"cnnrnn_epoch_seconds", "plain_epoch_seconds", "ratio"}


def _numbers(obj: Any, where: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON value, with its path."""
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in _numbers(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [n for i, v in enumerate(obj) for n in _numbers(v, f"{where}[{i}]")]
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        return [(where, obj)]
    return []


def test_tiny_bench_json_has_every_key_with_positive_finite_numbers(data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--tiny", "--json", "--models", "cnn,gru",
                                      "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)

    assert {"cpu", "threads", "torch", "matmul_gflops", "models", "pipelines"} <= set(out)
    assert isinstance(out["cpu"], str) and out["cpu"]
    assert out["threads"] == torch.get_num_threads()
    assert out["torch"] == torch.__version__
    assert set(out["matmul_gflops"]) == {"fp32", "bf16"}
    assert list(out["models"]) == ["cnn", "gru"] == list(out["pipelines"])
    for name, row in out["models"].items():
        assert STEP_KEYS <= set(row["fp32"]) and STEP_KEYS <= set(row["bf16"]), name
        assert 0 < row["data_share"] < 1, name
    for name, row in out["pipelines"].items():
        assert PIPELINE_KEYS <= set(row), name
        assert row["ratio"] == pytest.approx(row["plain_epoch_seconds"]
                                             / row["cnnrnn_epoch_seconds"])
    numbers = _numbers(out)
    assert len(numbers) > 20
    bad = [(where, v) for where, v in numbers if not (math.isfinite(v) and v > 0)]
    assert not bad, f"not positive and finite: {bad}"

    report = format_report(out)
    assert out["cpu"] in report and f"{out['threads']} threads" in report
    assert all(name in report for name in ("cnn", "gru", "plain/cnnrnn", "data share"))


def test_tiny_bench_covers_the_timm_and_bce_models(data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--tiny", "--json", "--models", "timm,bce",
                                      "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert list(out["models"]) == ["timm", "bce"] == list(out["pipelines"])
    for row in out["models"].values():
        assert row["gflop_per_step"] > 0 and row["bf16"]["ms_per_step"] > 0


def test_set_benchmarks_a_variant_of_the_recipe(data_dir: Path) -> None:
    def run(*extra: str) -> Any:
        return CliRunner().invoke(app, ["bench", "--tiny", "--json", "--models", "vgg16",
                                        "--steps", "1", "--data-dir", str(data_dir), *extra])

    narrow, wide = (run("--set", f"model.width={w}") for w in (0.0625, 0.125))
    assert narrow.exit_code == 0 and wide.exit_code == 0, narrow.output + wide.output
    narrow, wide = json.loads(narrow.stdout), json.loads(wide.stdout)
    assert wide["overrides"] == {"model.width": 0.125}
    # twice the channels: about four times the convolutions' FLOPs (the first layer's twice)
    ratio = wide["models"]["vgg16"]["gflop_per_step"] / narrow["models"]["vgg16"]["gflop_per_step"]
    assert 3.0 < ratio < 4.0
    assert "recipes with model.width = 0.125" in format_report(wide)
    # user errors (the CLI's main prints them as one line, exit status 2)
    typo = run("--set", "model.widht=1.0")
    assert isinstance(typo.exception, CnnrnnError) and "unknown key 'widht'" in str(
        typo.exception)
    batch = run("--set", "batch_size=256")  # the plain loop keeps the bench's own batch
    assert isinstance(batch.exception, CnnrnnError) and "cnnrnn's side only" in str(
        batch.exception)
    race = run("--set", "model.width=1.0", "--time-to-accuracy")
    assert isinstance(race.exception, CnnrnnError) and "races the shipped ones" in str(
        race.exception)


def test_flops_of_a_linear_layer_are_the_hand_count() -> None:
    layer = nn.Linear(64, 32, bias=False)
    x = torch.randn(16, 64)
    forward = 2 * 16 * 64 * 32  # (16, 64) @ (64, 32), a multiply-add counts 2
    assert count_flops(lambda: layer(x)) == forward
    # backward: the weight's gradient only (x needs none), as many FLOPs as the forward
    assert count_flops(lambda: layer(x).sum().backward()) == 2 * forward
    x.requires_grad_(True)  # and now the input's gradient too
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * forward


def test_flops_of_an_lstm_count_its_onednn_layers() -> None:
    T, B, D, H = 5, 4, 8, 16
    lstm = nn.LSTM(D, H, batch_first=True)
    x = torch.randn(B, T, D, requires_grad=True)
    # every (step, sample) row: x_t @ W_ih^T (D -> 4H) and h_(t-1) @ W_hh^T (H -> 4H)
    forward = 2 * T * B * (4 * H * D + 4 * H * H)
    assert count_flops(lambda: lstm(x)[0].sum().backward()) == 3 * forward


def test_unknown_model_names_the_known_ones() -> None:
    assert parse_models(None)[-1] == "bce"
    assert parse_models("gru, cnn,gru") == ["gru", "cnn"]
    with pytest.raises(CnnrnnError, match="unknown model 'vgg' for --models; choose from rnn"):
        parse_models("cnn,vgg")


# ---- time to accuracy ------------------------------------------------------------------------

def test_race_stops_at_the_first_epoch_that_reaches_the_target() -> None:
    race = Race(target=0.9, max_epochs=10, deadline=float("inf"))
    assert [race.record(a) for a in (0.5, 0.89, 0.91)] == [False, False, True]
    s = race.summary()
    assert s["reached"] and s["epochs"] == 3 and s["best_val_accuracy"] == 0.91
    assert s["seconds"] == race.epochs[2]["seconds"] >= race.epochs[1]["seconds"]
    slow = Race(target=0.9, max_epochs=2, deadline=float("inf"))
    assert [slow.record(a) for a in (0.5, 0.6)] == [False, True]  # out of epochs
    assert not slow.summary()["reached"] and slow.summary()["seconds"] is None
    late = Race(target=0.9, max_epochs=10, deadline=0.0)  # out of time
    assert late.record(0.1) and late.summary()["epochs_run"] == 1


def test_tiny_time_to_accuracy_races_both_ways(data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--time-to-accuracy", "--tiny", "--json",
                                      "--models", "lstm", "--target", "0.3",
                                      "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)["models"]["lstm"]
    assert m["target"] == 0.3 and m["max_epochs"] == 2
    for side in ("cnnrnn", "plain"):
        s = m[side]
        assert 1 <= s["epochs_run"] <= 2 and len(s["history"]) == s["epochs_run"]
        times = [e["seconds"] for e in s["history"]]
        assert all(t > 0 for t in times) and times == sorted(times)
        assert all(0 <= e["val_accuracy"] <= 1 for e in s["history"])
        # it stopped at the first epoch that reached the target, or ran out of epochs
        first = next((e["epoch"] for e in s["history"] if e["val_accuracy"] >= 0.3), None)
        assert s["epochs"] == first and s["epochs_run"] == (first or 2)
    assert m["plain_recipe"] == {"optimizer": "adam", "lr": 1e-3, "precision": "fp32"}
    assert (m["speedup"] is None) == (not (m["cnnrnn"]["reached"] and m["plain"]["reached"]))


def test_time_to_accuracy_refuses_unknown_models_and_bad_bounds() -> None:
    with pytest.raises(CnnrnnError, match="no time-to-accuracy target for 'gru'"):
        run_time_to_accuracy(["gru"])
    with pytest.raises(CnnrnnError, match="--target"):
        run_time_to_accuracy(["lstm"], target=1.5)
    with pytest.raises(CnnrnnError, match="--max-minutes"):
        run_time_to_accuracy(["lstm"], max_minutes=0)
