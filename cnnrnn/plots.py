"""Figures drawn from saved runs' numbers (history rows, metrics), never inside the hot loop.

Which figures a run gets is its task's choice (`Task.plot_run`); these functions only draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnrnn.metrics.single_label import normalized_confusion  # noqa: E402


def plot_learning_curve(rows: list[dict[str, Any]], out: str | Path, metric: str) -> None:
    """Train and validation loss, and the validation metric, per epoch."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    if rows and rows[0].get("val_loss") is not None:
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    if rows and rows[0].get("train_accuracy") is not None and metric == "accuracy":
        ax_metric.plot(epochs, [r["train_accuracy"] for r in rows], "o-", label="train")
    ax_metric.plot(epochs, [r[f"val_{metric}"] for r in rows], "o-", label="validation")
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric)
    ax_metric.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], out: str | Path,
                          title: str = "confusion matrix (rows: true, normalised)") -> None:
    norm = normalized_confusion(np.asarray(cm))
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in ticks:
        for j in ticks:
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_compare(runs: dict[str, list[dict[str, Any]]], out: str | Path, metric: str) -> None:
    """The validation metric per epoch for several runs in one plot."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in runs.items():
        ax.plot([r["epoch"] for r in rows], [r[f"val_{metric}"] for r in rows], "o-", label=name)
    ax.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric} per epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_image_grid(images: np.ndarray, titles: Sequence[str], out: str | Path,
                    ncols: int = 10) -> None:
    """uint8 images (N, H, W) in a grid, each with its title."""
    n = len(images)
    nrows = -(-n // ncols)
    size = 1.3 if images.shape[1] <= 28 else 2.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.25)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
