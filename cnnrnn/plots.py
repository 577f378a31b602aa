"""Figures drawn from saved runs' numbers (history rows, metrics), never inside the hot loop.

Which figures a run gets is its task's choice (`Task.plot_run`); these functions only draw.
Each `*_figure` function returns the matplotlib Figure (for tests and notebooks); each `plot_*`
function draws one and saves it, at DPI, in the format its file's extension names (FORMATS).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cnnrnn.errors import CnnrnnError  # noqa: E402
from cnnrnn.metrics.single_label import normalized_confusion  # noqa: E402

FORMATS = ("png", "pdf", "svg")
DPI = 200  # sharp in print at a column's width; pdf and svg stay vector graphics


def check_format(fmt: str) -> str:
    """`fmt` if it is one of FORMATS, else a one-line CnnrnnError."""
    if fmt not in FORMATS:
        raise CnnrnnError(f"unknown figure format {fmt!r}; choose png, pdf or svg")
    return fmt


def figure_path(path: str | Path) -> Path:
    """`path`, after checking that its extension names one of FORMATS."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise CnnrnnError(f"cannot write a figure to {path}: name a .png, .pdf or .svg file")
    return path


def run_title(run: str, model: str) -> str:
    """How a figure names a run: its folder and its model, e.g. "lstm-20261201 (lstm)"."""
    return run if run == model else f"{run} ({model})"


def _scale(metric: str) -> tuple[float, str]:
    """The factor and axis label a metric is shown with: accuracy is stored as a fraction 0..1
    and shown in %; the multilabel metrics (O-F1, mAP, ...) are shown 0..1 as they are."""
    return (100.0, "accuracy (%)") if metric == "accuracy" else (1.0, metric)


def _epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no tick at epoch 1.5
    ax.grid(alpha=0.3)


def _save(fig: Figure, out: str | Path) -> Path:
    out = figure_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # as `analyze costs --out` does
        fig.savefig(out, dpi=DPI)
    finally:
        plt.close(fig)
    return out


def learning_curve_figure(rows: list[dict[str, Any]], metric: str,
                          title: str | None = None) -> Figure:
    """Train and validation loss (left), and the metric per epoch (right), under `title`."""
    epochs = [r["epoch"] for r in rows]
    scale, label = _scale(metric)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    if rows and rows[0].get("val_loss") is not None:
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="validation")
    ax_loss.set(ylabel="loss", title="loss")
    if rows and rows[0].get("train_accuracy") is not None and metric == "accuracy":
        ax_metric.plot(epochs, [scale * r["train_accuracy"] for r in rows], "o-", label="train")
    ax_metric.plot(epochs, [scale * r[f"val_{metric}"] for r in rows], "o-",
                   label="validation")
    ax_metric.set(ylabel=label, title=metric)
    for ax in (ax_loss, ax_metric):
        _epoch_axis(ax)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curve(rows: list[dict[str, Any]], out: str | Path, metric: str,
                        title: str | None = None) -> Path:
    """learning_curve_figure, saved to `out`."""
    return _save(learning_curve_figure(rows, metric, title), out)


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str],
                            title: str = "confusion matrix") -> Figure:
    """A (K, K) count matrix (rows: true class) shown as percentages of each row."""
    pct = 100 * normalized_confusion(np.asarray(cm))  # (K, K), rows sum to 100
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    for i in ticks:
        for j in ticks:
            ax.text(j, i, f"{pct[i, j]:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if pct[i, j] > 50 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of the true class")
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], out: str | Path,
                          title: str = "confusion matrix") -> Path:
    """confusion_matrix_figure, saved to `out`."""
    return _save(confusion_matrix_figure(cm, class_names, title), out)


