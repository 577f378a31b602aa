"""`make demo` (scripts/demo.py) at test sizes: it runs every step and ends with the test
numbers, the figures (a label-embedding map among them) and the next commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path):
    env = {**os.environ, "CNNRNN_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--tiny",
                           "--epochs", "1", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "LSTM, test: accuracy" in out and "CNN-RNN, test mosaics: O-F1" in out
    figures = out.split("figures:")[1].split("next:")[0].split()
    assert any(f.endswith("umap_single_items.png") for f in figures)
    assert all(Path(f).is_file() for f in figures)
    assert (tmp_path / "demo" / "costs-outfits.csv").is_file()
    assert "about" in done.stderr + out  # the encoder pretraining announced its time
    assert "cnnrnn predict" in out.split("next:")[1]
