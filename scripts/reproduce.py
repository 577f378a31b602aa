"""Train every run behind docs/results.md and README.md, then regenerate their tables.

    make reproduce            # the full runs, into runs/reproduce/; rewrites the generated blocks
    make reproduce QUICK=1    # the same steps at tiny sizes, into runs/reproduce-quick/ (minutes);
                              # writes the filled pages there and leaves docs/ alone

Resumable: a finished run or evaluation is kept, a run stopped half-way continues from its
last.pt (`cnnrnn train --resume`), a run killed before its first checkpoint starts again.
Every run pins `threads=1`, so a run repeats bit for bit on the same CPU model whatever else
the machine does; `--jobs 2` trains two runs at a time (one per core of a 2-core machine).

The pages hold generated blocks between `<!-- reproduce:NAME -->` and `<!-- /reproduce:NAME -->`
markers; GENERATORS[NAME](runs) writes each block from the run folders alone. A block whose
runs are missing (a partial reproduction: `--only`) is left as it was and listed; with
`--check` that is an error.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import reproduce_tables as tables  # noqa: E402

PAGES = (REPO / "docs" / "results.md", REPO / "README.md")
MARK = re.compile(r"(<!-- reproduce:(?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                  r"(<!-- /reproduce:(?P=name) -->)", re.S)


@dataclass
class Step:
    """One `cnnrnn` command. A training step (`train=True`) writes the run folder `out`; any
    other step writes the file `out`. `after` lists what must exist first (runs or files)."""

    out: str
    args: list[str]
    train: bool = False
    after: list[str] = field(default_factory=list)
    tuned: tuple[str, bool] | None = None  # (model, quick): add its tuned settings' flags


# --- the experiments -----------------------------------------------------------------------

SEEDS = tables.SEEDS
QUICK_SINGLE = ["--epochs", "1", "--limit-train", "512", "--set", "val_size=500"]
QUICK_MULTI = ["--epochs", "1", "--limit-train", "256", "--batch-size", "64",
               "--set", "val_size=500", "--set", "multilabel.val_mosaics=200",
               "--set", "multilabel.test_mosaics=200", "--set", "multilabel.encoder_epochs=1",
               "--set", "model.encoder_width=0.0625"]

# the methods of the severity study: name -> training flags ({costs}: the U_l cost files)
SEVERITY_METHODS = {
    "ce": [],
    "soft-hierarchy": ["--loss", "soft-labels", "--costs", "hierarchy"],
    "hxe-hierarchy": ["--loss", "hxe", "--costs", "hierarchy"],
    "soft-outfits": ["--loss", "soft-labels", "--costs", "{costs}/outfits.csv"],
    "hxe-outfits": ["--loss", "hxe", "--costs", "{costs}/outfits.csv"],
}
SEVERITY_MODELS = {"lstm": ["--model", "lstm", "--set", "model.bidirectional=false"],
                   "cnn": ["--model", "cnn"]}


def embedding_runs(quick: bool) -> list[Step]:
    """The CNN-RNN runs whose label embeddings (rows of U_l) become cost matrices."""
    extra = QUICK_MULTI if quick else []
    steps = []
    for prior in ("outfits", "independent"):
        run = f"embeddings/{prior}-s0"
        # `outfits` alone (the recipe mixes in a fifth of `independent` mosaics): the question
        # is what co-occurrence puts into U_l
        mix = ["--set", "multilabel.mix_independent=0"] if prior == "outfits" else []
        steps.append(Step(run, ["train", "--task", "multilabel", "--prior", prior, "--seed",
                                "0", *mix, *extra], train=True))
        steps.append(Step(f"embeddings/costs/{prior}.csv",
                          ["analyze", "costs", "embeddings", "{runs}/" + run,
                           "--out", "{runs}/embeddings/costs/" + prior + ".csv"],
                          after=[run]))
    # where the attention decoder's steps look, against the chance levels (docs/results.md)
    n = "100" if quick else "1000"
    steps.append(Step("embeddings/outfits-s0/analysis/saliency/saliency.json",
                      ["analyze", "saliency", "{runs}/embeddings/outfits-s0", "--n", n,
                       "--method", "attention", "--n-figure", "0"],
                      after=["embeddings/outfits-s0"]))
    steps.append(Step("embeddings/costs/hierarchy.csv",
                      ["analyze", "costs", "hierarchy", "--out",
                       "{runs}/embeddings/costs/hierarchy.csv"]))
    return steps


def severity_study(model: str, quick: bool) -> list[Step]:
    """Severity-aware training (soft labels, HXE) with costs from the hierarchy and from the
    CNN-RNN's `outfits` label embeddings, against cross-entropy; 3 seeds. The tables evaluate
    each run under the hierarchy and under the `outfits` costs, with the argmax and with CRM
    (reproduce_tables.py; the evaluations are kept in the run folders)."""
    extra = QUICK_SINGLE if quick else []
    return [step for method, flags in SEVERITY_METHODS.items()
            for step in method_runs(f"severity-{model}", model, method, flags, extra,
                                    ["embeddings/costs/outfits.csv"]
                                    if "{costs}" in " ".join(flags) else [])]


# the rest of the grid, on a shorter schedule (GRID_EPOCHS, stated beside its tables)
GRID_EPOCHS = 10
GRID_METHODS = {
    "ce": [],
    "ec-hierarchy": ["--loss", "expected-cost", "--costs", "hierarchy"],
    "soft-independent": ["--loss", "soft-labels", "--costs", "{costs}/independent.csv"],
    "hxe-independent": ["--loss", "hxe", "--costs", "{costs}/independent.csv"],
    "soft-own": ["--loss", "soft-labels", "--costs", "{grid}/costs/own.csv"],
    "hxe-own": ["--loss", "hxe", "--costs", "{grid}/costs/own.csv"],
}
BETAS = tables.BETAS


def method_runs(exp: str, model: str, method: str, flags: list[str], extra: list[str],
                needs: list[str]) -> list[Step]:
    """One training step per seed of `method` in experiment folder `exp`."""
    return [Step(f"{exp}/{method}-s{seed}",
                 ["train", "--task", "single-label", *SEVERITY_MODELS[model], "--seed",
                  str(seed), *flags, *extra], train=True, after=needs) for seed in SEEDS]


def severity_grid(model: str, quick: bool) -> list[Step]:
    """The other cost sources and the expected-cost loss (GRID_EPOCHS epochs, 3 seeds): costs
    from a CNN-RNN trained under `independent` and from the classifier's own class rows (the
    last linear layer of this grid's cross-entropy run, seed 0)."""
    extra = QUICK_SINGLE if quick else ["--epochs", str(GRID_EPOCHS)]
    grid = f"grid-{model}"
    own = f"{grid}/costs/own.csv"
    steps = []
    for method, flags in GRID_METHODS.items():
        needs = [own] if "{grid}" in " ".join(flags) else \
            ["embeddings/costs/independent.csv"] if "{costs}" in " ".join(flags) else []
        flags = [f.replace("{grid}", "{runs}/" + grid) for f in flags]
        steps += method_runs(grid, model, method, flags, extra, needs)
        if method == "ce":
            steps.append(Step(own, ["analyze", "costs", "embeddings", "{runs}/" + f"{grid}/ce-s0",
                                    "--out", "{runs}/" + own], after=[f"{grid}/ce-s0"]))
    return steps


