"""Markdown tables for docs/results.md from finished benchmark runs.

usage: python scripts/results_tables.py multilabel OUT   (the OUT of bench_multilabel.sh)
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


def _n(prior_dir: Path) -> int:
    for f in prior_dir.glob("*/test*.json"):
        return json.loads(f.read_text())["n"]
    return 0


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    print({"multilabel": multilabel}[kind](out), end="")
