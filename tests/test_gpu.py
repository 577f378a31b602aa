"""GPU paths: two training steps in bf16 and fp16 (with its gradient scaler), a resumed run equal
to a straight one, batches and mosaics built in the device's memory, a multilabel run on it.

Each test runs on "cuda", marked `gpu` and skipped without a CUDA device, and on "cpu" (fp16
aside: it is for GPUs), so the tests themselves run on every machine and cannot rot unseen
between the rare sessions that have a GPU (one of them did: it needed a pretrained encoder).
The last test runs scripts/gpu_check.sh, what such a session runs, in its tiny CPU form.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnrnn.checkpoint import load_checkpoint
from cnnrnn.config import load_config
from cnnrnn.encoders import prepare
from cnnrnn.run_dir import RunDir
from cnnrnn.train import train

CUDA = pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])
DEVICES = ["cpu", CUDA]
OLD_BCE = Path(__file__).resolve().parent / "fixtures" / "old_runs" / "bce"
TINY = {"limit_train": 256, "batch_size": 128, "val_size": 500, "epochs": 1,
        "model.width": 0.125}


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("device", "precision"), [
    ("cpu", "bf16"), pytest.param("cuda", "bf16", marks=CUDA.marks),
    pytest.param("cuda", "fp16", marks=CUDA.marks)])
def test_two_steps_train(device, precision, tmp_path, data_dir):
    cfg = load_config("single-label", "vgg16",
                      overrides={**TINY, "device": device, "precision": precision})
    summary = train(cfg, tmp_path / precision, data_dir=data_dir)
    assert summary["steps"] == 2 and summary["stop"] == "finished"
    state = load_checkpoint(tmp_path / precision / "last.pt")
    assert ("scaler" in state) == (precision == "fp16")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("device", DEVICES)
def test_resume_equals_straight(device, tmp_path, data_dir):
    over = {**TINY, "device": device, "precision": "bf16", "schedule": "constant", "epochs": 2}
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


@pytest.mark.parametrize("device", DEVICES)
def test_batches_are_built_in_the_device_memory(device, fmnist):
    """Single-label batches gathered and augmented on the device hold the CPU's pixels; mosaics
    built on the device are mosaics (their labels are the classes in their cells) and repeat."""
    from cnnrnn.data.loader import IndexedBatches
    from cnnrnn.data.mosaics import MosaicGenerator, split_pool
    from cnnrnn.data.priors import load_prior
    from cnnrnn.tasks.multilabel import MosaicBatches

    host = IndexedBatches(fmnist.train_images[:512], fmnist.train_labels[:512], 128, seed=3,
                          augment=True, erase=0.5)
    moved = host.to(torch.device(device))
    for (x, y), (xd, yd) in zip(host.epoch(1), moved.epoch(1), strict=True):
        assert xd.device.type == yd.device.type == device
        assert torch.equal(yd.cpu(), y)
        torch.testing.assert_close(xd.cpu(), x)  # the same pixels, normalised on either device

    images, labels, _ = split_pool(fmnist, "train", 5000)
    gen = MosaicGenerator(images, labels, load_prior("outfits")).to(device)
    g = torch.Generator(device).manual_seed(0)
    mosaics, sets, items = gen.sample(256, g, return_items=True)
    assert mosaics.device.type == sets.device.type == device
    cells = torch.where(items >= 0, labels.to(device)[items.clamp(min=0)], 10)
    present = torch.nn.functional.one_hot(cells, 11)[..., :10].amax(1)
    assert torch.equal(present.to(torch.uint8), sets)
    source = MosaicBatches(MosaicGenerator(images, labels, load_prior("outfits")), 256, 128, 0)
    a, b = list(source.to(torch.device(device)).epoch(0)), list(source.to(device).epoch(0))
    assert a[0][0].device.type == device
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_multilabel_trains_with_mosaics(device, tmp_path, data_dir):
    over = {"limit_train": 256, "batch_size": 128, "val_size": 500, "epochs": 1,
            "device": device, "precision": "bf16", "multilabel.encoder_checkpoint": str(OLD_BCE),
            "multilabel.val_mosaics": 200, "multilabel.test_mosaics": 200}
    # a multilabel model starts from a pretrained encoder: here a fixture run's (width 0.0625)
    cfg = prepare(load_config("multilabel", "bce", overrides=over), explicit=over)
    summary = train(cfg, tmp_path / "bce", data_dir=data_dir)
    assert summary["steps"] == 2 and summary["stop"] == "finished"


def test_the_gpu_check_script_runs_its_steps_on_the_cpu(tmp_path, data_dir):
    # scripts/gpu_check.sh is what a session with a GPU runs; here its tiny CPU form, so the
    # script cannot rot unseen either
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CNNRNN_DATA": str(data_dir), "GPU_CHECK_DEVICE": "cpu",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(repo / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert log.count(": exit 0 after") == 4 and "== 0 step(s) failed" in log
    rows = [json.loads(x) for x in (tmp_path / "out" / "vgg16-metrics.jsonl").read_text()
            .splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "accuracy" in json.loads((tmp_path / "out" / "vgg16-evaluate.json").read_text())
    assert (tmp_path / "out" / "cnn-rnn-metrics.jsonl").is_file()
