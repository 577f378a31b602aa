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
    assert parse_models(None)[-1] == "cnn-rnn"
    assert parse_models("gru, cnn,gru") == ["gru", "cnn"]
    with pytest.raises(CnnrnnError, match="unknown model 'vgg' for --models; choose from rnn"):
        parse_models("cnn,vgg")
