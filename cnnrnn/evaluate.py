"""Evaluate, predict with and compare saved runs."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnrnn.checkpoint import load_checkpoint, load_model_state
from cnnrnn.config import TrainConfig, config_from_dict
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST, load_fashion_mnist
from cnnrnn.errors import CnnrnnError
from cnnrnn.models.registry import count_parameters
from cnnrnn.precision import autocast, resolve_device
from cnnrnn.tasks import Task, get_task, run_predict


def load_run(run: str | Path, checkpoint: str = "best", device: str = "cpu"
             ) -> tuple[TrainConfig, Task, nn.Module, dict[str, Any]]:
    """Rebuild a run's model from its checkpoint (the architecture comes from the checkpoint)."""
    path = Path(run) / f"{checkpoint}.pt"
    if not Path(run).is_dir():
        raise CnnrnnError(f"run folder {run} not found; pass a folder written by `cnnrnn train`")
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    task = get_task(cfg.task)
    model = task.build(cfg, None)
    load_model_state(model, state, path)
    return cfg, task, model.to(resolve_device(device)).eval(), state


def evaluate_run(run: str | Path, split: str = "test", data_dir: str | Path | None = None,
                 checkpoint: str = "best", device: str = "cpu", beam_width: int | None = None,
                 tta_flip: bool | None = None) -> dict[str, Any]:
    """Metrics of a run's checkpoint on the validation or test split.

    `beam_width` overrides the run's beam width (multilabel CNN-RNN runs only); `tta_flip`
    whether single-label logits are averaged with those of the mirrored image. The result also
    gives the prediction time and images per second (the whole split, batches of
    eval_batch_size, excluding data loading).
    """
    if split not in ("test", "val"):
        raise CnnrnnError(f"unknown split {split!r}; choose test or val")
    cfg, task, model, state = load_run(run, checkpoint, device)
    return _evaluate_loaded(run, cfg, task, model, state, load_fashion_mnist(data_dir), split,
                            checkpoint, device, beam_width, tta_flip)


def _evaluate_loaded(run: str | Path, cfg: TrainConfig, task: Task, model: nn.Module,
                     state: dict[str, Any], fmnist: FashionMNIST, split: str, checkpoint: str,
                     device: str, beam_width: int | None = None, tta_flip: bool | None = None
                     ) -> dict[str, Any]:
    if beam_width is not None:
        if cfg.model != "cnn-rnn":
            raise CnnrnnError(f"--beam-width applies to cnn-rnn runs; {run} is a {cfg.model} run")
        cfg = dataclasses.replace(cfg, multilabel=dataclasses.replace(
            cfg.multilabel, beam_width=beam_width)).validate()
    if tta_flip is not None:
        if cfg.task != "single-label":
            raise CnnrnnError(f"--tta applies to single-label runs; {run} is a {cfg.task} run")
        cfg = dataclasses.replace(cfg, tta_flip=tta_flip)
    data = task.prepare(cfg, fmnist)
    images, targets = ((data.test_images, data.test_targets) if split == "test"
                       else (data.val_images, data.val_targets))
    dev = resolve_device(device)
    start = time.perf_counter()
    outputs = run_predict(task, model, images, cfg, dev, lambda: autocast(dev, cfg.precision))
    seconds = time.perf_counter() - start
    metrics = task.metrics(outputs, targets, cfg)
    extra = ({"beam_width": cfg.multilabel.beam_width} if cfg.model == "cnn-rnn" else
             {"tta_flip": cfg.tta_flip} if cfg.task == "single-label" else {})
    return {"run": str(run), "task": cfg.task, "model": cfg.model, "split": split,
            "checkpoint": checkpoint, "epoch": state["epoch"], "n": len(images), **extra,
            "predict_seconds": seconds, "images_per_second": len(images) / seconds, **metrics}


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
    dev = resolve_device(device)
    outputs = run_predict(task, model, images, cfg, dev, lambda: autocast(dev, cfg.precision))
    return {"classes": list(CLASSES), **task.format_predictions(outputs)}


def compare_runs(runs: list[str | Path], data_dir: str | Path | None = None
                 ) -> list[dict[str, Any]]:
    """One row per run: parameters, ms per step, peak and final validation metric, test metric."""
    from cnnrnn.plots import read_history

    rows = []
    fmnist = None  # read and verified once for all runs
    for run in runs:
        cfg, task, model, state = load_run(run)
        history = read_history(run)
        if not history:
            raise CnnrnnError(f"{run} has no finished epoch yet; train it first")
        key = f"val_{task.primary}"
        fmnist = fmnist or load_fashion_mnist(data_dir)
        test = _evaluate_loaded(run, cfg, task, model, state, fmnist, "test", "best", "cpu")
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
