"""Training data held on the training device (`data_device`): the same batches wherever the
data lives. On a CPU the move is a no-op; tests/test_gpu.py checks a GPU's memory."""

from __future__ import annotations

import json

import pytest
import torch

from cnnrnn.config import load_config
from cnnrnn.data.loader import IndexedBatches
from cnnrnn.data.mosaics import MosaicGenerator, split_pool
from cnnrnn.data.priors import load_prior
from cnnrnn.errors import ConfigError
from cnnrnn.tasks.multilabel import MosaicBatches
from cnnrnn.train import train


def test_moved_sources_give_the_same_batches(fmnist):
    cpu = torch.device("cpu")
    host = IndexedBatches(fmnist.train_images[:300], fmnist.train_labels[:300], 64, seed=1,
                          augment=True, erase=0.5)
    moved = host.to(cpu)
    assert moved is not host and moved.images.device == cpu
    for (x, y), (xm, ym) in zip(host.epoch(2), moved.epoch(2), strict=True):
        assert torch.equal(x, xm) and torch.equal(y, ym)
    images, labels, _ = split_pool(fmnist, "train", 5000)
    source = MosaicBatches(MosaicGenerator(images, labels, load_prior("outfits")), 128, 64, 4)
    moved = source.to(cpu)
    assert moved.generator is not source.generator and moved.generator.device == cpu
    for (x, y), (xm, ym) in zip(source.epoch(0), moved.epoch(0), strict=True):
        assert torch.equal(x, xm) and torch.equal(y, ym)


def test_data_device_cpu_trains_the_same_run(tmp_path, data_dir):
    over = {"limit_train": 256, "batch_size": 64, "val_size": 500, "epochs": 1,
            "model.hidden_size": 16, "threads": 1}
    for where in ("auto", "cpu"):
        cfg = load_config("single-label", "gru", overrides={**over, "data_device": where})
        train(cfg, tmp_path / where, data_dir=data_dir)
    rows = [json.loads((tmp_path / w / "metrics.jsonl").read_text().splitlines()[0])
            for w in ("auto", "cpu")]
    assert rows[0]["train_loss"] == rows[1]["train_loss"]
    assert rows[0]["val_accuracy"] == rows[1]["val_accuracy"]


def test_an_unknown_data_device_is_refused():
    with pytest.raises(ConfigError, match="data_device"):
        load_config("single-label", "gru", overrides={"data_device": "gpu"})
