"""Fashion-MNIST: find the four official IDX files, verify them, and hold them in memory.

The files are verified by the SHA-256 of their *uncompressed* content, because the Debian
package `dataset-fashion-mnist` ships the same data behind different gzip headers. The whole
dataset (about 55 MB as uint8) lives in memory; batches are drawn by index (see `loader.py`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnrnn.errors import DataError

CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Pixel statistics of the 60,000 training images on a 0..1 scale (see docs/data.md).
MEAN, STD = 0.2860, 0.3530


@dataclass(frozen=True)
class IdxFile:
    name: str  # file name without ".gz"
    sha256: str  # of the uncompressed content
    shape: tuple[int, ...]


FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", (60000, 28, 28)),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", (60000,)),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", (10000, 28, 28)),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", (10000,)),
}

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = ("run `cnnrnn data download` (needs internet), install the Debian package "
              "dataset-fashion-mnist, or point --data-dir / $CNNRNN_DATA at a folder holding "
              "the four official files")


@dataclass(frozen=True)
class FashionMNIST:
    """The whole dataset in memory. Images are raw 0-255 pixels, labels are 0..9."""

    train_images: torch.Tensor  # (60000, 28, 28) uint8
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 28, 28) uint8
    test_labels: torch.Tensor  # (10000,) int64
    source: Path  # the folder the files were read from


def candidate_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched, in order. An explicit `data_dir` is the only candidate."""
    if data_dir:
        roots = [Path(data_dir)]
    else:
        roots = [Path(p) for p in (os.environ.get("CNNRNN_DATA"),) if p]
        roots += [Path("data/fashion-mnist"), DEBIAN_DIR]
    dirs = []
    for root in roots:
        # torchvision's datasets.FashionMNIST(root) keeps the files in <root>/FashionMNIST/raw.
        dirs += [root, root / "FashionMNIST" / "raw"]
    return dirs


def _file_in(folder: Path, idx: IdxFile) -> Path | None:
    for name in (idx.name + ".gz", idx.name):
        if (folder / name).is_file():
            return folder / name
    return None


def locate(data_dir: str | Path | None = None) -> dict[str, Path]:
    """Return the paths of the four files from the first folder that holds any of them."""
    searched = candidate_dirs(data_dir)
    for folder in searched:
        found = {key: _file_in(folder, idx) for key, idx in FILES.items()}
        if not any(found.values()):
            continue
        missing = [FILES[k].name for k, p in found.items() if p is None]
        if missing:
            raise DataError(f"{folder} holds only part of Fashion-MNIST: {', '.join(missing)} "
                            f"missing; {HOW_TO_GET}")
        return found  # type: ignore[return-value]
    where = ", ".join(str(d) for d in searched)
    raise DataError(f"Fashion-MNIST not found (looked in {where}); {HOW_TO_GET}")


def read_bytes(path: Path) -> bytes:
    """The uncompressed content of an IDX file, gzip or plain."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is truncated or not a valid gzip file ({e}); replace it with a "
                        f"good copy: {HOW_TO_GET}") from None


def parse_idx(raw: bytes, idx: IdxFile, path: Path) -> np.ndarray:
    """Check the IDX header and size, then return the array (uint8, shape `idx.shape`)."""
    ndim = len(idx.shape)
    header = 4 + 4 * ndim
    expected = header + int(np.prod(idx.shape))
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if magic != 0x800 + ndim:
        raise DataError(f"{path} is not an IDX file of {ndim} dimensions (magic {magic:#x}); "
                        f"replace it with a good copy: {HOW_TO_GET}")
    if len(raw) != expected:
        raise DataError(f"{path} is truncated: {len(raw)} bytes uncompressed, expected "
                        f"{expected}; replace it with a good copy: {HOW_TO_GET}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(idx.shape)


def read_verified(path: Path, idx: IdxFile) -> np.ndarray:
    raw = read_bytes(path)
    array = parse_idx(raw, idx, path)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != idx.sha256:
        raise DataError(f"{path} fails its checksum (SHA-256 of content {digest[:12]}..., "
                        f"expected {idx.sha256[:12]}...): the file is corrupt or not the "
                        f"official one; {HOW_TO_GET}")
    return array


def load_fashion_mnist(data_dir: str | Path | None = None) -> FashionMNIST:
    """Locate, verify and load Fashion-MNIST; raise `DataError` with a one-line fix if not."""
    paths = locate(data_dir)
    arrays = {key: read_verified(paths[key], FILES[key]) for key in FILES}
    as_images = lambda a: torch.from_numpy(a.copy())  # noqa: E731 - frombuffer is read-only
    return FashionMNIST(
        train_images=as_images(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=as_images(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=paths["train_images"].parent,
    )


def train_val_split(n: int = 60000, val_size: int = 5000, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic split of range(n) into (train_idx, val_idx), both sorted.

    The split seed is separate from the training seed, so runs with different seeds are
    validated on the same images.
    """
    if not 0 <= val_size < n:
        raise DataError(f"val_size must be in [0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


DOWNLOAD_TIMEOUT = 30.0  # seconds to connect, and between two reads, before giving up


def download(root: str | Path) -> Path:
    """Fetch the four files with torchvision into `<root>/FashionMNIST/raw` and verify them."""
    import socket

    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # connect and read; torchvision sets none
    try:
        TVFashionMNIST(str(root), train=True, download=True)
        TVFashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types
        reason = " ".join(str(e).split())  # torchvision's message spans several lines
        raise DataError(f"download failed ({type(e).__name__}: {reason}); check the internet "
                        f"connection or copy the files by hand into {root}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    load_fashion_mnist(root)
    return Path(root) / "FashionMNIST" / "raw"
