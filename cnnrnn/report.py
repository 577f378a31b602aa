"""Human-readable output of the CLI: evaluation tables and sample grids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cnnrnn.data.fashion_mnist import CLASSES, load_fashion_mnist
from cnnrnn.errors import CnnrnnError
from cnnrnn.run_dir import RunDir
from cnnrnn.tasks import get_task


def print_evaluation(result: dict[str, Any], run: Path, plots: bool = False,
                     fmt: str = "png") -> None:
    """The metrics of `cnnrnn evaluate` as tables; with `plots`, also the figures of the run's
    task, written into the run folder in format `fmt` (png, pdf or svg)."""
    task = get_task(result["task"])
    console = Console()
    console.print(f"{result['model']} on {result['split']} ({result['n']:,} images, "
                  f"{result['checkpoint']} checkpoint from epoch {result['epoch']})")
    table = Table("metric", "value")
    for key in task.summary_keys:
        if key in result:
            table.add_row(key, task.format_value(key, result[key]))
    console.print(table)
    rows = task.per_class_rows(result)
    if rows:
        per_class = Table("class", task.primary)
        for name, value in rows:
            per_class.add_row(name, value)
        console.print(per_class)
    for path in task.plot_evaluation(result, RunDir(run), fmt) if plots else []:
        console.print(f"figure: {path}")


def prediction_rows(result: dict[str, Any], top: int = 3) -> tuple[list[str], list[list[str]]]:
    """The header and rows of `cnnrnn predict`'s table from its JSON (`predict_run`).

    Single-label: per image its predicted class and the `top` classes by probability, in %.
    Multilabel: per image its predicted label set, each label with its score (0-1, the
    model's own: a probability for binary relevance, the decoder's for a CNN-RNN), and the
    best-scored labels outside the set."""
    classes = result["classes"]
    if "labels" in result:
        header = ["image", "predicted", *[f"top {k + 1}" for k in range(top)]]
        rows = []
        for name, label, probs in zip(result["names"], result["labels"], result["probs"],
                                      strict=True):
            best = np.argsort(-np.asarray(probs), kind="stable")[:top]
            rows.append([name, classes[label],
                         *[f"{classes[k]} {100 * probs[k]:.1f} %" for k in best]])
        return header, rows
    rows = []
    for name, labels, scores in zip(result["names"], result["label_sets"], result["scores"],
                                    strict=True):
        chosen = sorted(labels, key=lambda k: -scores[k])
        others = [k for k in np.argsort(-np.asarray(scores), kind="stable") if k not in labels]
        rows.append([name, ", ".join(f"{classes[k]} {scores[k]:.2f}" for k in chosen) or "-",
                     ", ".join(f"{classes[k]} {scores[k]:.2f}" for k in others[:2])])
    return ["image", "predicted labels (score)", "next best (score)"], rows


def print_predictions(result: dict[str, Any], top: int = 3) -> None:
    """`cnnrnn predict`'s result as a table on the terminal (`prediction_rows`)."""
    header, rows = prediction_rows(result, top)
    table = Table(*header)
    table.columns[0].overflow = "fold"  # a long file name wraps; it is never cut off
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"{len(rows)} image{'s' if len(rows) != 1 else ''}; --json prints every "
                  "score")


def show_samples(out: Path, n: int, seed: int, data_dir: Path | None) -> None:
    """n training images, cycling through the ten classes, titled with their class names."""
    from cnnrnn.plots import plot_image_grid

    data = load_fashion_mnist(data_dir)
    g = torch.Generator().manual_seed(seed)
    picks = []
    for i in range(n):
        pool = (data.train_labels == i % 10).nonzero().flatten()
        picks.append(int(pool[torch.randint(len(pool), (1,), generator=g)]))
    idx = torch.tensor(picks)
    plot_image_grid(data.train_images[idx].numpy(),
                    [CLASSES[int(c)] for c in data.train_labels[idx]], out)


def label_set_names(labels: np.ndarray) -> list[str]:
    """(N, 10) multi-hot -> one short title per mosaic."""
    return [", ".join(CLASSES[k].split("/")[0] for k in np.flatnonzero(row)) for row in labels]


def show_mosaics(path: Path, out: Path, n: int, seed: int) -> None:
    """n mosaics of the file (all if it holds fewer), drawn at random by `seed` without
    replacement and kept in file order, with lines between their cells and their label sets.

    The file is an .npz of `cnnrnn data mosaics`, or a .npy of images (N, S, S) uint8 alone,
    drawn without names."""
    from cnnrnn.data.mosaics import CELL, load_mosaic_images
    from cnnrnn.errors import DataError
    from cnnrnn.plots import plot_image_grid

    images, labels = load_mosaic_images(path)
    if len(images) == 0:
        raise DataError(f"{path} holds no mosaics; write some with `cnnrnn data mosaics`")
    picks = np.sort(np.random.default_rng(seed).choice(len(images), min(n, len(images)),
                                                       replace=False))
    titles = [""] * len(picks) if labels is None else label_set_names(labels[picks])
    plot_image_grid(images[picks], titles, out, ncols=min(6, max(1, len(picks))), cell=CELL)


# Bytes one 56x56 mosaic may take while it is drawn and written: the peak memory of
# `cnnrnn data mosaics --n 100000` grew by about 6.7 kB per mosaic (2x the image); 8x the image
# leaves a margin.
_MOSAIC_WORKING_BYTES = 8 * (56 * 56 + 10)


def check_mosaic_count(n: int) -> None:
    """Refuse a count of mosaics below 1 or one that would not fit in this machine's memory."""
    if n < 1:
        raise CnnrnnError(f"--n must be at least 1, got {n}")
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    need = n * _MOSAIC_WORKING_BYTES
    if need > memory // 2:
        raise CnnrnnError(f"--n {n:,} mosaics need about {need / 2**30:,.1f} GiB of memory and "
                          f"this machine has {memory / 2**30:.0f} GiB; write at most about "
                          f"{memory // 2 // _MOSAIC_WORKING_BYTES:,} at a time")


def write_mosaics(out: Path, split: str, n: int, prior: str, seed: int,
                  data_dir: Path | None) -> None:
    from cnnrnn.data.mosaics import make_split_mosaics, save_mosaics
    from cnnrnn.data.priors import load_prior

    images, labels = make_split_mosaics(load_fashion_mnist(data_dir), split, n,
                                        load_prior(prior), seed)
    save_mosaics(out, images, labels)