def beta_sweep(model: str, quick: bool) -> list[Step]:
    """Soft labels under the hierarchy at each beta (GRID_EPOCHS epochs, 3 seeds), drawn
    against the grid's cross-entropy runs of the same schedule."""
    extra = QUICK_SINGLE if quick else ["--epochs", str(GRID_EPOCHS)]
    return [step for beta in BETAS
            for step in method_runs(f"sweep-{model}", model, f"soft-beta{beta}",
                                    ["--loss", "soft-labels", "--costs", "hierarchy", "--set",
                                     f"single_label.beta={beta}"], extra, [])]


# the CNN-RNN against today's multi-label heads (issue 20), each on its recipe as shipped
PEERS = {
    "cnn-rnn": [],  # the default `cnnrnn train --task multilabel`
    "bce": ["--model", "bce"],
    "bce-asl": ["--model", "bce", "--set", "multilabel.loss=asl"],
    "query": ["--model", "query"],
    "query-asl": ["--model", "query", "--set", "multilabel.loss=asl"],
    "bce-count": ["--model", "bce", "--set", "model.count_head=true"],
}
assert set(PEERS) == set(tables.PEER_LABELS)


# each model's own tuning effort (issue 20): the grid and the choice live in reproduce_tables
TUNE_EPOCHS = tables.TUNE_EPOCHS
tuning_grid = tables.tuning_grid


