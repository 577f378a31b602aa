"""Figures: written only when asked, in the format asked for, with readable axes and titles."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnrnn import plots
from cnnrnn.cli import app

runner = CliRunner()
FIGURES = ("*.png", "*.pdf", "*.svg")


def cli(*args: object) -> tuple[str, str]:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def cnnrnn_error(*args: object) -> str:
    """The one line a user mistake prints, after checking exit status 2."""
    proc = subprocess.run([sys.executable, "-m", "cnnrnn", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, (args, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def figures(folder: Path) -> set[str]:
    return {p.name for pattern in FIGURES for p in folder.glob(pattern)}


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("plots") / "gru-tiny"
    cli("train", "--model", "gru", "--epochs", "2", "--limit-train", "256", "--batch-size", "64",
        "--set", "val_size=500", "--set", "model.hidden_size=16", "--quiet", "--out", out,
        "--data-dir", data_dir)
    return out


def history(metric: str, values: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": 2.0 - i / 10, "val_loss": 2.1 - i / 10,
             "train_accuracy": v if metric == "accuracy" else None, f"val_{metric}": v}
            for i, v in enumerate(values)]


def epoch_ticks(ax) -> list[float]:
    """The x ticks inside the axes' limits (matplotlib also lists some outside)."""
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def test_training_writes_its_figures(run):
    assert figures(run) == {"learning_curve.png", "confusion_matrix.png"}


def test_evaluate_writes_figures_only_when_asked(run, data_dir):
    before = figures(run)
    cli("evaluate", run, "--split", "val", "--data-dir", data_dir)
    assert figures(run) == before
    stdout, _ = cli("evaluate", run, "--split", "val", "--plots", "--format", "pdf",
                    "--data-dir", data_dir)
    assert (run / "confusion_matrix_val.pdf").read_bytes()[:4] == b"%PDF"
    assert f"figure: {run / 'confusion_matrix_val.pdf'}" in stdout
    stdout, stderr = cli("evaluate", run, "--split", "val", "--json", "--plots", "--format",
                         "svg", "--data-dir", data_dir)
    assert stdout.startswith("{") and "figure:" not in stdout
    assert stderr.strip() == f"figure: {run / 'confusion_matrix_val.svg'}"


def test_compare_with_labels_and_svg(run, tmp_path, data_dir):
    out = tmp_path / "curves.svg"
    stdout, _ = cli("compare", run, run, "--label", "first GRU", "--label", "second GRU",
                    "--plot", out, "--data-dir", data_dir)
    lines = stdout.strip().splitlines()
    assert lines[2].startswith("| first GRU | gru |") and lines[3].startswith("| second GRU |")
    text = out.read_text()
    assert text.startswith("<?xml") or "<svg" in text


def test_compare_figure_has_run_labels_integer_epochs_and_percent():
    fig = plots.compare_figure({"a": history("accuracy", [0.5, 0.6, 0.7]),
                                "b": history("accuracy", [0.4, 0.5, 0.8])}, "accuracy")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert "%" in ax.get_ylabel()
    assert list(ax.lines[0].get_ydata()) == pytest.approx([50, 60, 70])
    fig.canvas.draw()
    assert epoch_ticks(ax) == [1, 2, 3]


def test_learning_curve_integer_epochs_percent_and_title():
    fig = plots.learning_curve_figure(history("accuracy", [0.3, 0.5]), "accuracy",
                                      plots.run_title("lstm-20261201", "lstm"))
    fig.canvas.draw()
    for ax in fig.axes:  # two epochs: ticks 1 and 2 only, never 1.25 or 1.5
        assert epoch_ticks(ax) == [1, 2]
    assert "%" in fig.axes[1].get_ylabel()
    assert list(fig.axes[1].lines[-1].get_ydata()) == pytest.approx([30, 50])
    assert fig._suptitle.get_text() == "lstm-20261201 (lstm)"
    multilabel = plots.learning_curve_figure(history("O-F1", [0.3, 0.5]), "O-F1")
    assert "%" not in multilabel.axes[1].get_ylabel()  # O-F1 stays 0..1
    assert list(multilabel.axes[1].lines[-1].get_ydata()) == pytest.approx([0.3, 0.5])


