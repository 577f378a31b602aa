"""Does a multilabel run rely on label co-occurrence? Two reports from saved evaluations.

- `cooccurrence_report` (`cnnrnn evaluate RUN --protocol cooccurrence [--prior P]`): the
  protocol of cnnrnn.metrics.cooccurrence on the run's test mosaics (of its own prior, or of
  P): per class the exclusive and co-occur splits by the usual partners of the run's TRAINING
  prior, the gap, the conditional false-positive rate. Written to RUN/cooccurrence.json
  (RUN/cooccurrence_<P>.json under another prior).
- `prior_shift` (`cnnrnn analyze priors RUN... --priors outfits,independent,street,inverted`):
  O-F1 and exact match of each run on each prior's test mosaics against the pair overlap of
  that prior with the run's training prior, and the figure of one against the other.

Nothing here chooses anything on a test prior: each run decides with its own options and the
threshold its validation mosaics (of its training prior) gave it. The per-sample outputs come
from `evaluate_samples` and are kept in the run folder (eval_*.npz), so a second report on
the same checkpoint and prior reads them back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cnnrnn.config import TrainConfig, config_from_dict
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST, load_fashion_mnist
from cnnrnn.data.priors import load_prior
from cnnrnn.errors import CnnrnnError
from cnnrnn.evaluate import evaluate_samples
from cnnrnn.metrics.cooccurrence import MIN_COUNT, MIN_RATE, cooccurrence_protocol, pair_overlap
from cnnrnn.run_dir import RunDir
from cnnrnn.tasks.multilabel import training_prior

REPORT = "cooccurrence.json"


def multilabel_config(run: str | Path, checkpoint: str = "best",
                      what: str = "the co-occurrence protocol") -> TrainConfig:
    """A run's config from its checkpoint; a single-label run is a one-line error."""
    cfg = config_from_dict(RunDir(run).load(checkpoint)["config"])
    if cfg.task != "multilabel":
        raise CnnrnnError(f"{run} is a {cfg.task} run; {what} reads multilabel runs")
    return cfg


def report_name(prior: str | None, own: str) -> str:
    """cooccurrence.json under the run's own prior, cooccurrence_<prior>.json otherwise."""
    if prior is None or prior == own:
        return REPORT
    return f"cooccurrence_{Path(prior).stem}.json"


def cooccurrence_report(run: str | Path, prior: str | None = None,
                        data_dir: str | Path | None = None, checkpoint: str = "best",
                        device: str = "cpu", min_rate: float = MIN_RATE,
                        min_count: int = MIN_COUNT, say: Callable[[str], None] | None = None,
                        fmnist: FashionMNIST | None = None, write: bool = True
                        ) -> dict[str, Any]:
    """The co-occurrence protocol of a multilabel run on its test mosaics (module docstring);
    with `write`, also saved into the run folder (the path under "file")."""
    cfg = multilabel_config(run, checkpoint)
    if prior is not None:
        load_prior(prior)  # an unknown prior fails before the evaluation
    train = training_prior(cfg)
    result, samples = evaluate_samples(run, "test", data_dir, checkpoint, device,
                                       {"prior": prior}, say, fmnist=fmnist)
    test = load_prior(result["prior"])
    train_pairs = train.pair_frequencies().numpy()
    out = {"run": str(run), "model": cfg.model, "checkpoint": checkpoint,
           "training_prior": train.name, "test_prior": test.name, "n": len(samples["y_true"]),
           "pair_overlap": pair_overlap(train_pairs, test.pair_frequencies().numpy()),
           **{k: result[k] for k in ("O-F1", "C-F1", "exact_match", "mAP")},
           **cooccurrence_protocol(samples["y_true"], samples["y_pred"], samples["scores"],
                                   train_pairs, CLASSES, min_rate, min_count)}
    if write:
        path = RunDir(run) / report_name(prior, cfg.multilabel.prior)
        RunDir(run).write_json(path.name, out)
        out["file"] = str(path)
    return out


def _num(x: float | None, signed: bool = False) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:{'+' if signed else ''}.3f}"


