"""End to end through the command line, at tiny size on real data, into a temporary folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnrnn.checkpoint import load_checkpoint, save_checkpoint
from cnnrnn.cli import app
from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.errors import CheckpointError

runner = CliRunner()
TINY = ["--limit-train", "256", "--batch-size", "64", "--set", "val_size=500",
        "--set", "model.hidden_size=24", "--quiet"]


def cli(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def cnnrnn_main(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess: exit codes and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "cnnrnn", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for model in ("lstm", "gru"):
        out[model] = root / model
        cli("train", "--task", "single-label", "--model", model, "--epochs", "2", "--out",
            out[model], "--data-dir", data_dir, *TINY)
    return out


def test_train_writes_the_run_folder(runs):
    run = runs["lstm"]
    names = {p.name for p in run.iterdir()}
    assert {"config.toml", "metrics.jsonl", "last.pt", "best.pt", "learning_curve.png",
            "confusion_matrix.png"} <= names
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert set(rows[0]) >= {"epoch", "step", "train_loss", "val_accuracy", "ms_per_step"}
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_json(runs, data_dir):
    result = json.loads(cli("evaluate", runs["lstm"], "--json", "--data-dir", data_dir))
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 10000  # the whole test set
    assert result["accuracy"] == pytest.approx(np.trace(cm) / 10000)
    assert len(result["per_class_accuracy"]) == 10
    assert result["per_class_accuracy"][3] == pytest.approx(cm[3, 3] / cm[3].sum())
    val = json.loads(cli("evaluate", runs["lstm"], "--json", "--split", "val",
                         "--data-dir", data_dir))
    assert np.array(val["confusion_matrix"]).sum() == 500


def test_a_run_trained_in_fp16_on_a_gpu_reads_on_a_cpu(runs, tmp_path, data_dir):
    # no GPU here: the same run with its precision said to be fp16, and one said to be fp32
    copies = {}
    for precision in ("fp16", "fp32"):
        copies[precision] = run = tmp_path / precision
        shutil.copytree(runs["gru"], run)
        for name in ("best.pt", "last.pt"):
            state = load_checkpoint(run / name)
            state["config"]["precision"] = precision
            save_checkpoint(state, run / name)
        text = (run / "config.toml").read_text()
        (run / "config.toml").write_text(re.sub(r'precision = "\w+"', f'precision = "{precision}"',
                                                text))
    # a CPU has no fp16 autocast: the fp16 run reads in fp32, as its fp32 twin does
    fp16, fp32 = (json.loads(cli("evaluate", copies[p], "--json", "--data-dir", data_dir))
                  for p in ("fp16", "fp32"))
    assert fp16["accuracy"] == fp32["accuracy"] and fp16["confusion_matrix"] == fp32[
        "confusion_matrix"]
    table = cli("compare", copies["fp16"], copies["fp32"], "--data-dir", data_dir, "--plot",
                tmp_path / "compare.png")
    assert "fp16" in table


def test_predict(runs, fmnist, tmp_path):
    images = fmnist.test_images[:7].numpy()
    np.save(tmp_path / "x.npy", images)
    cli("predict", runs["gru"], tmp_path / "x.npy", "--out", tmp_path / "p.json")
    pred = json.loads((tmp_path / "p.json").read_text())
    assert pred["classes"] == list(CLASSES)
    probs = np.array(pred["probs"])
    assert probs.shape == (7, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert pred["labels"] == probs.argmax(1).tolist()


def test_compare(runs, tmp_path, data_dir):
    out = cli("compare", runs["lstm"], runs["gru"], "--plot", tmp_path / "c.png",
              "--data-dir", data_dir)
    lines = out.strip().splitlines()
    assert lines[0].startswith("| run | model | parameters")
    assert len(lines) == 4 and "| lstm |" in lines[2] and "| gru |" in lines[3]
    assert (tmp_path / "c.png").is_file()


def test_user_errors_are_one_line(runs, tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((3, 28, 28), np.float32))
    np.save(tmp_path / "s.npy", np.zeros((3, 32, 32), np.uint8))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [
        (["predict", runs["lstm"], tmp_path / "f.npy"], "has dtype float32; expected uint8"),
        (["predict", runs["lstm"], tmp_path / "s.npy"], r"has shape \(3, 32, 32\); expected "
                                                        r"\(N, 28, 28\)"),
        (["predict", runs["lstm"], tmp_path / "o.npy"], "cannot read .* as a .npy array"),
        (["evaluate", tmp_path / "nowhere"], "run folder .*nowhere not found"),
        (["train", "--model", "lstmm"], "unknown model 'lstmm' .*did you mean 'lstm'"),
        (["train", "--set", "epochz=3"], "unknown key 'epochz'"),
        (["data", "check", "--data-dir", tmp_path], "Fashion-MNIST not found"),
    ]
    for args, message in cases:
        proc = cnnrnn_main(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert re.search(message, lines[0]), lines[0]


def test_checkpoint_of_another_model(runs, tmp_path):
    fake = tmp_path / "fake"
    shutil.copytree(runs["lstm"], fake)
    # The LSTM run's checkpoint dict with a GRU's weights: the message says they do not fit.
    state = load_checkpoint(runs["lstm"] / "best.pt")
    state["model"] = load_checkpoint(runs["gru"] / "best.pt")["model"]
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, fake / "best.pt")
    proc = cnnrnn_main("evaluate", fake)
    assert proc.returncode == 2
    assert "does not fit this model" in proc.stderr and "another model" in proc.stderr


def test_checkpoints_never_execute_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "cnnrnn-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_data_check_and_show(data_dir, tmp_path):
    out = cli("data", "check", "--data-dir", data_dir)
    assert "SHA-256 of content OK" in out and out.count("OK") == 4
    cli("data", "show", "--out", tmp_path / "s.png", "--data-dir", data_dir)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_refuses_new_options_and_continues(runs, tmp_path, data_dir):
    proc = cnnrnn_main("train", "--resume", runs["gru"], "--lr", "0.1")
    assert proc.returncode == 2
    assert "--resume continues with the run's own config; drop lr" in proc.stderr
    run = tmp_path / "more"
    shutil.copytree(runs["gru"], run)
    cli("train", "--resume", run, "--epochs", "3", "--data-dir", data_dir, "--quiet")
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_tta_flag(runs, data_dir):
    plain = json.loads(cli("evaluate", runs["lstm"], "--json", "--data-dir", data_dir))
    tta = json.loads(cli("evaluate", runs["lstm"], "--json", "--tta", "--data-dir", data_dir))
    assert (plain["tta_flip"], tta["tta_flip"]) == (False, True)
    # The mirrored images vote: predictions change for some of the 10,000 test images.
    assert plain["confusion_matrix"] != tta["confusion_matrix"]


def test_every_train_flag_sets_a_config_key():
    """`cnnrnn train`'s named flags are looked up in the config schema, not mapped by hand."""
    import inspect

    from cnnrnn import cli
    from cnnrnn.config import key_of

    params = set(inspect.signature(cli.train).parameters)
    not_config = {"task", "model", "config", "set_", "out", "resume", "overwrite", "data_dir",
                  "quiet", "print_config"}
    assert params - not_config == set(cli.CONFIG_FLAGS)
    keys = {name: key_of(name, "single-label") for name in cli.CONFIG_FLAGS}
    assert keys["beam_width"] == "multilabel.beam_width" and keys["lr"] == "lr"
    assert keys["costs"] == "single_label.costs"  # a name of both tasks: the run's task's
    assert key_of("costs", "multilabel") == "multilabel.costs"


