"""Shared fixtures. Tests read the real Fashion-MNIST files from ../shared (or $CNNRNN_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cnnrnn.data.fashion_mnist import load_fashion_mnist

REPO = Path(__file__).resolve().parent.parent


def _data_dir() -> Path:
    for candidate in (os.environ.get("CNNRNN_DATA"), REPO.parent / "shared/data/fashion-mnist",
                      "/usr/share/datasets/fashion-mnist"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    pytest.exit("Fashion-MNIST not found: set CNNRNN_DATA to the folder holding the four files",
                returncode=4)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _data_dir()


@pytest.fixture(scope="session")
def fmnist(data_dir: Path):
    return load_fashion_mnist(data_dir)


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests train tiny models: more threads only add overhead on a 2-core machine.
    torch.set_num_threads(1)
    yield
