"""The Python API: the README's "Python" example runs as written (taken from README.md, so the
two cannot drift), and `launch` resumes, refuses and reports as `cnnrnn train` does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cnnrnn.config import load_config
from cnnrnn.errors import CnnrnnError
from cnnrnn.evaluate import predict_run
from cnnrnn.launch import launch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The python block of the README's "Python" section."""
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_example_runs(tmp_path, monkeypatch, data_dir):
    code = readme_example()
    assert len([x for x in code.splitlines() if x.strip()]) <= 10
    assert '"limit_train": 256, "epochs": 1, "val_size": 500' in code  # tiny, as tests are
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNRNN_DATA", str(data_dir))
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    run = tmp_path / "runs" / "notebook-cnn"
    summary, test, predicted = scope["summary"], scope["test"], scope["predicted"]
    assert summary["stop"] == "finished" and summary["out"] == "runs/notebook-cnn"
    assert summary["best_metric"] == json.loads((run / "val_metrics.json").read_text())["accuracy"]
    assert test["split"] == "test" and test["n"] == 10_000 and 0 <= test["accuracy"] <= 1
    # the images given from Python predict as the same images saved to a .npy file do
    np.save(tmp_path / "five.npy", scope["images"].numpy())
    from_file = predict_run(run, tmp_path / "five.npy")
    assert predicted["labels"] == from_file["labels"] and len(predicted["labels"]) == 5
    assert predicted["names"] == [f"images[{i}]" for i in range(5)]
    # resume it for one more epoch, then once more: a finished run trains nothing
    more = launch(resume=run, changes={"epochs": 2}, quiet=True)
    assert more["stop"] == "finished" and len(more["history"]) == 2
    assert launch(resume=run, changes={"epochs": 2}, quiet=True)["stop"] == "already finished"


def test_launch_refuses_what_cnnrnn_train_refuses(tmp_path):
    cfg = load_config("single-label", "gru")
    with pytest.raises(CnnrnnError, match="give a config to train"):
        launch()
    with pytest.raises(CnnrnnError, match="give resume alone"):
        launch(cfg, resume=tmp_path)
    with pytest.raises(CnnrnnError, match="only epochs, device, threads, checkpoint_minutes"):
        launch(resume=tmp_path, changes={"lr": 0.1})
    with pytest.raises(CnnrnnError, match="changes are for a resumed run"):
        launch(cfg, tmp_path / "run", changes={"epochs": 2})
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "last.pt").write_bytes(b"")
    with pytest.raises(CnnrnnError, match="already holds a run; continue it with --resume"):
        launch(cfg, tmp_path / "taken")
