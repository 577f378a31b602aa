"""Markdown tables for docs/results.md from finished benchmark runs.

usage: python scripts/results_tables.py multilabel OUT   (the OUT of bench_multilabel.sh)
       python scripts/results_tables.py severity OUT     (the OUT of bench_severity.sh)
       python scripts/results_tables.py decoders OUT     (the OUT of bench_decoders.sh)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cnnrnn.run_dir import RunDir

KEYS = ("O-F1", "exact_match", "C-F1", "macro-F1", "mAP", "O-P", "O-R", "C-P", "C-R",
        "hamming_loss")


def train_minutes(run: Path) -> float:
    return sum(r["train_seconds"] for r in RunDir(run).read_history()) / 60


def multilabel(out: Path) -> str:
    lines = []
    for prior_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        lines += [f"\n**prior `{prior_dir.name}`**, {_n(prior_dir)} test mosaics\n",
                  "| model | order | beam | " + " | ".join(KEYS) + " | train min | mosaics/s |",
                  "|---|---|---:|" + "---:|" * (len(KEYS) + 2)]
        for run in sorted(p for p in prior_dir.iterdir() if RunDir(p).checkpoint_path().exists()):
            for f in sorted(run.glob("test*.json")):
                r = json.loads(f.read_text())
                model, order = r["model"], r.get("order", "-")
                beam = r.get("beam_width", "-")
                cells = " | ".join(f"{r[k]:.4f}" for k in KEYS)
                lines.append(f"| {model} | {order} | {beam} | {cells} | "
                             f"{train_minutes(run):.1f} | {r['images_per_second']:.0f} |")
    return "\n".join(lines) + "\n"


METHODS = (("ce", "argmax", "cross-entropy"), ("ce", "crm", "cross-entropy + CRM"),
           ("soft", "argmax", "soft labels"), ("soft", "crm", "soft labels + CRM"),
           ("ec", "argmax", "expected cost"), ("ec", "crm", "expected cost + CRM"))
SEVERITY_KEYS = ("accuracy", "mistake_severity", "hdist@1", "hdist@3")


def _cell(values: list[float], percent: bool) -> str:
    scale = 100 if percent else 1
    mean = scale * sum(values) / len(values)
    spread = scale * (max(values) - min(values))
    unit = " %" if percent else ""
    return f"{mean:.2f}{unit} ± {spread / 2:.2f}" if percent else f"{mean:.4f} ± {spread / 2:.4f}"


def severity(out: Path) -> str:
    """One table per cost matrix: each training method and decision, mean ± half the range
    over the seeds, of top-1 accuracy and the severity metrics measured under that matrix."""
    lines = []
    for costs in ("hierarchy", "confusion", "embeddings"):
        lines += [f"\n**measured under the `{costs}` cost matrix**\n",
                  "| training, decision | seeds | top-1 accuracy | mistake severity | hdist@1 | "
                  "hdist@3 |", "|---|---:|---:|---:|---:|---:|"]
        for loss, decision, name in METHODS:
            files = sorted(out.glob(f"{loss}-s*/test-{costs}-{decision}.json"))
            if not files:
                continue
            rs = [json.loads(f.read_text()) for f in files]
            cells = [_cell([r[k] for r in rs], k == "accuracy") for k in SEVERITY_KEYS]
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DECODER_KEYS = ("O-F1", "C-F1", "exact_match", "mAP")
VARIANT_ORDER = ("cnn-rnn", "attention", "attention-smooth", "bce", "cnn-rnn-drop",
                 "attention-drop", "attention-set", "attention-mix", "attention-smooth-mix25",
                 "attention-smooth-mix20", "attention-smooth-mix15", "bce-mix20")


def decoders(out: Path) -> str:
    """The runs trained under `outfits` (OUT/outfits/<variant>-s<seed>): per variant, mean ±
    half the range over its seeds on `outfits` test mosaics, then on `independent` ones (the
    prior shift) with the O-F1 lost to the shift."""
    found: dict[str, list[Path]] = {}
    for run in sorted((out / "outfits").glob("*-s[0-9]*")):
        if "timm" in run.name:  # a shortened budget: their own table
            continue
        if (run / "test-outfits.json").is_file() and (run / "test-independent.json").is_file():
            found.setdefault(run.name.rsplit("-s", 1)[0], []).append(run)
    first = [v for v in VARIANT_ORDER if v in found]
    variants = {v: found[v] for v in first + sorted(set(found) - set(first))}
    head = ("| variant | seeds | " + " | ".join(DECODER_KEYS) + " | O-F1, independent | "
            "exact, independent | O-F1 lost to the shift |")
    lines = [head, "|---|---:|" + "---:|" * (len(DECODER_KEYS) + 3)]
    for name, runs in variants.items():
        same = [json.loads((r / "test-outfits.json").read_text()) for r in runs]
        shift = [json.loads((r / "test-independent.json").read_text()) for r in runs]
        lost = [a["O-F1"] - b["O-F1"] for a, b in zip(same, shift, strict=True)]
        cells = [_cell([r[k] for r in same], False) for k in DECODER_KEYS]
        cells += [_cell([r["O-F1"] for r in shift], False),
                  _cell([r["exact_match"] for r in shift], False), _cell(lost, False)]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "Under the shift (`independent` test mosaics), by label count and kind of error, "
              "mean over the seeds:", ""]
    keys = ("exact, 1 label", "exact, 2 labels", "exact, 3 labels", "exact, 4 labels",
            "too few", "too many", "swap at right count")
    lines += ["| variant | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, runs in variants.items():
        rows = [json.loads((r / "errors-independent.json").read_text())[0] for r in runs
                if (r / "errors-independent.json").is_file()]
        if rows:
            lines.append(f"| {name} | " + " | ".join(
                f"{sum(r[k] for r in rows) / len(rows):.3f}" for k in keys) + " |")
    lines += ["", "The validation mosaics under either prior (`cnnrnn evaluate RUN --split val "
              "--prior P`), what a mix share is chosen by; seeds with both files:", "",
              "| variant | seeds | val O-F1, outfits | val O-F1, independent | val O-F1 lost to "
              "the shift |", "|---|---:|---:|---:|---:|"]
    for name, runs in variants.items():
        runs = [r for r in runs if all((r / f"val-{p}.json").is_file()
                                       for p in ("outfits", "independent"))]
        if runs:
            same = [json.loads((r / "val-outfits.json").read_text())["O-F1"] for r in runs]
            shift = [json.loads((r / "val-independent.json").read_text())["O-F1"] for r in runs]
            lost = [a - b for a, b in zip(same, shift, strict=True)]
            lines.append(f"| {name} | {len(runs)} | {_cell(same, False)} | "
                         f"{_cell(shift, False)} | {_cell(lost, False)} |")
    return "\n".join(lines) + "\n"


def _n(prior_dir: Path) -> int:
    for f in prior_dir.glob("*/test*.json"):
        return json.loads(f.read_text())["n"]
    return 0


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    print({"multilabel": multilabel, "severity": severity, "decoders": decoders}[kind](out),
          end="")
