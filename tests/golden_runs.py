"""Golden runs: tiny seeded trainings whose numbers must not change when the code is reorganised.

Each run is a `cnnrnn train` command line and the `cnnrnn evaluate --json` of its result. The
files in tests/golden/ were first written by the code before the upper-floor redesign, and
re-recorded twice since, on purpose: the bf16 weight gradient of the encoder's 4x4 and 2x2
convolutions became one matmul (cnnrnn/models/conv.py), which moved the runs that fine-tune an
encoder on mosaics (bce, cnn-rnn) in their last digits; then that matmul read a contiguous
copy of the output gradient (another kernel, other sums), which moved cnn-rnn again. The
others stayed equal (fused optimizer steps included: their runs' numbers did not move). The test
(test_golden.py) runs the same commands and compares every number, bit for bit on the CPU model
that recorded them and within a small tolerance on another one (a seeded run's last digits
depend on the CPU's kernels: see the README on repeatability).

Re-record (only when a change of numbers is intended, and say so in the commit):
    python tests/golden_runs.py record --data-dir DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cnnrnn.precision import cpu_model

GOLDEN = Path(__file__).resolve().parent / "golden"

# Keys that measure time, not numbers of the model, and the run folder's own path.
VOLATILE = {"ms_per_step", "train_seconds", "predict_seconds", "images_per_second", "run"}

_SINGLE = ["--limit-train", "2048", "--epochs", "1", "--set", "threads=1", "--set",
           "val_size=1000"]
_ML = ["--task", "multilabel", "--limit-train", "256", "--epochs", "1", "--batch-size", "64",
       "--set", "threads=1", "--set", "val_size=500", "--set", "model.encoder_width=0.0625",
       "--set", "multilabel.val_mosaics=200", "--set", "multilabel.test_mosaics=200"]

# name -> arguments of `cnnrnn train` after the run folder ({runs} is the folder of all runs)
RUNS: dict[str, list[str]] = {
    "cnn": ["--model", "cnn", *_SINGLE, "--set", "model.channels=8", "--set", "model.hidden=32"],
    "lstm": ["--model", "lstm", *_SINGLE, "--set", "model.hidden_size=32"],
    "gru": ["--model", "gru", *_SINGLE, "--set", "model.hidden_size=32"],
    "encoder": ["--model", "vgg16", "--limit-train", "512", "--epochs", "1", "--set",
                "threads=1", "--set", "val_size=500", "--set", "model.width=0.0625"],
    "cnn-rnn": [*_ML, "--model", "cnn-rnn", "--encoder-checkpoint", "{runs}/encoder",
                "--beam-width", "2", "--set", "model.hidden_size=32",
                "--set", "model.embed_dim=16",
                # the recipe's decoder when the run was recorded (today's is attention)
                "--set", "model.decoder=paper", "--set", "multilabel.label_smoothing=0",
                "--set", "multilabel.mix_independent=0"],
    "bce": [*_ML, "--model", "bce", "--encoder-checkpoint", "{runs}/encoder",
            "--set", "multilabel.mix_independent=0"],  # recorded on `outfits` mosaics alone
}


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def run_all(runs: Path, data_dir: Path, invoke) -> dict[str, dict]:
    """Train every golden run into `runs`/NAME and evaluate it; `invoke(args) -> stdout`."""
    results = {}
    for name, args in RUNS.items():
        out = runs / name
        invoke(["train", "--out", str(out), "--data-dir", str(data_dir), "--quiet",
                *[a.format(runs=runs) for a in args]])
        history = [strip(json.loads(line)) for line in (out / "metrics.jsonl").read_text()
                   .splitlines()]
        evaluation = strip(json.loads(invoke(["evaluate", str(out), "--json", "--data-dir",
                                              str(data_dir)])))
        results[name] = {"history": history, "evaluate": evaluation}
    return results


def _subprocess_invoke(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "cnnrnn", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"cnnrnn {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def record(runs: Path, data_dir: Path) -> None:
    results = run_all(runs, data_dir, _subprocess_invoke)
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "results.json").write_text(json.dumps(
        {"cpu": cpu_model(), "runs": results}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN / 'results.json'} ({cpu_model()})")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["record"])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/golden"))
    a = p.parse_args()
    record(a.runs, a.data_dir)
