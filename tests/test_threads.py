"""CPU threads by default (`threads = -1`, auto): the count is picked at the start, printed,
recorded, and taken again on resume, so a resumed auto run repeats the straight one bit for bit;
`--set threads=N` pins N. And steps.csv, the per-step log a run writes by default."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import cnnrnn.threads as threads
from cnnrnn.checkpoint import load_checkpoint
from cnnrnn.cli import app
from cnnrnn.config import TrainConfig, load_config
from cnnrnn.progress import Reporter
from cnnrnn.tracking import read_steps
from cnnrnn.train import train

TINY = ["--model", "gru", "--limit-train", "256", "--batch-size", "64", "--set", "val_size=500",
        "--set", "model.hidden_size=16", "--set", "model.dropout=0.2", "--set",
        "schedule=constant", "--quiet"]
runner = CliRunner()


def cli(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def machine(monkeypatch, cpus: int, busy: int) -> None:
    """This process may use `cpus` CPUs, of which other jobs keep `busy` busy."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cpus)),
                        raising=False)
    monkeypatch.setattr(threads, "busy_cpus", lambda: busy)


def recorded(run: Path) -> tuple[list[int], int]:
    """The thread count of each session in environment.json, and last.pt's."""
    sessions = json.loads((run / "environment.json").read_text())
    return [s["threads"] for s in sessions], load_checkpoint(run / "last.pt")["threads"]


def history(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("ms_per_step", "train_seconds")}
            for r in rows]


def test_the_default_is_auto_printed_and_recorded(monkeypatch, tmp_path, data_dir):
    assert TrainConfig().threads == -1
    machine(monkeypatch, cpus=2, busy=1)  # the other job holds a core: auto takes the other
    buf = io.StringIO()
    cfg = load_config("single-label", "gru", overrides={
        "limit_train": 128, "val_size": 500, "batch_size": 64, "model.hidden_size": 8,
        "epochs": 1})
    train(cfg, tmp_path / "run", data_dir=data_dir,
          reporter=Reporter(console=Console(file=buf, width=200)))
    assert "device cpu, precision bf16, 1 thread (auto)" in buf.getvalue()
    assert recorded(tmp_path / "run") == ([1], 1)
    assert "threads = -1" in (tmp_path / "run" / "config.toml").read_text()  # auto, still
    assert threads.resolve_threads(-1) == 1 and threads.resolve_threads(-1, recorded=3) == 3
    assert threads.resolve_threads(4, recorded=3) == 4  # a pinned count wins


def test_a_resumed_auto_run_repeats_the_straight_run(monkeypatch, tmp_path, data_dir):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    machine(monkeypatch, cpus=2, busy=0)  # an idle machine: auto picks 2 threads
    cli("train", "--epochs", "2", "--out", straight, "--data-dir", data_dir, *TINY)
    cli("train", "--epochs", "1", "--out", cut, "--data-dir", data_dir, *TINY)
    # a run killed mid-epoch leaves steps.csv rows past last.pt's step: the resume drops them
    with open(cut / "steps.csv", "a") as f:
        f.write("5,2,9.0,0.001\n6,2,9.0,0.001\n7,2,9.")
    machine(monkeypatch, cpus=2, busy=1)  # busier now: auto alone would pick 1 thread
    cli("train", "--resume", cut, "--epochs", "2", "--data-dir", data_dir, "--quiet")
    assert recorded(cut) == ([2, 2], 2)  # the count the run started with
    assert history(cut) == history(straight)  # bit for bit
    a, b = load_checkpoint(straight / "last.pt")["model"], load_checkpoint(cut / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # steps.csv: a row per optimizer step, in order, each once, the same as the straight run's
    steps = read_steps(cut)
    assert [r["step"] for r in steps] == list(range(1, 9))  # 2 epochs of 256 / 64 steps
    assert [r["epoch"] for r in steps] == [1] * 4 + [2] * 4
    assert steps == read_steps(straight)
    assert steps[-1]["step"] == history(cut)[-1]["step"]
    with open(cut / "steps.csv", newline="") as f:
        assert next(csv.reader(f)) == ["step", "epoch", "loss", "lr"]
    # `--set threads=N` on resume pins N instead
    cli("train", "--resume", cut, "--epochs", "3", "--set", "threads=1", "--data-dir", data_dir,
        "--quiet")
    assert recorded(cut) == ([2, 2, 1], 1)
    assert [r["step"] for r in read_steps(cut)] == list(range(1, 13))


def test_set_threads_pins_the_count(monkeypatch, tmp_path, data_dir):
    machine(monkeypatch, cpus=2, busy=0)  # auto would pick 2
    cli("train", "--epochs", "1", "--set", "threads=1", "--out", tmp_path / "run",
        "--data-dir", data_dir, *TINY)
    assert recorded(tmp_path / "run") == ([1], 1)
    assert "threads = 1" in (tmp_path / "run" / "config.toml").read_text()


@pytest.mark.parametrize(("cpus", "busy", "want"), [(2, 0, 2), (2, 1, 1), (2, 5, 1), (8, 3, 5)])
def test_auto_is_the_cpus_no_other_job_keeps_busy(monkeypatch, cpus, busy, want):
    machine(monkeypatch, cpus, busy)
    assert threads.resolve_threads(-1) == want
