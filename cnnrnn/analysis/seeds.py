"""`cnnrnn compare --stats`: variants trained under several seeds, compared with intervals.

Runs are put into groups (one variant each, one run per seed), either by hand
(`--group NAME=RUN,RUN,RUN`) or by their config.toml: runs whose configs are identical except
for `seed` (and device, threads, checkpoint_minutes, which do not change the model) form one
group. Every run is evaluated once per checkpoint and options (`evaluate_samples` keeps the
per-sample outputs in the run folder); the statistics are `cnnrnn.stats`'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnrnn import stats
from cnnrnn.config import config_from_dict, read_toml
from cnnrnn.errors import CnnrnnError
from cnnrnn.run_dir import CONFIG

MIN_SEEDS = 3
NOT_A_VARIANT = ("seed", "device", "threads", "checkpoint_minutes")


def _config(run: Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise CnnrnnError(f"{run} has no {CONFIG}; pass run folders written by `cnnrnn train` "
                          "(or name the groups with --group NAME=RUN,RUN,RUN)")
    return config_from_dict(read_toml(path)).to_dict()


def group_runs(runs: list[Path]) -> dict[str, list[Path]]:
    """Runs grouped by their config without the seed, groups in the order they first appear;
    a group is named after its folders' common prefix (e.g. ce for ce-s0, ce-s1, ce-s2)."""
    groups: dict[str, list[Path]] = {}
    for run in runs:
        cfg = _config(run)
        key = repr(sorted((k, v) for k, v in cfg.items() if k not in NOT_A_VARIANT))
        groups.setdefault(key, []).append(Path(run))
    named: dict[str, list[Path]] = {}
    for i, members in enumerate(groups.values(), 1):
        prefix = os.path.commonprefix([Path(r).resolve().name for r in members])
        name = re.sub(r"([-_.]+(s|seed))?[-_.]*\d*$", "", prefix) if len(members) > 1 else ""
        name = name or (Path(members[0]).resolve().name if len(members) == 1 else "")
        if not name or name in named:
            name = f"group{i}"
        named[name] = members
    return named


def parse_groups(specs: list[str]) -> dict[str, list[Path]]:
    """`NAME=RUN,RUN,...` specs as {name: runs}."""
    groups: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, runs = spec.partition("=")
        if not sep or not name or not runs:
            raise CnnrnnError(f"--group {spec!r}: write NAME=RUN,RUN,RUN (e.g. "
                              "ce=runs/ce-s0,runs/ce-s1,runs/ce-s2)")
        if name in groups:
            raise CnnrnnError(f"--group {name} is given twice; give each group once")
        groups[name] = [Path(r) for r in runs.split(",") if r]
    return groups