def test_confusion_matrix_in_percent_of_the_row():
    cm = np.array([[3, 1], [0, 2]])
    fig = plots.confusion_matrix_figure(cm, ["cat", "dog"], "run (cnn): test confusion matrix")
    ax = fig.axes[0]
    assert ax.get_title() == "run (cnn): test confusion matrix"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in ax.texts] == ["75.0", "25.0", "0.0", "100.0"]


def test_mosaic_cells_have_borders():
    fig = plots.image_grid_figure(np.zeros((2, 56, 56), np.uint8), ["a", "b"], ncols=2, cell=28)
    for ax in fig.axes:  # one line across and one down, on the pixel edge between the cells
        assert sorted(tuple(line.get_xdata()) + tuple(line.get_ydata()) for line in ax.lines
                      ) == [(0, 1, 27.5, 27.5), (27.5, 27.5, 0, 1)]


def test_data_show_seed_chooses_the_mosaics(tmp_path, data_dir):
    npz = tmp_path / "m.npz"
    cli("data", "mosaics", "--split", "test", "--n", "20", "--out", npz, "--data-dir", data_dir)
    drawn = {}
    for seed in (0, 1):
        cli("data", "show", "--mosaics", npz, "--n", "4", "--seed", seed, "--out",
            tmp_path / f"{seed}.png")
        drawn[seed] = (tmp_path / f"{seed}.png").read_bytes()
    assert drawn[0][:4] == b"\x89PNG" and drawn[0] != drawn[1]


def test_figure_mistakes_are_one_line(run, tmp_path):
    cases = [
        (["compare", run, run, "--label", "one"], "1 --label for 2 runs"),
        (["compare", run, run], "two runs are both named 'gru-tiny'; .* --label"),
        (["compare", run, "--plot", tmp_path / "c.gif"], r"c\.gif: name a \.png, \.pdf or \.svg"),
        (["evaluate", run, "--plots", "--format", "gif"], "unknown figure format 'gif'"),
        (["data", "show", "--n", "0", "--out", tmp_path / "s.png"], "--n must be at least 1"),
    ]
    for args, message in cases:
        assert re.search(message, cnnrnn_error(*args))
    assert not (tmp_path / "c.gif").exists()


# ---- analysis figures ----------------------------------------------------------------------

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")


def test_distance_heatmap_masks_the_diagonal_and_scales_to_the_rest():
    from matplotlib.colors import to_rgba

    rng = np.random.default_rng(0)
    d = rng.uniform(0.3, 0.9, size=(10, 10))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    order = list(rng.permutation(10))
    fig = plots.distance_heatmaps_figure({"cosine": d, "euclidean": 4 * d}, CLASSES, order,
                                         "run (cnn-rnn)")
    off = ~np.eye(10, dtype=bool)
    heatmaps = [ax for ax in fig.axes if ax.images]  # not the colour bars
    for ax, scale in zip(heatmaps, (1, 4), strict=True):
        image = ax.images[0]
        shown = image.get_array()
        assert (np.ma.getmaskarray(shown) == ~off).all()  # exactly the diagonal is masked
        assert np.allclose(shown[off], (scale * d)[np.ix_(order, order)][off])
        # the colour scale spans the off-diagonal values, not the zero diagonal
        assert image.norm.vmin == pytest.approx(scale * d[off].min())
        assert image.norm.vmax == pytest.approx(scale * d[off].max())
        assert len(ax.texts) == 90  # a number in every off-diagonal cell, none on the diagonal
        assert tuple(image.cmap.get_bad()) == to_rgba("lightgrey")  # not on the colour scale