def _cell(split: dict[str, Any], key: str) -> str:
    """A split's number, or NaN with the count of positives it had."""
    value = split[key]
    return f"NaN (n={split['positives']})" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """The per-class table of a `cooccurrence_report` and its summary line."""
    lines = [f"Co-occurrence protocol: {report['run']} ({report['model']}), trained under "
             f"`{report['training_prior']}`, tested on {report['n']} `{report['test_prior']}` "
             f"mosaics (pair overlap {report['pair_overlap']:.3f}); usual partners: P(j | i) "
             f">= {report['min_rate']:g} and above P(j) under the training prior; NaN: fewer "
             f"than {report['min_count']} mosaics.", "",
             "| class | usual partners | exclusive n | co-occur n | F1 exclusive | F1 co-occur "
             "| F1 gap | AP exclusive | AP co-occur | AP gap | most frequent partner | FP rate "
             "given partner | FP rate overall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for c in report["classes"]:
        ex, co, fp = c["exclusive"], c["co-occur"], c["false_positive"]
        rate = (f"NaN (n={fp['n']})" if fp["rate"] is None else f"{fp['rate']:.3f}")
        lines.append(f"| {c['class']} | {', '.join(c['partners']) or '-'} | {ex['positives']} "
                     f"| {co['positives']} | {_cell(ex, 'f1')} | {_cell(co, 'f1')} | "
                     f"{_num(c['gap']['f1'], True)} | {_cell(ex, 'ap')} | {_cell(co, 'ap')} | "
                     f"{_num(c['gap']['ap'], True)} | {fp['partner'] or '-'} | {rate} | "
                     f"{_num(fp['base_rate'])} |")
    s = report["summary"]
    lines += ["", f"Mean over classes: F1 exclusive {_num(s['exclusive_f1'])}, co-occur "
              f"{_num(s['co-occur_f1'])}, gap {_num(s['gap_f1'], True)}; AP exclusive "
              f"{_num(s['exclusive_ap'])}, co-occur {_num(s['co-occur_ap'])}, gap "
              f"{_num(s['gap_ap'], True)}; false-positive rate given the most frequent "
              f"partner {_num(s['conditional_fp_rate'])} (any mosaic without the class "
              f"{_num(s['base_fp_rate'])})."]
    return "\n".join(lines) + "\n"


# ---- held-out priors -------------------------------------------------------------------------

def parse_priors(text: str) -> list[str]:
    """A comma-separated list of prior names (or .toml paths), each checked."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise CnnrnnError("--priors is empty; give e.g. outfits,independent,street,inverted")
    for name in names:
        load_prior(name)  # an unknown one: a one-line error naming the known ones
    return names


def prior_shift(runs: Sequence[str | Path], priors: Sequence[str],
                labels: Sequence[str] | None = None, data_dir: str | Path | None = None,
                checkpoint: str = "best", say: Callable[[str], None] | None = None
                ) -> list[dict[str, Any]]:
    """One row per run and test prior: O-F1, exact match, mAP and top-3 O-F1 on that prior's
    test mosaics, and the pair overlap of the prior with the run's training prior. The runs
    and priors are checked before any data is read."""
    labels = list(labels) if labels else [Path(r).resolve().name for r in runs]
    configs = [multilabel_config(run, checkpoint, "analyze priors") for run in runs]
    tests = {p: load_prior(p) for p in priors}
    fmnist = load_fashion_mnist(data_dir)
    rows = []
    for run, label, cfg in zip(runs, labels, configs, strict=True):
        train_pairs = training_prior(cfg).pair_frequencies().numpy()
        for name, test in tests.items():
            result, _ = evaluate_samples(run, "test", data_dir, checkpoint, "cpu",
                                         {"prior": name}, say, fmnist=fmnist)
            rows.append({"run": str(run), "label": label, "model": cfg.model,
                         "prior": test.name, "n": result["n"],
                         "pair_overlap": pair_overlap(train_pairs,
                                                      test.pair_frequencies().numpy()),
                         **{k: result.get(k) for k in ("O-F1", "exact_match", "mAP",
                                                       "top3_O-F1")}})
    return rows


def prior_shift_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | model | test prior | pair overlap | O-F1 | exact match | mAP | top-3 O-F1 |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['model']} | {r['prior']} | {r['pair_overlap']:.3f} "
                     f"| {_num(r['O-F1'])} | {_num(r['exact_match'])} | {_num(r['mAP'])} | "
                     f"{_num(r['top3_O-F1'])} |")
    return "\n".join(lines) + "\n"


def prior_shift_series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The figure's lines: run label -> its points (`cnnrnn.plots.prior_shift_figure`)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(r["label"], []).append(r)
    return series
