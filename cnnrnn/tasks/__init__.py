"""The task table: each task picks its data, model, criterion, prediction and metrics in one
place (`cnnrnn.tasks.base.Task`); the training loop, evaluation and the CLI ask it and never
branch on a task's or a model's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnrnn.config import TrainConfig
from cnnrnn.errors import CnnrnnError
from cnnrnn.tasks.base import Task, TaskData, run_predict
from cnnrnn.tasks.multilabel import Multilabel
from cnnrnn.tasks.single_label import SingleLabel

TASKS: dict[str, Task] = {task.name: task for task in (SingleLabel(), Multilabel())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise CnnrnnError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def apply_eval_options(cfg: TrainConfig, run: str | Path, options: dict[str, Any]
                       ) -> TrainConfig:
    """`cfg` with evaluation options (`--beam-width`, `--tta`) applied; None keeps the run's
    own. An option of another task or model is a one-line error that says whose it is."""
    task = get_task(cfg.task)
    for name, value in options.items():
        if value is None or task.takes_option(name, cfg.model):
            continue
        owner = next((t for t in TASKS.values() if name in t.eval_options), None)
        if owner is None:
            raise CnnrnnError(f"unknown evaluation option {name!r}")
        option = owner.eval_options[name]
        if owner is task:  # the task's, but not this model's
            raise CnnrnnError(f"{option.flag} applies to {', '.join(option.models)} runs; "
                              f"{run} is a {cfg.model} run")
        raise CnnrnnError(f"{option.flag} applies to {owner.name} runs; {run} is a {cfg.task} "
                          "run")
    return task.with_options(cfg, options)


__all__ = ["TASKS", "Task", "TaskData", "apply_eval_options", "get_task", "run_predict"]
