"""`--set log=tensorboard`: event files with the per-step and per-epoch scalars, the run's
figures and the class embeddings for the projector; refused at the start, in one line, without
the tensorboard package; an unknown `log` is one line too. (steps.csv, the default: see
tests/test_threads.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnrnn.cli import app
from cnnrnn.config import load_config
from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.evaluate import load_run
from cnnrnn.models.embeddings import class_embeddings
from cnnrnn.run_dir import RunDir
from cnnrnn.tasks import get_task
from cnnrnn.tracking import TensorBoardTracker

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

TINY = ["--model", "gru", "--limit-train", "256", "--batch-size", "64", "--set", "val_size=500",
        "--set", "model.hidden_size=16", "--quiet", "--set", "threads=1"]
runner = CliRunner()


def cli(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def projected(run: Path) -> torch.Tensor:
    """The vectors the projector shows, (K, D)."""
    rows = next((run / "tensorboard").rglob("tensors.tsv")).read_text().splitlines()
    return torch.tensor([[float(v) for v in r.split("\t")] for r in rows])


def test_tensorboard_logs_steps_epochs_figures_and_embeddings(tmp_path, data_dir):
    run = tmp_path / "run"
    cli("train", "--epochs", "2", "--set", "log=tensorboard", "--out", run, "--data-dir",
        data_dir, *TINY)
    acc = events(run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 9))  # a point per optimizer step
    assert [e.step for e in acc.Scalars("train/lr")] == list(range(1, 9))
    tags = set(acc.Tags()["scalars"])
    numeric = {k for k, v in rows[0].items() if isinstance(v, int | float) and k != "step"}
    assert {f"epoch/{k}" for k in numeric} <= tags and "epoch/val_accuracy" in tags
    got = [e.value for e in acc.Scalars("epoch/val_accuracy")]
    assert got == pytest.approx([r["val_accuracy"] for r in rows])
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [r["step"] for r in rows]
    assert {"figures/learning_curve", "figures/confusion_matrix"} <= set(acc.Tags()["images"])
    assert not (run / "steps.csv").exists()
    # the projector: the gru's head rows, one per class, named by class
    projector = next((run / "tensorboard").rglob("projector_config.pbtxt")).read_text()
    assert "class_embeddings" in projector and "metadata.tsv" in projector
    meta = next((run / "tensorboard").rglob("metadata.tsv")).read_text().splitlines()
    assert meta == list(CLASSES)
    torch.testing.assert_close(projected(run), class_embeddings(load_run(run)[2]))  # best.pt's


def test_a_resumed_tensorboard_run_logs_each_step_once(tmp_path, data_dir):
    run = tmp_path / "run"
    cli("train", "--epochs", "1", "--set", "log=tensorboard", "--out", run, "--data-dir",
        data_dir, *TINY)
    cli("train", "--resume", run, "--epochs", "2", "--data-dir", data_dir, "--quiet")
    assert [e.step for e in events(run).Scalars("train/loss")] == list(range(1, 9))


def test_the_cnn_rnn_projects_its_label_embeddings_u_l(tmp_path):
    cfg = load_config("multilabel", "cnn-rnn", overrides={
        "model.encoder_width": 0.0625, "model.hidden_size": 16, "model.embed_dim": 8})
    model = get_task("multilabel").build(cfg, None)
    tracker = TensorBoardTracker(RunDir(tmp_path), None)
    tracker.finish(RunDir(tmp_path), model, 7)
    tracker.close()
    torch.testing.assert_close(projected(tmp_path), model.U_l[:10].detach())  # no END, START


def test_without_tensorboard_log_tensorboard_is_one_line(tmp_path, data_dir, monkeypatch,
                                                          user_error):
    import cnnrnn.tracking as tracking

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    line = user_error("train", "--epochs", "1", "--set", "log=tensorboard", "--out",
                      tmp_path / "run", "--data-dir", data_dir, *TINY)
    assert "pip install 'cnnrnn[tensorboard]'" in line
    assert not (tmp_path / "run").exists()  # refused before the run started


def test_an_unknown_log_is_one_line(user_error):
    line = user_error("train", "--set", "log=wandb", "--print-config")
    assert line == "error: log = 'wandb' is not one of csv, tensorboard"