def test_overwrite_and_taken_out_folder(runs, tmp_path, data_dir):
    run = tmp_path / "taken"
    shutil.copytree(runs["gru"], run)
    proc = cnnrnn_main("train", "--model", "gru", "--out", run, "--data-dir", data_dir)
    assert proc.returncode == 2 and "already holds a run; continue it with --resume" in (
        proc.stderr)
    cli("train", "--model", "gru", "--epochs", "1", "--out", run, "--overwrite",
        "--data-dir", data_dir, *TINY)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # the old run's two epochs are gone


def test_compare_json_and_csv(runs, tmp_path, data_dir):
    import csv
    import io

    rows = json.loads(cli("compare", runs["lstm"], runs["gru"], "--json", "--plot",
                          tmp_path / "c.png", "--data-dir", data_dir))
    assert [r["model"] for r in rows] == ["lstm", "gru"] and rows[0]["metric"] == "accuracy"
    table = list(csv.DictReader(io.StringIO(cli(
        "compare", runs["lstm"], runs["gru"], "--csv", "--label", "a", "--label", "b",
        "--plot", tmp_path / "c.png", "--data-dir", data_dir))))
    assert [r["run"] for r in table] == ["a", "b"]
    assert float(table[1]["test"]) == pytest.approx(rows[1]["test"])