def tuning_runs(quick: bool) -> list[Step]:
    extra = QUICK_MULTI if quick else ["--epochs", str(TUNE_EPOCHS)]
    return [Step(f"tune/{name}/{label}", ["train", "--task", "multilabel", *flags, *settings,
                                          "--seed", str(tables.TUNE_SEED), *extra],
                 train=True)
            for name, flags in PEERS.items()
            for label, settings in tuning_grid(name, quick).items()]


def tuned_settings(name: str, quick: bool, runs: Path) -> tuple[str, list[str]]:
    try:
        return tables.tuned_settings(name, quick, runs)
    except tables.MissingRuns as e:
        raise SystemExit(f"reproduce: the peers wait for their tuning ({e})") from None


def peer_runs(quick: bool) -> list[Step]:
    """Each peer of the CNN-RNN on its recipe as shipped (outfits, a fifth of the training
    mosaics under independent) with the setting its tuning chose (Step.tuned), 3 seeds; the tables
    evaluate each under outfits, independent and the held-out street and inverted, which no run
    trains or chooses anything on."""
    extra = QUICK_MULTI if quick else []
    return [Step(f"peers/{name}-s{seed}", ["train", "--task", "multilabel", *flags, "--seed",
                                          str(seed), *extra], train=True,
                 after=[f"tune/{name}/{label}" for label in tuning_grid(name, quick)],
                 tuned=(name, quick))
            for name, flags in PEERS.items() for seed in SEEDS]


def plan(quick: bool) -> list[Step]:
    """Every step, in the order they are run: the deciding comparison first (the one-direction
    LSTM, then the cnn, both on their full recipes), then the grid's
    cross-entropy runs (the sweep's reference), the beta sweep, the rest of the grid, the
    multilabel models' tuning and the CNN-RNN's peers with their tuned settings."""
    grid = severity_grid("lstm", quick)
    first = [s for s in grid if "/ce-s" in s.out or s.out.endswith("own.csv")]
    return [*embedding_runs(quick), *severity_study("lstm", quick), *severity_study("cnn", quick),
            *first, *beta_sweep("lstm", quick), *[s for s in grid if s not in first],
            *tuning_runs(quick), *peer_runs(quick)]


# --- running -------------------------------------------------------------------------------

def done(step: Step, runs: Path) -> bool:
    target = runs / step.out
    if step.train and step.tuned:  # trained with the setting its tuning chose
        if not all(tables.run_finished(runs / a) for a in step.after):
            return False
        _, flags = tuned_settings(*step.tuned, runs)
        return tables.run_finished(target) and tables.settings_match(target, flags)
    if step.train:
        return tables.run_finished(target)
    if not target.is_file():
        return False
    # an output older than a run it reads is made again (the run was trained on)
    newest = max(((runs / a / "best.pt").stat().st_mtime for a in step.after
                  if (runs / a / "best.pt").is_file()), default=0.0)
    return target.stat().st_mtime >= newest


def command(step: Step, runs: Path, cnnrnn: list[str]) -> list[str]:
    args = [a.replace("{runs}", str(runs)).replace("{costs}", str(runs / "embeddings/costs"))
            for a in step.args]
    if not step.train:
        return [*cnnrnn, *args]
    out = runs / step.out
    if step.tuned:
        flags = tuned_settings(*step.tuned, runs)[1]
        args += flags
        if (out / "config.toml").is_file() and not tables.settings_match(out, flags):
            return [*cnnrnn, *args, "--set", "threads=1", "--quiet", "--out", str(out),
                    "--overwrite"]  # trained with another setting: train it again
    if (out / "last.pt").is_file():  # stopped half-way: continue it
        return [*cnnrnn, "train", "--resume", str(out), "--quiet"]
    return [*cnnrnn, *args, "--set", "threads=1", "--quiet", "--out", str(out),
            *(["--overwrite"] if out.exists() else [])]


