"""Evaluate, predict with and compare saved runs.

The run's task does the work: its data split, decoding options, prediction and metrics. Run
folders of every cnnrnn version read here (older configs are upgraded on load).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnrnn.checkpoint import load_model_state
from cnnrnn.config import TrainConfig, config_from_dict
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST, load_fashion_mnist
from cnnrnn.errors import CnnrnnError
from cnnrnn.models.registry import count_parameters
from cnnrnn.precision import autocast, resolve_device
from cnnrnn.run_dir import RunDir
from cnnrnn.tasks import Task, apply_eval_options, get_task, run_predict

SPLITS = ("test", "val")


def load_run(run: str | Path, checkpoint: str = "best", device: str = "cpu"
             ) -> tuple[TrainConfig, Task, nn.Module, dict[str, Any]]:
    """Rebuild a run's model from its checkpoint (the architecture comes from the checkpoint)."""
    run_dir = RunDir(run)
    state = run_dir.load(checkpoint)
    cfg = config_from_dict(state["config"])
    task = get_task(cfg.task)
    model = task.build(cfg, None)
    load_model_state(model, state, run_dir.checkpoint_path(checkpoint))
    return cfg, task, model.to(resolve_device(device)).eval(), state


def predict_images(task: Task, model: nn.Module, images: torch.Tensor, cfg: TrainConfig,
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The task's predictions for uint8 images (N, H, W), under the run's precision."""
    dev = resolve_device(device) if isinstance(device, str) else device
    return run_predict(task, model, images, cfg, dev, lambda: autocast(dev, cfg.precision))


def evaluate_run(run: str | Path, split: str = "test", data_dir: str | Path | None = None,
                 checkpoint: str = "best", device: str = "cpu",
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metrics of a run's checkpoint on the validation or test split.

    `options` are the task's evaluation options (`beam_width` for CNN-RNN runs, `tta_flip` for
    single-label runs); None keeps the run's own. The result also gives the prediction time
    and images per second (the whole split, batches of eval_batch_size, excluding data
    loading).
    """
    if split not in SPLITS:
        raise CnnrnnError(f"unknown split {split!r}; choose test or val")
    loaded = load_run(run, checkpoint, device)
    return _evaluate_loaded(run, *loaded, load_fashion_mnist(data_dir), split, checkpoint,
                            device, options or {})


def _evaluate_loaded(run: str | Path, cfg: TrainConfig, task: Task, model: nn.Module,
                     state: dict[str, Any], fmnist: FashionMNIST, split: str, checkpoint: str,
                     device: str, options: dict[str, Any]) -> dict[str, Any]:
    cfg = apply_eval_options(cfg, run, options)
    data = task.prepare(cfg, fmnist)
    images, targets = ((data.test_images, data.test_targets) if split == "test"
                       else (data.val_images, data.val_targets))
    start = time.perf_counter()
    outputs = predict_images(task, model, images, cfg, device)
    seconds = time.perf_counter() - start
    metrics = task.metrics(outputs, targets, cfg)
    return {"run": str(run), "task": cfg.task, "model": cfg.model, "split": split,
            "checkpoint": checkpoint, "epoch": state["epoch"], "n": len(images),
            **task.describe(cfg), "predict_seconds": seconds,
            "images_per_second": len(images) / seconds, **metrics}


def read_images(path: str | Path, size: int) -> torch.Tensor:
    """A uint8 .npy array (N, size, size) of raw 0-255 pixels, checked; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CnnrnnError(f"{path} not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CnnrnnError(f"cannot read {path} as a .npy array ({type(e).__name__}: {e})"
                          ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
        raise CnnrnnError(f"{path} has dtype {getattr(arr, 'dtype', type(arr).__name__)}; "
                          "expected uint8 raw pixels 0-255 (e.g. arr.astype(np.uint8))")
    if arr.ndim == 2 and arr.shape == (size, size):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (size, size):
        raise CnnrnnError(f"{path} has shape {arr.shape}; expected (N, {size}, {size})")
    return torch.from_numpy(np.ascontiguousarray(arr))


def predict_run(run: str | Path, images_path: str | Path, device: str = "cpu"
                ) -> dict[str, Any]:
    """Predictions of a run's best checkpoint for a .npy file of raw images."""
    cfg, task, model, _ = load_run(run, "best", device)
    images = read_images(images_path, task.image_size)
    outputs = predict_images(task, model, images, cfg, device)
    return {"classes": list(CLASSES), **task.format_predictions(outputs)}


def compare_runs(runs: list[str | Path], data_dir: str | Path | None = None
                 ) -> list[dict[str, Any]]:
    """One row per run: parameters, ms per step, peak and final validation metric, test metric.

    All runs must be of one task, so that one metric compares them."""
    rows = []
    fmnist = None  # read and verified once for all runs
    first_task = None
    for run in runs:
        cfg, task, model, state = load_run(run)
        if first_task is not None and task is not first_task:
            raise CnnrnnError(f"{run} is a {cfg.task} run but {runs[0]} is a {first_task.name} "
                              "run; compare runs of one task at a time")
        first_task = task
        history = RunDir(run).read_history()
        if not history:
            raise CnnrnnError(f"{run} has no finished epoch yet; train it first")
        key = f"val_{task.primary}"
        fmnist = fmnist or load_fashion_mnist(data_dir)
        test = _evaluate_loaded(run, cfg, task, model, state, fmnist, "test", "best", "cpu", {})
        rows.append({"run": Path(run).name, "model": cfg.model,
                     "parameters": count_parameters(model), "epochs": len(history),
                     "ms_per_step": statistics.median(r["ms_per_step"] for r in history),
                     "epoch_seconds": statistics.median(r["train_seconds"] for r in history),
                     "peak_val": max(r[key] for r in history), "final_val": history[-1][key],
                     "test": test[task.primary], "metric": task.primary})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| run | model | parameters | epochs | ms/step (median) | s/epoch (median) | "
            "peak val | final val | test |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['run']} | {r['model']} | {r['parameters']:,} | {r['epochs']} | "
        f"{r['ms_per_step']:.1f} | {r['epoch_seconds']:.1f} | {100 * r['peak_val']:.2f} % | "
        f"{100 * r['final_val']:.2f} % | {100 * r['test']:.2f} % |\n" for r in rows)
    return head + body
