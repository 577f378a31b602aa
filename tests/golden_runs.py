"""Golden runs: tiny seeded trainings whose numbers must not change when the code is reorganised.

Each run is a `cnnrnn train` command line and the `cnnrnn evaluate --json` of its result. Two sets:

- RUNS train as the recipes do, in bf16. Their numbers depend on the CPU's kernels: on an AMD
  EPYC (AVX512-BF16, no AMX) a one-epoch run ends 1-35 % away from an Intel Xeon with AMX
  (oneDNN's bf16 kernels round differently, and a 4-step SGD run at lr 0.05 amplifies it). So
  they are recorded per CPU (model name and the instruction sets the kernels dispatch on) and
  compared bit for bit on a CPU that has a record; on any other CPU they are compared loosely
  (LOOSE), and the test says so.
- PORTABLE runs are fp32 twins (the single-label runs with `--precision fp32`, the multilabel
  heads on the frozen encoder of tests/fixtures/old_runs/bce). fp32 kernels differ between
  CPUs only in the order of their sums: emulating the other CPUs on the recording one
  (`python tests/golden_runs.py spread`, which reruns them with oneDNN, MKL and ATen limited to
  AVX2 or to AVX512-BF16 without AMX) moved no number by more than SPREAD (tests/golden/
  spread.json). They are compared within PORTABLE_TOL, far above that spread and far below
  what a real change does (the test trains the runs with a 10 % higher learning rate and
  without augmentation, and checks that both fail the comparison on whatever CPU runs it).

The files in tests/golden/ were first written by the code before the upper-floor redesign and
re-recorded on purpose since (the encoder's bf16 weight-gradient matmul moved bce and cnn-rnn in
their last digits; the portable runs came with the per-CPU records).

Record this CPU's numbers (only when a change of numbers is intended, or to add a CPU; say so
in the commit):
    python tests/golden_runs.py record --data-dir DIR
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from cnnrnn.threads import cpu_model

GOLDEN = Path(__file__).resolve().parent / "golden"
FIXTURE_ENCODER = Path(__file__).resolve().parent / "fixtures" / "old_runs" / "bce"

# Keys that measure time, not numbers of the model, and the run folder's own path.
VOLATILE = {"ms_per_step", "train_seconds", "predict_seconds", "images_per_second", "run"}

_SINGLE = ["--limit-train", "2048", "--epochs", "1", "--set", "threads=1", "--set",
           "val_size=1000"]
_ML = ["--task", "multilabel", "--limit-train", "256", "--epochs", "1", "--batch-size", "64",
       "--set", "threads=1", "--set", "val_size=500", "--set", "model.encoder_width=0.0625",
       "--set", "multilabel.val_mosaics=200", "--set", "multilabel.test_mosaics=200"]
_CNN = ["--model", "cnn", *_SINGLE, "--set", "model.channels=8", "--set", "model.hidden=32"]
_LSTM = ["--model", "lstm", *_SINGLE, "--set", "model.hidden_size=32"]
_GRU = ["--model", "gru", *_SINGLE, "--set", "model.hidden_size=32"]
_DECODER = ["--beam-width", "2", "--set", "model.hidden_size=32", "--set", "model.embed_dim=16",
            # the recipe's decoder when the run was recorded (today's is attention)
            "--set", "model.decoder=paper", "--set", "multilabel.label_smoothing=0"]

# name -> arguments of `cnnrnn train` after the run folder ({runs} is the folder of all runs)
RUNS: dict[str, list[str]] = {
    "cnn": _CNN,
    "lstm": _LSTM,
    "gru": _GRU,
    "encoder": ["--model", "vgg16", "--limit-train", "512", "--epochs", "1", "--set",
                "threads=1", "--set", "val_size=500", "--set", "model.width=0.0625"],
    "cnn-rnn": [*_ML, "--model", "cnn-rnn", "--encoder-checkpoint", "{runs}/encoder", *_DECODER,
                "--set", "multilabel.mix_independent=0"],
    "bce": [*_ML, "--model", "bce", "--encoder-checkpoint", "{runs}/encoder",
            "--set", "multilabel.mix_independent=0"],  # recorded on `outfits` mosaics alone
}
_FP32 = ["--precision", "fp32"]
_FROZEN = ["--encoder-checkpoint", str(FIXTURE_ENCODER), "--freeze-encoder"]
PORTABLE: dict[str, list[str]] = {
    "cnn-fp32": [*_CNN, *_FP32],
    "lstm-fp32": [*_LSTM, *_FP32],
    "gru-fp32": [*_GRU, *_FP32],
    "cnn-rnn-fp32": [*_ML, "--model", "cnn-rnn", *_FROZEN, *_DECODER, *_FP32,
                     "--set", "multilabel.mix_independent=0"],
    "bce-fp32": [*_ML, "--model", "bce", *_FROZEN, *_FP32,
                 "--set", "multilabel.mix_independent=0"],
}

# Real changes the portable comparison must catch on any CPU: name -> (run, extra arguments).
CHANGES: dict[str, tuple[str, list[str]]] = {
    "cnn, learning rate 10 % higher": ("cnn-fp32", ["--lr", "2.2e-3"]),
    "lstm, augmentation dropped": ("lstm-fp32", ["--set", "single_label.augment=false"]),
    "bce, learning rate 10 % higher": ("bce-fp32", ["--lr", "1.1e-3"]),
}

# Within this of the record, relatively (plus ABS_FLOOR for values near 0), a portable float
# agrees; integer counts (confusion cells, supports) within COUNT_TOL. SPREAD (spread.json) is
# what emulated CPUs moved; the test checks PORTABLE_TOL is at least 10x above it.
PORTABLE_TOL = 1e-3
ABS_FLOOR = 1e-6
COUNT_TOL = 2
# The bf16 runs on a CPU without a record: a float in [0, 1] (accuracies, F1s, mAP) within
# LOOSE_ABS, any other float (losses, learning rates) within LOOSE_REL; confusion cells and
# per-class or per-label breakdowns (single flipped predictions) are not compared there, the
# headline numbers and the number of samples are. The largest change measured between the recording
# CPU and an emulated AVX512-BF16 CPU without AMX was 0.033 in accuracy (the 4-step encoder run)
# and 0.7 % in a loss.
LOOSE_ABS = 0.1
LOOSE_REL = 0.1

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")
# Emulated CPUs for `spread`: environment variables that limit the kernels' instruction sets.
EMULATED = {
    "AVX512-BF16 without AMX (AMD EPYC's)": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "AVX2 only": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                  "ATEN_CPU_CAPABILITY": "avx2"},
}


def cpu_signature() -> dict[str, Any]:
    """The CPU model and the instruction sets kernels dispatch on (one model name can come with
    different flags under a hypervisor)."""
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
    except OSError:
        pass
    return {"cpu": cpu_model(), "isa": [f for f in ISA_FLAGS if f in flags]}


def _record_files() -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text()) for p in sorted(GOLDEN.glob("results*.json"))}


def records() -> list[dict[str, Any]]:
    """Every recorded CPU's numbers: tests/golden/results*.json."""
    return list(_record_files().values())


