"""Test items or mosaics written as files people can look at and feed to `cnnrnn predict`
(`cnnrnn data export`): one .npy array (N, S, S) uint8, an .npz with their true labels too, or
a folder of PNG files named so that their order and true labels show, e.g. 0003-Sneaker.png or
0003-Bag+Sneaker.png. `cnnrnn predict RUN FILE.npy` and `cnnrnn predict RUN FOLDER` read them
in the same order with the same pixels, so they give the same predictions.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST
from cnnrnn.data.mosaics import SPLITS, make_split_mosaics, split_pool
from cnnrnn.errors import CnnrnnError
from cnnrnn.files import atomic_write

ARRAY_SUFFIXES = (".npy", ".npz")


def export_kind(out: Path) -> str:
    """'npy', 'npz' or 'folder' for --out; anything else is a one-line error, before any data
    is read. A path without a suffix (or an existing folder) is a folder."""
    suffix = out.suffix.lower()
    if out.is_dir() or not suffix:
        if out.is_dir() and any(p.suffix.lower() == ".png" for p in out.iterdir()):
            raise CnnrnnError(f"--out {out} already holds PNG files, which `cnnrnn predict` "
                              "would read with the new ones; give an empty or new folder")
        if not out.parent.is_dir():
            raise CnnrnnError(f"--out {out}: folder {out.parent} does not exist; create it "
                              "first")
        return "folder"
    if suffix not in ARRAY_SUFFIXES:
        raise CnnrnnError(f"--out {out}: give a .npy file (the images), an .npz file (images "
                          f"and labels) or a folder for PNG files, not {suffix}")
    if not out.parent.is_dir():
        raise CnnrnnError(f"--out {out}: folder {out.parent} does not exist; create it first")
    return suffix[1:]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise CnnrnnError(f"unknown split {split!r}; choose test, val or train")


def export_items(fmnist: FashionMNIST, split: str, n: int, prior: str | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first n items of a split (train and val as `cnnrnn.data.mosaics.split_pool` parts
    them), or with `prior` n mosaics of the split drawn as `cnnrnn data mosaics` draws them.

    Returns images (n, S, S) uint8 and labels: (n,) uint8 classes, or (n, 10) uint8 multi-hot
    for mosaics.
    """
    check_split(split)
    if prior is not None:
        images, labels = make_split_mosaics(fmnist, split, n, prior, seed)
        return images.numpy(), labels.numpy()
    images, labels, _ = split_pool(fmnist, split)
    if not 1 <= n <= len(images):
        raise CnnrnnError(f"--n {n} is out of range: the {split} split has {len(images):,} "
                          f"items; give 1 to {len(images):,}")
    return images[:n].numpy(), labels[:n].numpy().astype(np.uint8)


def label_name(label: np.ndarray) -> str:
    """A file-name part for a class (0-d) or a multi-hot set (10,): the class names before
    any '/', joined by '+' ('T-shirt', 'Bag+Sneaker'); 'none' for an empty set."""
    picks = [int(label)] if label.ndim == 0 else np.flatnonzero(label).tolist()
    return "+".join(CLASSES[k].split("/")[0].replace(" ", "_") for k in picks) or "none"


def png_names(labels: np.ndarray) -> list[str]:
    """One file name per image, zero-padded so that sorting by name keeps the order."""
    width = max(4, len(str(len(labels) - 1)))
    return [f"{i:0{width}d}-{label_name(label)}.png" for i, label in enumerate(labels)]


def write_export(out: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """Write images (N, S, S) uint8 as `export_kind(out)` says; returns the files written."""
    kind = export_kind(out)
    if kind == "folder":
        out.mkdir(exist_ok=True)
        paths = [out / name for name in png_names(labels)]
        for path, pixels in zip(paths, images, strict=True):
            atomic_write(path, lambda f, p=pixels: Image.fromarray(p).save(f, format="PNG"))
        return paths
    buf = io.BytesIO()
    if kind == "npy":
        np.save(buf, images, allow_pickle=False)
    else:
        np.savez_compressed(buf, images=images, labels=labels)
    atomic_write(out, buf.getvalue())
    return [out]