def compare_figure(runs: Mapping[str, list[dict[str, Any]]], metric: str,
                   title: str | None = None) -> Figure:
    """The validation metric per epoch of several runs, one line per run, labelled by its key."""
    scale, label = _scale(metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in runs.items():
        ax.plot([r["epoch"] for r in rows], [scale * r[f"val_{metric}"] for r in rows], "o-",
                label=name)
    ax.set(ylabel=f"validation {label}", title=title or f"validation {metric} per epoch")
    _epoch_axis(ax)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_compare(runs: Mapping[str, list[dict[str, Any]]], out: str | Path, metric: str,
                 title: str | None = None) -> Path:
    """compare_figure, saved to `out`."""
    return _save(compare_figure(runs, metric, title), out)


def image_grid_figure(images: np.ndarray, titles: Sequence[str], ncols: int = 10,
                      cell: int | None = None) -> Figure:
    """uint8 images (N, H, W) in a grid, each with its title.

    With `cell`, thin lines between the cells of `cell` pixels (a mosaic's 28x28 items)."""
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
        if cell:
            h, w = image.shape
            for y in range(cell, h, cell):  # pixel k spans k - 0.5 .. k + 0.5
                ax.axhline(y - 0.5, color="tab:orange", linewidth=0.6)
            for x in range(cell, w, cell):
                ax.axvline(x - 0.5, color="tab:orange", linewidth=0.6)
    fig.tight_layout()
    return fig


def plot_image_grid(images: np.ndarray, titles: Sequence[str], out: str | Path,
                    ncols: int = 10, cell: int | None = None) -> Path:
    """image_grid_figure, saved to `out`."""
    return _save(image_grid_figure(images, titles, ncols, cell), out)


# ---- label embeddings ----------------------------------------------------------------------

def distance_heatmaps_figure(distances: Mapping[str, np.ndarray], class_names: Sequence[str],
                             order: Sequence[int], title: str) -> Figure:
    """One heatmap per distance (e.g. cosine and Euclidean), classes in `order` (a clustering's
    leaf order, so that close classes sit together).

    The diagonal (a class's zero distance to itself) is masked and drawn grey, and the colour
    scale spans the off-diagonal values only: a zero diagonal would otherwise take the bottom
    of the scale and flatten the structure between classes."""
    names = [class_names[i] for i in order]
    k = len(names)
    diagonal = np.eye(k, dtype=bool)
    fig, axes = plt.subplots(1, len(distances), figsize=(6.2 * len(distances), 5.4),
                             squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    for ax, (metric, d) in zip(axes[0], distances.items(), strict=True):
        m = np.ma.masked_array(np.asarray(d, dtype=np.float64)[np.ix_(order, order)], diagonal)
        low, high = float(m.min()), float(m.max())  # masked entries are left out
        im = ax.imshow(m, cmap=cmap, vmin=low, vmax=high)
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        middle = (low + high) / 2
        for i in range(k):
            for j in range(k):
                if i != j:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] < middle else "black")
        ax.set_title(f"{metric} distance" if metric in ("cosine", "euclidean") else metric)
        fig.colorbar(im, ax=ax, fraction=0.046, label="off the diagonal (the diagonal: grey)")
    fig.suptitle(f"{title} (clustered order)")
    fig.tight_layout()
    return fig


def plot_distance_heatmaps(distances: Mapping[str, np.ndarray], class_names: Sequence[str],
                           order: Sequence[int], out: str | Path, title: str) -> Path:
    """distance_heatmaps_figure, saved to `out`."""
    return _save(distance_heatmaps_figure(distances, class_names, order, title), out)


