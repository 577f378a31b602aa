"""Shared fixtures. Tests that need Fashion-MNIST take the `data_dir` (or `fmnist`) fixture.

The data is found through $CNNRNN_DATA when it is set (and only there), else in the repository's
data/fashion-mnist/, a `shared/data/fashion-mnist/` folder beside the checkout (this project's
machines and CI) or the Debian package's /usr/share/datasets/fashion-mnist/. Without it, the
tests that need it are skipped, saying why, and every other test still runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from cnnrnn.data.fashion_mnist import load_fashion_mnist

REPO = Path(__file__).resolve().parent.parent
NO_DATA = ("Fashion-MNIST not found: set CNNRNN_DATA to the folder holding the four files "
           "(or run `cnnrnn data download`)")


def find_data_dir() -> Path | None:
    if "CNNRNN_DATA" in os.environ:
        candidates = [os.environ["CNNRNN_DATA"]]
    else:
        candidates = [REPO / "data/fashion-mnist", REPO.parent / "shared/data/fashion-mnist",
                      "/usr/share/datasets/fashion-mnist"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = find_data_dir()
    if found is None:
        pytest.skip(NO_DATA)
    return found


@pytest.fixture(scope="session")
def fmnist(data_dir: Path):
    return load_fashion_mnist(data_dir)


@pytest.fixture
def user_error(monkeypatch, capsys):
    """`cnnrnn ARGS` through the entry point in this process, as the installed command runs
    it (a subprocess costs seconds): asserts exit status 2 and one `error:` line, returns it."""
    from cnnrnn.cli import main

    def run(*args) -> str:
        monkeypatch.setattr(sys, "argv", ["cnnrnn", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        return lines[0]

    return run


@pytest.fixture
def listening_reporter():
    """A silent Reporter that keeps every message it is told to say, in `.said`."""
    from cnnrnn.progress import Reporter

    class Listening(Reporter):
        def __init__(self) -> None:
            super().__init__(enabled=False)
            self.said: list[str] = []

        def say(self, message: str) -> None:
            self.said.append(message)

    return Listening()


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # Tests train tiny models: more threads only add overhead on a 2-core machine. And runs a
    # test compares bit for bit need one count, which the default `threads = -1` (auto) would
    # pick anew from the machine's load: here every CPU counts as busy, so auto picks 1 thread
    # (tests/test_threads.py sets the load it tests auto with).
    torch.set_num_threads(1)
    monkeypatch.setattr("cnnrnn.threads.busy_cpus", lambda: os.cpu_count() or 1)
    yield


def pytest_collection_modifyitems(config, items):
    """A test that reads Fashion-MNIST (it asks for the `data_dir` or `fmnist` fixture, itself
    or through another fixture) trains, evaluates or draws mosaics on real data: it is marked
    `slow`, so `make test-fast` (`-m "not slow"`) leaves it out. Other long tests carry the
    mark by hand (a subprocess install, the demo)."""
    for item in items:
        if {"data_dir", "fmnist"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
