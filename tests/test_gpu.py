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


def test_batches_are_built_in_gpu_memory(fmnist):
    """Single-label batches gathered and augmented on the GPU hold the CPU's pixels; mosaics
    built on the GPU are mosaics (their labels are the classes in their cells) and repeat."""
    from cnnrnn.data.loader import IndexedBatches
    from cnnrnn.data.mosaics import MosaicGenerator, split_pool
    from cnnrnn.data.priors import load_prior
    from cnnrnn.tasks.multilabel import MosaicBatches

    host = IndexedBatches(fmnist.train_images[:512], fmnist.train_labels[:512], 128, seed=3,
                          augment=True, erase=0.5)
    gpu = host.to(torch.device("cuda"))
    for (x, y), (xg, yg) in zip(host.epoch(1), gpu.epoch(1), strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yg.cpu(), y)
        torch.testing.assert_close(xg.cpu(), x)  # the same pixels, normalised on either device

    images, labels, _ = split_pool(fmnist, "train", 5000)
    gen = MosaicGenerator(images, labels, load_prior("outfits")).to("cuda")
    g = torch.Generator("cuda").manual_seed(0)
    mosaics, sets, items = gen.sample(256, g, return_items=True)
    assert mosaics.is_cuda and sets.is_cuda
    cells = torch.where(items >= 0, labels.cuda()[items.clamp(min=0)], 10)
    present = torch.nn.functional.one_hot(cells, 11)[..., :10].amax(1)
    assert torch.equal(present.to(torch.uint8), sets)
    source = MosaicBatches(MosaicGenerator(images, labels, load_prior("outfits")), 256, 128, 0)
    a, b = list(source.to(torch.device("cuda")).epoch(0)), list(source.to("cuda").epoch(0))
    assert a[0][0].is_cuda and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))


def test_multilabel_trains_with_mosaics_on_the_gpu(tmp_path, data_dir):
    over = {"limit_train": 256, "batch_size": 128, "val_size": 500, "epochs": 1,
            "device": "cuda", "precision": "bf16", "model.encoder_width": 0.125,
            "multilabel.val_mosaics": 200, "multilabel.test_mosaics": 200}
    cfg = load_config("multilabel", "bce", overrides=over)
    summary = train(cfg, tmp_path / "bce", data_dir=data_dir)
    assert summary["steps"] == 2 and summary["stop"] == "finished"