def plot_dendrogram(linkage: np.ndarray, class_names: Sequence[str], out: str | Path,
                    title: str) -> Path:
    """The dendrogram of a hierarchical clustering of the class embeddings."""
    from scipy.cluster.hierarchy import dendrogram

    fig, ax = plt.subplots(figsize=(7, 4))
    dendrogram(linkage, labels=list(class_names), ax=ax, leaf_rotation=45, color_threshold=0)
    ax.set_ylabel("cosine distance (average linkage)")
    ax.set_title(f"{title}: clustering of the label embeddings")
    plt.setp(ax.get_xticklabels(), ha="right", fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def text_safe(text: str) -> str:
    """`text` with its dollar signs escaped, so that a run folder's name in a title never
    starts or ends mathtext."""
    return text.replace("$", r"\$")


STAR_SIZE = 260  # the label embeddings' star markers, in points squared
# Where a star's name may go, in points from the star, nearest first: 12 directions on rings
# of growing radius. The first ring clears the star marker (s=260: about 8 points of radius).
_RINGS = (11, 20, 32, 46, 62, 80, 100)
_DIRECTIONS = np.deg2rad(np.arange(45, 405, 30))


def _candidates() -> list[tuple[float, float, str, str]]:
    """(dx, dy, ha, va) in points: a name right of the star starts there, one above sits on it."""
    out = []
    for r in _RINGS:
        for a in _DIRECTIONS:
            dx, dy = r * np.cos(a), r * np.sin(a)
            ha = "left" if dx > 0.3 * r else "right" if dx < -0.3 * r else "center"
            va = "bottom" if dy > 0.3 * r else "top" if dy < -0.3 * r else "center"
            out.append((float(dx), float(dy), ha, va))
    return out


def _overlap(a: Any, b: Any) -> float:
    """The area two display boxes share (0 if they do not overlap)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def place_labels(ax: Axes, texts: Sequence[Any], obstacles: Sequence[Any] = (),
                 pad: float = 2.0) -> None:
    """Move each annotation in `texts` (offset in points from its point) to the first of
    `_candidates()` where its box, measured by the renderer and grown by `pad` pixels, overlaps
    no name placed before it, no box in `obstacles` (e.g. the stars) and stays inside the axes;
    else to the candidate with the least overlap. Deterministic: the same figure gives the same
    places. Call it after the figure's layout is final (tight_layout moves the axes)."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for text in texts:
        best, best_cost = None, np.inf
        for dx, dy, ha, va in _candidates():
            text.xyann = (dx, dy)
            text.set_ha(ha)
            text.set_va(va)
            box = text.get_window_extent(renderer).padded(pad)
            cost = sum(_overlap(box, other) for other in (*placed, *obstacles))
            out_of_axes = box.width * box.height - _overlap(box, inside)
            cost += 0.5 * out_of_axes  # a name may leave the axes if nothing else fits
            if cost < best_cost:
                best, best_cost = (dx, dy, ha, va), cost
            if cost == 0:
                break
        dx, dy, ha, va = best
        text.xyann = (dx, dy)
        text.set_ha(ha)
        text.set_va(va)
        placed.append(text.get_window_extent(renderer).padded(pad))


def embedding_map_figure(points: np.ndarray, colour: np.ndarray, labels: np.ndarray,
                         class_names: Sequence[str], title: str,
                         stars: str = "label embeddings") -> Figure:
    """A 2-D map: image points coloured by class, and the label embeddings as named stars.

    The names are placed by place_labels, so that no two overprint and none covers a star.
    `title` and `stars` (the legend's name for the stars) may hold mathtext, e.g. $U_l$."""
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9.2, 6.5))
    for k, name in enumerate(class_names):
        mask = colour == k
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.5, color=cmap(k),
                       label=name, linewidths=0)
    for k, (x, y) in enumerate(labels):
        ax.scatter([x], [y], marker="*", s=STAR_SIZE, color=cmap(k), edgecolors="black",
                   linewidths=0.8, zorder=3)
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize=7, markerscale=2.5, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title=f"class (stars: {stars})", title_fontsize=7)
    ax.margins(0.12)  # room around the stars for their names
    fig.tight_layout()  # before the names are placed: it moves the axes
    texts = [ax.annotate(name, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=8,
                         weight="bold", zorder=4,
                         bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                               "alpha": 0.75, "linewidth": 0})
             for name, (x, y) in zip(class_names, labels, strict=True)]
    from matplotlib.transforms import Bbox

    ax.get_xlim()  # the autoscaled limits, before data turn into pixels
    half = np.sqrt(STAR_SIZE) / 2 * fig.dpi / 72  # the star's half width, in pixels
    centres = ax.transData.transform(np.asarray(labels, dtype=np.float64))  # (K, 2) pixels
    place_labels(ax, texts, [Bbox.from_extents(x - half, y - half, x + half, y + half)
                             for x, y in centres])
    for text, (x, y) in zip(texts, labels, strict=True):
        if np.hypot(*text.xyann) > _RINGS[0]:  # far from its star: a thin line back to it
            ax.annotate("", (x, y), xytext=text.xyann, textcoords="offset points", zorder=2,
                        arrowprops={"arrowstyle": "-", "color": "0.3", "linewidth": 0.6,
                                    "shrinkA": 0, "shrinkB": 6})
    return fig


def plot_embedding_map(points: np.ndarray, colour: np.ndarray, labels: np.ndarray,
                       class_names: Sequence[str], out: str | Path, title: str,
                       stars: str = "label embeddings") -> Path:
    """embedding_map_figure, saved to `out` (its layout kept: the names were placed in it)."""
    return _save(embedding_map_figure(points, colour, labels, class_names, title, stars), out)