def execute(step: Step, runs: Path, cnnrnn: list[str], log: Callable[[str], None]) -> None:
    cmd = command(step, runs, cnnrnn)
    log(f"run  {step.out}: {' '.join(cmd[len(cnnrnn):])}")
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"reproduce: {step.out} failed (exit {proc.returncode}): "
                         + " | ".join(tail))
    log(f"done {step.out} ({time.time() - start:.0f} s)")


def run_plan(steps: list[Step], runs: Path, jobs: int, cnnrnn: list[str]) -> None:
    """Run the steps not yet done, `jobs` at a time, each after the steps it needs."""
    pending = [s for s in steps if not done(s, runs)]
    print(f"reproduce: {len(steps) - len(pending)} of {len(steps)} steps already done, "
          f"{len(pending)} to run, {jobs} at a time, into {runs}", flush=True)
    outputs = {s.out for s in steps}

    def ready(step: Step, finished: set[str]) -> bool:
        return all(a in finished or a not in outputs and (runs / a).exists()
                   for a in step.after)

    finished = {s.out for s in steps if s not in pending}
    with ThreadPoolExecutor(jobs) as pool:
        running: dict = {}
        while pending or running:
            for step in [s for s in pending if ready(s, finished)][:jobs - len(running)]:
                pending.remove(step)
                running[pool.submit(execute, step, runs, cnnrnn,
                                    lambda m: print(m, flush=True))] = step
            if not running:
                raise SystemExit("reproduce: steps wait for outputs no step makes: "
                                 + ", ".join(s.out for s in pending))
            for future in [f for f in running if f.done()]:
                future.result()
                finished.add(running.pop(future).out)
            time.sleep(0.2)


# --- the pages -----------------------------------------------------------------------------

def fill(text: str, runs: Path, quick: bool) -> tuple[str, list[str], list[str]]:
    """The page with each generated block rewritten; (page, filled names, missing names)."""
    filled, missing = [], []

    def block(m: re.Match) -> str:
        name = m["name"]
        if name not in tables.GENERATORS:
            raise SystemExit(f"reproduce: no generator for the block {name!r}; known: "
                             + ", ".join(sorted(tables.GENERATORS)))
        try:
            body = tables.GENERATORS[name](runs, quick)
        except tables.MissingRuns as e:
            missing.append(f"{name} ({e})")
            return m.group(0)
        filled.append(name)
        return m.group(1) + body.rstrip("\n") + "\n" + m.group(4)

    return MARK.sub(block, text), filled, missing


def write_pages(runs: Path, quick: bool, check: bool) -> None:
    for page in PAGES:
        text, filled, missing = fill(page.read_text(), runs, quick)
        target = runs / page.name if quick else page
        target.write_text(text)
        print(f"reproduce: {target}: {len(filled)} blocks generated"
              + (f", {len(missing)} left as they were: {'; '.join(missing)}" if missing else ""),
              flush=True)
        if check and missing:
            raise SystemExit(f"reproduce: {page.name}: blocks without their runs: "
                             + "; ".join(missing))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, pages written to --runs")
    p.add_argument("--runs", type=Path, help="default: runs/reproduce (runs/reproduce-quick)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time (default 1)")
    p.add_argument("--only", nargs="*", default=[], metavar="PREFIX",
                   help="run only the steps whose output starts with one of these")
    p.add_argument("--tables-only", action="store_true", help="regenerate the pages only")
    p.add_argument("--check", action="store_true", help="fail if a block cannot be generated")
    a = p.parse_args()
    runs = (a.runs or REPO / ("runs/reproduce-quick" if a.quick else "runs/reproduce")).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    cnnrnn = [os.environ.get("PYTHON", sys.executable), "-m", "cnnrnn"]
    # the encoders the multilabel runs pretrain belong to the reproduction (and its cost)
    os.environ.setdefault("CNNRNN_CACHE", str(runs / "cache"))
    if not a.tables_only:
        steps = [s for s in plan(a.quick) if not a.only or s.out.startswith(tuple(a.only))]
        run_plan(steps, runs, a.jobs, cnnrnn)
    write_pages(runs, a.quick, a.check)


if __name__ == "__main__":
    main()