def check_seeds(groups: dict[str, list[Path]], allow_few: bool) -> list[str]:
    """Refuse unequal seed counts, a single group, or fewer than MIN_SEEDS seeds per group
    (unless `allow_few`); the notes to print with the results."""
    if len(groups) < 2:
        only = next(iter(groups), "")
        raise CnnrnnError(f"all runs form one group ({only}); give at least two variants, or "
                          "name them with --group NAME=RUN,RUN,RUN")
    counts = {name: len(runs) for name, runs in groups.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise CnnrnnError(f"the groups have unequal seed counts ({listed}); give every group "
                          "the same number of seeds")
    n = next(iter(counts.values()))
    if n < MIN_SEEDS and not allow_few:
        raise CnnrnnError(f"each group has {n} seed{'s' * (n != 1)}; comparisons need at least "
                          f"{MIN_SEEDS} per group (train more seeds, or pass --allow-few-seeds "
                          "to compare anyway, marked in the output)")
    if n < MIN_SEEDS:
        return [f"only {n} seed{'s' * (n != 1)} per group (--allow-few-seeds): fewer than "
                f"{MIN_SEEDS}, the intervals are not to be relied on"]
    return []


def compare_seeds(groups: dict[str, list[Path]], split: str = "test",
                  data_dir: str | Path | None = None, checkpoint: str = "best",
                  options: dict[str, Any] | None = None, resamples: int = 2000,
                  seed: int = 0, allow_few_seeds: bool = False,
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per group and metric: mean, sd and 95 % t-interval over seeds; per group against the
    first (the reference): the paired bootstrap difference, McNemar per seed pair and the
    verdict. JSON-ready."""
    from cnnrnn.costs import load_costs
    from cnnrnn.evaluate import evaluate_samples

    notes = check_seeds(groups, allow_few_seeds)
    if resamples < 1:
        raise CnnrnnError(f"--resamples is {resamples}; give a positive number (e.g. 2000)")
    evaluated: dict[str, list[tuple[dict[str, Any], dict[str, np.ndarray]]]] = {}
    for name, runs in groups.items():
        evaluated[name] = [evaluate_samples(run, split, data_dir, checkpoint, options=options,
                                            say=say) for run in runs]
        seeds = [r["seed"] for r in _configs(runs)]
        if len(set(seeds)) < len(seeds):
            raise CnnrnnError(f"group {name} has two runs of one seed ({seeds}); give one run "
                              "per seed")
        order = np.argsort(seeds, kind="stable")
        groups[name] = [runs[i] for i in order]
        evaluated[name] = [evaluated[name][i] for i in order]
    tasks = {res["task"] for group in evaluated.values() for res, _ in group}
    if len(tasks) > 1:
        raise CnnrnnError(f"compare runs of one task at a time (found {', '.join(sorted(tasks))})")
    task = tasks.pop()
    costs_used = {res.get("costs") for group in evaluated.values() for res, _ in group}
    costs = None
    if len(costs_used) == 1 and None not in costs_used:
        costs = load_costs(next(iter(costs_used)))
    elif len(costs_used) > 1:
        notes.append("the runs use different cost matrices; severity is left out (give one "
                     "--costs)")
    metrics = stats.task_metrics(task, costs is not None)
    seeds = {name: [c["seed"] for c in _configs(groups[name])] for name in groups}

    out_groups = {}
    for name, group in evaluated.items():
        out_groups[name] = {
            "runs": [str(r) for r in groups[name]], "seeds": seeds[name],
            "metrics": {m: stats.summary([res.get(m) for res, _ in group]) for m in metrics}}
    names = list(groups)
    reference = names[0]
    if any(seeds[n] != seeds[reference] for n in names):
        notes.append("the groups' seeds differ; McNemar pairs the runs in seed order")
    comparisons = []
    for name in names[1:]:
        boot = stats.paired_bootstrap([s for _, s in evaluated[name]],
                                      [s for _, s in evaluated[reference]], metrics, costs,
                                      resamples, seed)
        rows = {}
        for m in metrics:
            metric = stats.METRICS[m]
            row = {**boot[m], "higher_is_better": metric.higher_is_better,
                   "verdict": stats.verdict(boot[m]["ci"], metric.higher_is_better, name,
                                            reference)}
            if metric.correct is not None:
                row["mcnemar"] = [
                    {"seed_a": sa, "seed_b": sb,
                     **stats.mcnemar(metric.correct(a), metric.correct(b))}
                    for sa, sb, (_, a), (_, b) in zip(seeds[name], seeds[reference],
                                                      evaluated[name], evaluated[reference],
                                                      strict=True)]
            rows[m] = row
        comparisons.append({"a": name, "b": reference, "metrics": rows})
    first = evaluated[reference][0][0]
    return {"task": task, "split": split, "checkpoint": checkpoint,
            "items": first["n"], "costs": first.get("costs"), "resamples": resamples,
            "bootstrap_seed": seed, "seeds_per_group": len(seeds[reference]),
            "groups": out_groups, "comparisons": comparisons, "notes": notes}


def _configs(runs: list[Path]) -> list[dict[str, Any]]:
    return [_config(r) for r in runs]


def _num(x: float | None, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def markdown(result: dict[str, Any]) -> str:
    """The result of `compare_seeds` as two Markdown tables and its notes."""
    metrics = list(next(iter(result["groups"].values()))["metrics"])
    lines = [f"{result['task']} runs on the {result['split']} split ({result['items']} items, "
             f"checkpoint {result['checkpoint']}"
             + (f", costs {result['costs']}" if result["costs"] else "")
             + f"): mean ± sd [95 % t-interval] over {result['seeds_per_group']} seeds", "",
             "| group | seeds | " + " | ".join(metrics) + " |",
             "|---|---|" + "---:|" * len(metrics)]
    for name, g in result["groups"].items():
        cells = [f"{_num(s['mean'])} ± {_num(s['sd'])} [{_num(s['ci'][0])}, "
                 f"{_num(s['ci'][1])}]" for s in g["metrics"].values()]
        lines.append(f"| {name} | {', '.join(map(str, g['seeds']))} | " + " | ".join(cells)
                     + " |")
    lines += ["", f"Differences against {next(iter(result['groups']))}: paired bootstrap over "
              f"the {result['items']} items ({result['resamples']} resamples), exact McNemar "
              "per seed pair; a verdict needs the 95 % interval to exclude 0", "",
              "| comparison | metric | better | difference | 95 % CI | McNemar p | verdict |",
              "|---|---|---|---:|---|---|---|"]
    for c in result["comparisons"]:
        for m, r in c["metrics"].items():
            p = ", ".join(f"{x['p']:.3g}" for x in r["mcnemar"]) if "mcnemar" in r else "-"
            lines.append(f"| {c['a']} - {c['b']} | {m} | "
                         f"{'higher' if r['higher_is_better'] else 'lower'} | "
                         f"{_num(r['diff'], True)} | [{_num(r['ci'][0], True)}, "
                         f"{_num(r['ci'][1], True)}] | {p} | {r['verdict']} |")
    lines += [f"\nnote: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"