def _mean_spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per column of (S, K) values over S seeds (NaN: missing): the mean, and the standard
    deviation (ddof 1) where S > 1, else None."""
    with warnings.catch_warnings():  # a class with no mistake in any seed: NaN, no bar
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        spread = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else None
    return mean, spread


def per_class_severity_figure(variants: Mapping[str, Sequence[Mapping[str, Any]]],
                              class_names: Sequence[str], title: str,
                              costs: np.ndarray | None = None) -> Figure:
    """Grouped bars per true class, one group member per variant: its mistake severity (top)
    and its number of mistakes (bottom).

    `variants` maps a name to one row per seed: {"per_class_severity": {class: {...} | None},
    "mistakes": [count per class]} (the keys `evaluate_run` returns, "mistakes" from its
    confusion matrix). Several seeds give bars at their mean with error bars of one standard
    deviation across seeds. With `costs`, the classes whose every mistake costs the same
    (cnnrnn.costs.equal_cost_classes) get hatched severity bars and a legend entry: their
    severity is that cost whatever the model does."""
    from matplotlib.patches import Patch

    from cnnrnn.costs import equal_cost_classes

    names = list(variants)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(class_names))
    marked = set(equal_cost_classes(costs)) if costs is not None else set()
    fig, (ax_sev, ax_n) = plt.subplots(2, 1, figsize=(9.5, 6.6), sharex=True)
    for i, name in enumerate(names):
        runs = variants[name]
        severity = np.array([[np.nan if (row := r["per_class_severity"].get(c)) is None
                              or row.get("mistake_severity") is None
                              else row["mistake_severity"] for c in class_names] for r in runs],
                            dtype=np.float64)  # (S, K)
        counts = np.array([r["mistakes"] for r in runs], dtype=np.float64)  # (S, K)
        shift = x + (i - (len(names) - 1) / 2) * width
        label = name if len(runs) == 1 else f"{name} (mean of {len(runs)} seeds, ±1 sd)"
        colour = plt.get_cmap("tab10")(i % 10)
        mean, spread = _mean_spread(severity)
        bars = ax_sev.bar(shift, mean, width, yerr=spread, capsize=2, label=label,
                          color=colour, error_kw={"linewidth": 0.8})
        for k, bar in enumerate(bars):
            if k in marked:
                bar.set_hatch("///")
                bar.set_edgecolor("black")
        mean, spread = _mean_spread(counts)
        ax_n.bar(shift, mean, width, yerr=spread, capsize=2, color=colour,
                 error_kw={"linewidth": 0.8})
    ax_sev.set(ylabel="mistake severity", title=title)
    ax_n.set(ylabel="mistakes (test images)")
    ax_n.set_xticks(x, class_names, rotation=30, ha="right", fontsize=8)
    for ax in (ax_sev, ax_n):
        ax.grid(axis="y", alpha=0.3)
    handles, labels = ax_sev.get_legend_handles_labels()
    if marked:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///"))
        labels.append("every mistake costs the same (one cost in the row)")
    ax_sev.set_ylim(top=1.3 * ax_sev.get_ylim()[1])  # room for the legend above the bars
    ax_sev.legend(handles, labels, fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


def plot_per_class_severity(variants: Mapping[str, Sequence[Mapping[str, Any]]],
                            class_names: Sequence[str], out: str | Path, title: str,
                            costs: np.ndarray | None = None) -> Path:
    """per_class_severity_figure, saved to `out`."""
    return _save(per_class_severity_figure(variants, class_names, title, costs), out)



# ---- saliency ----------------------------------------------------------------------------------

def _cell_lines(ax: Axes, size: int, cell: int) -> None:
    for v in range(cell, size, cell):  # pixel k spans k - 0.5 .. k + 0.5
        ax.axhline(v - 0.5, color="white", linewidth=0.8)
        ax.axvline(v - 0.5, color="white", linewidth=0.8)


def saliency_figure(rows: Sequence[Mapping[str, Any]], title: str, caption: str,
                    cell: int = 28) -> Figure:
    """One row per mosaic: the mosaic with its cells named, then one panel per emitted label
    with its saliency map over the mosaic and each cell's share of it.

    Each row: "image" (S, S) uint8; "cells", the class name in each cell, row-major ("" if
    empty); "panels", each with "map" (S, S) >= 0, "title", "hit" (share of the peak cells
    holding the emitted class), "present" (the class is in the mosaic) and "peaks" (the peak
    cells, row-major; empty for an all-zero map).
    """
    from matplotlib.patches import Rectangle

    ncols = 1 + max([len(r["panels"]) for r in rows] + [1])
    import textwrap

    # Laid out by hand, in inches: square panels, a title line above each, the caption below.
    panel, title_h = 1.8, 0.3
    width = panel * ncols + 0.1 * (ncols + 1)
    text = textwrap.fill(caption, int(width * 15))  # ~15 characters per inch at fontsize 7
    title = textwrap.fill(title, int(width * 10))  # ~10 per inch at fontsize 10: long run names
    top_h = 0.45 + 0.17 * (title.count("\n") + 1)
    bottom_h = 0.2 + 0.13 * (text.count("\n") + 1)
    height = (panel + title_h) * len(rows) + top_h + bottom_h
    fig, axes = plt.subplots(len(rows), ncols, figsize=(width, height), squeeze=False,
                             gridspec_kw={"wspace": 0.1 / panel, "hspace": title_h / panel})
    fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, top=1 - top_h / height,
                        bottom=bottom_h / height)
    for ax in axes.flat:
        ax.axis("off")
    for ax_row, row in zip(axes, rows, strict=True):
        image = np.asarray(row["image"])
        size = image.shape[0]
        grid = size // cell
        ax = ax_row[0]
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        _cell_lines(ax, size, cell)
        for c, name in enumerate(row["cells"]):
            if name:
                ax.text((c % grid) * cell + 1, (c // grid) * cell + 1, name, fontsize=6,
                        va="top", color="white",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
        n_items = sum(1 for name in row["cells"] if name)
        ax.set_title(f"mosaic, {n_items} item{'s' if n_items != 1 else ''}", fontsize=8)
        if not row["panels"]:
            ax_row[1].text(0.5, 0.5, "no label emitted", ha="center", va="center", fontsize=8,
                           transform=ax_row[1].transAxes)
        for ax, panel in zip(ax_row[1:], row["panels"], strict=False):
            m = np.asarray(panel["map"], dtype=np.float64)
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.imshow(m / m.max() if m.max() > 0 else m, cmap="inferno", alpha=0.55, vmin=0,
                      vmax=1)
            _cell_lines(ax, size, cell)
            total = m.sum()
            for c, v in enumerate(m.reshape(grid, cell, grid, cell).sum(axis=(1, 3)).flat):
                if total > 0:  # each cell's share of the map, so it reads without a colour bar
                    ax.text((c % grid + 1) * cell - 2, (c // grid + 1) * cell - 2,
                            f"{v / total:.0%}", fontsize=5.5, ha="right", va="bottom",
                            color="white", bbox={"facecolor": "black", "alpha": 0.6,
                                                 "pad": 1, "linewidth": 0})
            hit = panel["hit"]
            colour = "tab:green" if hit == 1 else "tab:red" if hit == 0 else "tab:orange"
            for c in panel["peaks"]:
                ax.add_patch(Rectangle(((c % grid) * cell - 0.5, (c // grid) * cell - 0.5),
                                       cell, cell, fill=False, edgecolor=colour, linewidth=2))
            if not panel["present"]:
                mark = "\u2717 not in mosaic"
            elif not panel["peaks"]:
                mark = "? flat map"
            else:
                mark = "\u2713" if hit == 1 else "\u2717" if hit == 0 else f"tie {hit:.0%}"
            ax.set_title(f"{panel['title']} {mark}", fontsize=8, color=colour)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    fig.text(0.5, 0.08 / height, text, ha="center", va="bottom", fontsize=7)
    return fig


def plot_saliency(rows: Sequence[Mapping[str, Any]], out: str | Path, title: str, caption: str,
                  cell: int = 28) -> Path:
    """saliency_figure, saved to `out`."""
    return _save(saliency_figure(rows, title, caption, cell), out)


def prior_shift_figure(series: Mapping[str, Sequence[Mapping[str, Any]]], title: str = ""
                       ) -> Figure:
    """O-F1 (left) and exact match (right) against the pair overlap of each test prior with
    the training prior (cnnrnn.metrics.cooccurrence.pair_overlap), one line per model.

    series: model name -> points {"prior", "pair_overlap", "O-F1", "exact_match"}, with
    optional "O-F1_sd" and "exact_match_sd" drawn as error bars (e.g. over seeds)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, ("O-F1", "exact_match"), strict=True):
        for name, points in series.items():
            pts = sorted(points, key=lambda p: p["pair_overlap"])
            x = [p["pair_overlap"] for p in pts]
            y = [p[key] for p in pts]
            err = [p.get(f"{key}_sd") for p in pts]
            ax.errorbar(x, y, yerr=None if any(e is None or not np.isfinite(e) for e in err)
                        else err, marker="o", capsize=3, label=name)
            if name == next(iter(series)):  # each prior named once, at the first model's point
                for p in pts:
                    ax.annotate(p["prior"], (p["pair_overlap"], p[key]), fontsize=7,
                                textcoords="offset points", xytext=(3, -10))
        ax.set_xlabel("label pairs shared with the training prior (pair overlap)")
        ax.set_ylabel("exact match" if key == "exact_match" else key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_prior_shift(series: Mapping[str, Sequence[Mapping[str, Any]]], out: str | Path,
                     title: str = "") -> Path:
    return _save(prior_shift_figure(series, title), out)