def label_boxes(fig, names):
    """The window extents of the map's class-name texts, measured by the renderer."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text() in names]
    assert sorted(t.get_text() for t in texts) == sorted(names)
    return {t.get_text(): Text.get_window_extent(t, renderer) for t in texts}


@pytest.mark.parametrize("layout", ["one point", "tight cluster", "two clusters", "spread"])
def test_embedding_map_names_never_overlap(layout):
    rng = np.random.default_rng(1)
    stars = {"one point": np.zeros((10, 2)),
             "tight cluster": rng.normal(scale=0.02, size=(10, 2)),
             "two clusters": np.repeat([[0.0, 0.0], [0.3, 0.1]], 5, axis=0)
             + rng.normal(scale=0.01, size=(10, 2)),
             "spread": rng.normal(size=(10, 2))}[layout]
    points = rng.normal(size=(200, 2))
    title = r"run (cnn-rnn): UMAP of test mosaics ($U_I^{x}\,I$)"
    fig = plots.embedding_map_figure(points, rng.integers(0, 10, 200), stars, CLASSES, title,
                                     r"label embeddings, rows of $U_l$")
    fig.canvas.draw()  # the mathtext must parse
    boxes = label_boxes(fig, CLASSES)
    overlapping = [(a, b) for i, a in enumerate(CLASSES) for b in CLASSES[i + 1:]
                   if boxes[a].overlaps(boxes[b])]
    assert not overlapping
    assert "$" in fig.axes[0].get_title()
    again = plots.embedding_map_figure(points, rng.integers(0, 10, 200), stars, CLASSES, title)
    assert [t.xyann for t in again.axes[0].texts if t.get_text() in CLASSES] == [
        t.xyann for t in fig.axes[0].texts if t.get_text() in CLASSES]  # deterministic


def test_a_dollar_in_a_run_name_does_not_start_mathtext():
    assert plots.text_safe("cost$5 (lstm)") == r"cost\$5 (lstm)"


def severity_rows(rng, n_seeds: int) -> list[dict]:
    return [{"per_class_severity": {c: {"mistake_severity": float(rng.uniform(0.5, 1))}
                                    for c in CLASSES},
             "mistakes": rng.integers(0, 50, size=10).tolist()} for _ in range(n_seeds)]


def bar_groups(ax) -> list:
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_severity_bars_have_seed_error_bars_counts_and_marked_classes():
    from cnnrnn.costs import hierarchy_costs

    rng = np.random.default_rng(2)
    variants = {"cross-entropy": severity_rows(rng, 3), "soft labels": severity_rows(rng, 1)}
    costs = hierarchy_costs()
    fig = plots.per_class_severity_figure(variants, CLASSES, "severity", costs)
    ax_sev, ax_n = fig.axes
    seeds, one = bar_groups(ax_sev)
    sev = np.array([[r["per_class_severity"][c]["mistake_severity"] for c in CLASSES]
                    for r in variants["cross-entropy"]])
    assert [b.get_height() for b in seeds] == pytest.approx(sev.mean(0))
    # error bars of one standard deviation across the three seeds; none for a single run
    low_high = np.array([s[:, 1] for s in seeds.errorbar.lines[2][0].get_segments()])
    assert low_high[:, 1] - low_high[:, 0] == pytest.approx(2 * sev.std(0, ddof=1))
    assert one.errorbar is None or not one.errorbar.has_yerr
    counts = np.array([r["mistakes"] for r in variants["cross-entropy"]])
    assert [b.get_height() for b in bar_groups(ax_n)[0]] == pytest.approx(counts.mean(0))
    assert bar_groups(ax_n)[0].errorbar.has_yerr
    # hatched: the classes whose row of costs off the diagonal holds one value, found here
    # apart from cnnrnn.costs (the hierarchy's single-class groups)
    expected = {CLASSES[k] for k in range(10) if len(set(np.delete(costs[k], k))) == 1}
    assert expected == {"Trouser", "Dress", "Bag"}
    for container in (seeds, one):
        hatched = {CLASSES[k] for k, bar in enumerate(container) if bar.get_hatch()}
        assert hatched == expected
    legend = [t.get_text() for t in ax_sev.get_legend().get_texts()]
    assert legend[0] == "cross-entropy (mean of 3 seeds, ±1 sd)" and legend[1] == "soft labels"
    assert "every mistake costs the same" in legend[2]
    plain = plots.per_class_severity_figure(variants, CLASSES, "severity")  # no costs: no marks
    assert not any(bar.get_hatch() for c in bar_groups(plain.axes[0]) for bar in c)