def _record_path(signature: dict[str, Any]) -> Path | None:
    return next((p for p, rec in _record_files().items()
                 if rec["cpu"] == signature["cpu"] and rec.get("isa") == signature["isa"]),
                None)


def record_for(signature: dict[str, Any]) -> dict[str, Any] | None:
    path = _record_path(signature)
    return None if path is None else json.loads(path.read_text())


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def run_set(runs: dict[str, list[str]], out: Path, data_dir: Path, invoke,
            extra: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """Train every run into `out`/NAME and evaluate it; `invoke(args) -> stdout`."""
    results = {}
    for name, args in runs.items():
        folder = out / name
        invoke(["train", "--out", str(folder), "--data-dir", str(data_dir), "--quiet",
                *[a.format(runs=out) for a in args], *(extra or {}).get(name, [])])
        history = [strip(json.loads(line)) for line in (folder / "metrics.jsonl").read_text()
                   .splitlines()]
        evaluation = strip(json.loads(invoke(["evaluate", str(folder), "--json", "--data-dir",
                                              str(data_dir)])))
        results[name] = {"history": history, "evaluate": evaluation}
    return results


def _leaves(x: Any, where: str = ""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{where}.{k}" if where else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{where}[{i}]")
    else:
        yield where, x


def differences(got: Any, want: Any, mode: str) -> list[str]:
    """Where `got` differs from the record `want` (every key the record has; new keys may be
    added). mode: "exact" (bit for bit), "portable" or "loose" (the tolerances above)."""
    have = dict(_leaves(got))
    out = []
    for key, w in _leaves(want):
        if key not in have:
            out.append(f"{key} missing")
            continue
        g = have[key]
        if mode == "loose" and re.search(r"confusion_matrix|per_class|per_label", key):
            continue  # single predictions; the headline numbers and supports are compared
        if isinstance(w, bool) or not isinstance(w, int | float) or mode == "exact":
            ok = g == w
        elif isinstance(w, int):
            ok = isinstance(g, int | float) and abs(g - w) <= (COUNT_TOL if mode == "portable"
                                                              else 0)
        elif g is None or not isinstance(g, int | float):
            ok = False
        elif mode == "portable":
            ok = math.isclose(g, w, rel_tol=PORTABLE_TOL, abs_tol=ABS_FLOOR)
        else:
            ok = abs(g - w) <= LOOSE_ABS if 0 <= w <= 1 and 0 <= g <= 1 else \
                math.isclose(g, w, rel_tol=LOOSE_REL)
        if not ok:
            out.append(f"{key}: {g!r}, recorded {w!r}")
    return out


def relative_changes(got: dict, want: dict) -> dict[str, float]:
    """The largest relative change of any float of each run (for `spread`)."""
    out = {}
    for name in want:
        have = dict(_leaves(got[name]))
        worst = 0.0
        for key, w in _leaves(want[name]):
            g = have.get(key)
            if isinstance(w, float) and isinstance(g, float):
                worst = max(worst, abs(g - w) / max(abs(w), ABS_FLOOR))
        out[name] = worst
    return out


def _subprocess_invoke(args: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "cnnrnn", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        raise SystemExit(f"cnnrnn {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def record(runs: Path, data_dir: Path) -> None:
    sig = cpu_signature()
    results = run_set(RUNS, runs / "bf16", data_dir, _subprocess_invoke)
    portable = run_set(PORTABLE, runs / "fp32", data_dir, _subprocess_invoke)
    path = _record_path(sig)
    if path is None:
        slug = re.sub(r"[^a-z0-9]+", "-", f"{sig['cpu']} {' '.join(sig['isa'])}".lower())
        path = GOLDEN / f"results-{slug.strip('-')}.json"
    GOLDEN.mkdir(exist_ok=True)
    path.write_text(json.dumps({**sig, "runs": results, "portable": portable}, indent=1,
                               sort_keys=True) + "\n")
    print(f"wrote {path} ({sig['cpu']}, {' '.join(sig['isa'])})")


def spread(runs: Path, data_dir: Path) -> None:
    """Rerun the portable runs under each emulated CPU; write the largest relative change."""
    base = run_set(PORTABLE, runs / "native", data_dir, _subprocess_invoke)
    measured = {}
    for label, env in EMULATED.items():
        got = run_set(PORTABLE, runs / re.sub(r"\W+", "-", label), data_dir,
                      lambda args, env=env: _subprocess_invoke(args, env))
        measured[label] = {"environment": env, "largest_relative_change":
                           relative_changes(got, base)}
    worst = max(v for m in measured.values() for v in m["largest_relative_change"].values())
    (GOLDEN / "spread.json").write_text(json.dumps(
        {**cpu_signature(), "emulated": measured, "largest": worst}, indent=1) + "\n")
    print(f"largest relative change under an emulated CPU: {worst:.2e} (tolerance "
          f"{PORTABLE_TOL:g})")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["record", "spread"])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/golden"))
    a = p.parse_args()
    (record if a.command == "record" else spread)(a.runs, a.data_dir)
