"""`cnnrnn predict RUN INPUT` on images as people have them: .npy, .npz, PNG and JPEG files and
folders, resized and inverted; and every mistake in them one line, exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnrnn.cli import app
from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.data.mosaics import make_split_mosaics, save_mosaics
from cnnrnn.errors import CnnrnnError
from cnnrnn.images import read_inputs

runner = CliRunner()
TINY = ["--model", "gru", "--epochs", "1", "--limit-train", "256", "--batch-size", "64",
        "--set", "val_size=500", "--set", "model.hidden_size=16", "--quiet"]


def cli(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def predict(*args: str | Path) -> dict:
    return json.loads(cli("predict", *args))


def save_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "gru"
    cli("train", "--out", out, "--data-dir", data_dir, *TINY)
    return out


@pytest.fixture(scope="module")
def images(fmnist) -> np.ndarray:
    return fmnist.test_images[:5].numpy()  # (5, 28, 28) uint8


def test_every_kind_of_input_gives_the_same_predictions(run, images, tmp_path):
    np.save(tmp_path / "x.npy", images)
    np.savez(tmp_path / "x.npz", images=images, labels=np.zeros((5, 10), np.uint8))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, pixels in enumerate(images):
        save_png(folder / f"item-{4 - i}.png", pixels)  # names sort in the reverse order
    (folder / "notes.txt").write_text("not an image")  # ignored

    from_npy = predict(run, tmp_path / "x.npy")
    assert from_npy["classes"] == list(CLASSES)
    assert from_npy["names"] == [f"x.npy[{i}]" for i in range(5)]
    assert len(from_npy["labels"]) == 5 and np.array(from_npy["probs"]).shape == (5, 10)
    from_npz = predict(run, tmp_path / "x.npz")
    assert from_npz["names"] == [f"x.npz[{i}]" for i in range(5)]
    assert from_npz["labels"] == from_npy["labels"]
    from_folder = predict(run, folder)
    assert from_folder["names"] == [f"item-{i}.png" for i in range(5)]
    assert from_folder["labels"] == from_npy["labels"][::-1]  # PNG is lossless
    one = predict(run, folder / "item-4.png")
    assert one["names"] == ["item-4.png"] and one["labels"] == from_npy["labels"][:1]


def test_photos_are_grey_resized_and_inverted(run, images, tmp_path):
    # A 56x56 colour PNG of a dark item on a light background, like a photo.
    big = Image.fromarray(255 - images[0]).resize((56, 56), Image.Resampling.NEAREST)
    big.convert("RGB").save(tmp_path / "photo.png")
    read, names = read_inputs(tmp_path / "photo.png", 28, invert=True)
    assert read.shape == (1, 28, 28) and names == ["photo.png"]
    assert np.abs(read[0].numpy().astype(int) - images[0]).mean() < 8  # close, if not exact

    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for i, pixels in enumerate(images):
        save_png(inverted / f"{i}.png", 255 - pixels)
    np.save(tmp_path / "x.npy", images)
    assert (predict(run, inverted, "--invert")["labels"]
            == predict(run, tmp_path / "x.npy")["labels"])
    assert len(predict(run, tmp_path / "photo.png", "--invert")["labels"]) == 1


def test_jpeg_and_16_bit_png(images, tmp_path):
    Image.fromarray(images[0]).convert("RGB").save(tmp_path / "a.jpg", quality=95)
    read, _ = read_inputs(tmp_path / "a.jpg", 28)
    assert np.abs(read[0].numpy().astype(int) - images[0]).mean() < 8  # JPEG is lossy
    Image.fromarray(images[0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    read, _ = read_inputs(tmp_path / "deep.png", 28)
    assert np.array_equal(read[0].numpy(), images[0])  # scaled to 0-255, not clipped


def test_out_names_each_file_and_zero_images(run, images, tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    save_png(folder / "a.png", images[0])
    save_png(folder / "b.png", images[1])
    cli("predict", run, folder, "--out", tmp_path / "p.json")
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["names"] == ["a.png", "b.png"] and len(written["labels"]) == 2

    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), np.uint8))
    assert predict(run, tmp_path / "none.npy") == {
        "classes": list(CLASSES), "names": [], "labels": [], "probs": []}


def test_mosaics_npz_at_size_56(fmnist, tmp_path):
    mosaics, labels = make_split_mosaics(fmnist, "test", 3, "outfits", seed=0)
    save_mosaics(tmp_path / "m.npz", mosaics, labels)
    read, names = read_inputs(tmp_path / "m.npz", 56)
    assert read.dtype == mosaics.dtype and read.shape == (3, 56, 56)
    assert read.equal(mosaics) and names == ["m.npz[0]", "m.npz[1]", "m.npz[2]"]
    assert read_inputs(tmp_path / "m.npz", 56, invert=True)[0].equal(255 - mosaics)
    with pytest.raises(CnnrnnError, match=r"m.npz\['images'\] has shape \(3, 56, 56\); "
                                          r"expected \(N, 28, 28\)"):
        read_inputs(tmp_path / "m.npz", 28)


def test_input_mistakes_are_one_line(run, user_error, tmp_path):
    np.save(tmp_path / "unit.npy", np.full((2, 28, 28), 0.5, np.float32))
    np.save(tmp_path / "big.npy", np.zeros((2, 32, 32), np.uint8))
    np.savez(tmp_path / "other.npz", pixels=np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("hello")
    cases = [
        ("unit.npy", r"unit.npy has dtype float32 with values in \[0, 1\]; expected uint8 raw "
                     r"pixels 0-255: save \(arr \* 255\).round\(\).astype\(np.uint8\)"),
        ("big.npy", r"has shape \(2, 32, 32\); expected \(N, 28, 28\)"),
        ("other.npz", r"other.npz has no 'images' array \(it holds pixels\)"),
        ("broken.png", r"cannot read image .*broken.png"),
        ("empty", r"empty holds no PNG or JPEG files"),
        ("x.txt", r"cannot read .*x.txt: its extension is not .npy"),
        ("missing.npy", r"missing.npy not found"),
    ]
    for name, message in cases:
        line = user_error("predict", run, tmp_path / name)
        assert re.search(message, line), line


def test_out_and_device_are_checked_before_predicting(run, user_error, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")  # read only after the checks
    line = user_error("predict", run, tmp_path / "broken.png",
                      "--out", tmp_path / "nowhere" / "p.json")
    assert "nowhere does not exist" in line and not (tmp_path / "nowhere").exists()
    line = user_error("predict", run, tmp_path / "broken.png",
                      "--out", tmp_path)
    assert f"--out {tmp_path} is a folder" in line
    line = user_error("predict", tmp_path / "no-run", tmp_path / "x.npy",
                      "--device", "tpu")
    assert "--device 'tpu' is not one of auto, cpu, cuda, mps" in line


def test_the_installed_command_says_one_line(run, tmp_path):
    """The same mistakes through `python -m cnnrnn`, as a user's shell sees them."""
    np.save(tmp_path / "unit.npy", np.random.default_rng(0).random((2, 28, 28)))
    cases = [(["predict", run, tmp_path / "unit.npy"], "has dtype float64 with values in"),
             (["predict", run, tmp_path / "unit.npy", "--device", "tpu"], "--device 'tpu'")]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "cnnrnn", *map(str, args)],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and message in lines[0], lines[0]
