"""GPU-only paths: two training steps in bf16 and fp16 (with its gradient scaler), and a resumed
run equal to a straight one. Marked `gpu`; skipped without a CUDA device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnrnn.checkpoint import load_checkpoint
from cnnrnn.config import load_config
from cnnrnn.run_dir import RunDir
from cnnrnn.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TINY = {"limit_train": 256, "batch_size": 128, "val_size": 500, "epochs": 1, "device": "cuda",
        "model.width": 0.125}


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_two_steps_train_on_the_gpu(precision, tmp_path, data_dir):
    cfg = load_config("single-label", "vgg16", overrides={**TINY, "precision": precision})
    summary = train(cfg, tmp_path / precision, data_dir=data_dir)
    assert summary["steps"] == 2 and summary["stop"] == "finished"
    state = load_checkpoint(tmp_path / precision / "last.pt")
    assert ("scaler" in state) == (precision == "fp16")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_equals_straight_on_the_gpu(tmp_path, data_dir):
    over = {**TINY, "precision": "bf16", "schedule": "constant", "epochs": 2}
    train(load_config("single-label", "vgg16", overrides=over), tmp_path / "s",
          data_dir=data_dir)
    train(load_config("single-label", "vgg16", overrides={**over, "epochs": 1}), tmp_path / "r",
          data_dir=data_dir)
    train(RunDir(tmp_path / "r").resume_config(epochs=2), tmp_path / "r", resume=True,
          data_dir=data_dir)
    a, b = rows(tmp_path / "s"), rows(tmp_path / "r")
    # cuDNN may pick nondeterministic kernels: equal up to their rounding, not bit for bit
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-3)
