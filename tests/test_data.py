"""Fashion-MNIST location, verification, errors, split and in-memory batches."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from cnnrnn.data import fashion_mnist as fm
from cnnrnn.data.loader import IndexedBatches, augment, random_erase, to_input
from cnnrnn.errors import DataError


def test_loads_official_data(fmnist):
    assert fmnist.train_images.shape == (60000, 28, 28)
    assert fmnist.train_images.dtype == torch.uint8
    assert fmnist.test_images.shape == (10000, 28, 28)
    # First labels and per-class counts as published in docs/data.md.
    assert fmnist.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert fmnist.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert fmnist.train_labels.bincount().tolist() == [6000] * 10
    assert abs(fmnist.train_images.float().mean().item() / 255 - fm.MEAN) < 1e-3


def _copy(src: Path, dst: Path, gz: bool = True) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for idx in fm.FILES.values():
        if gz:
            shutil.copy(src / f"{idx.name}.gz", dst / f"{idx.name}.gz")
        else:
            (dst / idx.name).write_bytes(gzip.decompress((src / f"{idx.name}.gz").read_bytes()))
    return dst


@pytest.fixture(scope="module")
def plain_dir(data_dir, tmp_path_factory) -> Path:
    """The four files uncompressed (the test set only is re-read in most tests)."""
    return _copy(data_dir, tmp_path_factory.mktemp("plain"), gz=False)


def test_search_order_env_then_repo_folder(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNRNN_DATA", str(data_dir))
    assert fm.locate()["train_images"].parent == data_dir
    monkeypatch.delenv("CNNRNN_DATA")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fashion-mnist").symlink_to(data_dir)
    assert fm.locate()["test_labels"].parent.absolute() == tmp_path / "data" / "fashion-mnist"


def test_torchvision_layout_and_plain_files(plain_dir, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.parent.mkdir()
    raw.symlink_to(plain_dir)
    data = fm.load_fashion_mnist(tmp_path)  # found in <root>/FashionMNIST/raw, uncompressed
    assert data.test_labels[:3].tolist() == [9, 2, 1]


def test_explicit_dir_is_not_silently_replaced(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("CNNRNN_DATA", str(data_dir))
    with pytest.raises(DataError, match=r"not found \(looked in .*\); run `cnnrnn data download`"):
        fm.locate(tmp_path)


def test_missing_file_is_named(data_dir, tmp_path):
    _copy(data_dir, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError,
                       match="only part of Fashion-MNIST: t10k-labels-idx1-ubyte missing"):
        fm.load_fashion_mnist(tmp_path)


def test_truncated_gzip(data_dir, tmp_path):
    _copy(data_dir, tmp_path)
    f = tmp_path / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(DataError,
                       match="train-labels-idx1-ubyte.gz is truncated or not a valid gzip"):
        fm.load_fashion_mnist(tmp_path)


def test_truncated_plain_file(plain_dir, tmp_path):
    for p in plain_dir.iterdir():
        (tmp_path / p.name).symlink_to(p)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        (plain_dir / "t10k-labels-idx1-ubyte").read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is truncated: 9998 bytes"):
        fm.load_fashion_mnist(tmp_path)


def test_wrong_checksum(plain_dir, tmp_path):
    for p in plain_dir.iterdir():
        (tmp_path / p.name).symlink_to(p)
    content = bytearray((plain_dir / "t10k-labels-idx1-ubyte").read_bytes())
    content[100] = (content[100] + 1) % 10  # still a valid label: only the checksum can tell
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))
    with pytest.raises(DataError, match="fails its checksum .* corrupt or not the official one"):
        fm.load_fashion_mnist(tmp_path)


def test_not_an_idx_file(plain_dir, tmp_path):
    for p in plain_dir.iterdir():
        (tmp_path / p.name).symlink_to(p)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_text("<html>not found</html>")
    with pytest.raises(DataError, match="is not an IDX file of 1 dimensions"):
        fm.load_fashion_mnist(tmp_path)


def test_train_val_split_is_deterministic_and_disjoint():
    train, val = fm.train_val_split(60000, 5000)
    assert len(train) == 55000 and len(val) == 5000
    assert not set(train.tolist()) & set(val.tolist())
    again_train, again_val = fm.train_val_split(60000, 5000)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(val, fm.train_val_split(60000, 5000, seed=1)[1])


def test_batches_repeat_and_resume_mid_epoch(fmnist):
    images, labels = fmnist.train_images[:1000], fmnist.train_labels[:1000]
    batches = IndexedBatches(images, labels, 64, seed=3, augment=True)
    first = list(batches.epoch(2))
    assert len(first) == len(batches) == 1000 // 64
    again = list(batches.epoch(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(first, again, strict=True))
    tail = list(batches.epoch(2, start=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[5:], tail, strict=True))
    other = next(batches.epoch(3))
    assert not torch.equal(first[0][1], other[1])  # each epoch is shuffled anew
    x, y = first[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (64,)


def test_to_input_normalises():
    images = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    x = to_input(images)
    assert x.shape == (2, 1, 28, 28)
    assert torch.allclose(x, torch.tensor((1 - fm.MEAN) / fm.STD))


def test_augment_flips_and_shifts_within_bounds():
    img = torch.zeros(1, 28, 28, dtype=torch.uint8)
    img[0, 10, 3] = 200
    outs = [augment(img, torch.Generator().manual_seed(s)) for s in range(40)]
    positions = {tuple(o[0].nonzero()[0].tolist()) for o in outs if o.any()}
    assert all(o.dtype == torch.uint8 and o.shape == (1, 28, 28) for o in outs)
    # The pixel moves at most 2 rows; flipped copies land near column 24.
    assert all(8 <= r <= 12 for r, _ in positions)
    assert any(c <= 5 for _, c in positions) and any(c >= 22 for _, c in positions)


def test_random_erase_rectangles_within_bounds():
    images = torch.full((400, 28, 28), 7, dtype=torch.uint8)
    out = random_erase(images, torch.Generator().manual_seed(0), p=0.5)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    changed = out != images
    erased = changed.flatten(1).any(1)
    assert 0.4 < erased.float().mean() < 0.6  # about p of the images
    for img in changed[erased]:
        rows, cols = img.any(1).nonzero()[:, 0], img.any(0).nonzero()[:, 0]
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        area = (r1 - r0 + 1) * (c1 - c0 + 1)
        # one rectangle of 2 %..40 % of the image (rounding and noise equal to 7 allowed for)
        assert 0.01 * 784 <= area <= 0.45 * 784
        assert img[r0:r1 + 1, c0:c1 + 1].float().mean() > 0.9
    assert torch.equal(out, random_erase(images, torch.Generator().manual_seed(0), p=0.5))
    assert torch.equal(random_erase(images, torch.Generator().manual_seed(0), p=0.0), images)
