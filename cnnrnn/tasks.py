"""The task table: each task picks its data, model, loss and metrics in one place.

The training loop, evaluation and prediction ask the task; nothing else branches on the task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from cnnrnn.config import TrainConfig
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST, train_val_split
from cnnrnn.data.loader import IndexedBatches, sequential_batches
from cnnrnn.metrics.single_label import single_label_metrics
from cnnrnn.models.registry import build_model


class BatchSource(Protocol):
    def __len__(self) -> int: ...
    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TaskData:
    train: BatchSource
    val_images: torch.Tensor  # (N, H, W) uint8
    val_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # task-specific, e.g. label frequencies


@dataclass(frozen=True)
class Task:
    name: str
    primary: str  # validation metric that picks best.pt (higher is better)
    image_size: int  # side of the square uint8 inputs `predict` accepts
    prepare: Callable[[TrainConfig, FashionMNIST], TaskData]
    # build(cfg, data, data_dir=..., say=...): data is None when rebuilding a saved run
    build: Callable[..., nn.Module]
    # loss(model, x, y, cfg) -> (loss, number of correct predictions or None)
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, TrainConfig],
                   tuple[torch.Tensor, int | None]]
    # predict(model, x, cfg) -> dict of per-sample tensors (predictions and scores)
    predict: Callable[[nn.Module, torch.Tensor, TrainConfig], dict[str, torch.Tensor]]
    # metrics(outputs, targets, cfg) -> JSON-ready dict including `primary`
    metrics: Callable[[dict[str, torch.Tensor], torch.Tensor, TrainConfig], dict[str, Any]]
    # format_predictions(outputs) -> the JSON `cnnrnn predict` writes (besides "classes")
    format_predictions: Callable[[dict[str, torch.Tensor]], dict[str, Any]]
    # calibrate(model, val_outputs, val_targets) -> outputs: fit a decision rule on validation
    calibrate: Callable[[nn.Module, dict[str, torch.Tensor], torch.Tensor],
                        dict[str, torch.Tensor]] | None = None


# --- single-label ------------------------------------------------------------------------------

def _single_prepare(cfg: TrainConfig, data: FashionMNIST) -> TaskData:
    train_idx, val_idx = train_val_split(len(data.train_images), cfg.val_size)
    if cfg.limit_train:
        train_idx = train_idx[:cfg.limit_train]
    train = IndexedBatches(data.train_images[train_idx], data.train_labels[train_idx],
                           min(cfg.batch_size, len(train_idx)), cfg.seed, augment=cfg.augment,
                           erase=cfg.random_erasing)
    return TaskData(train, data.train_images[val_idx], data.train_labels[val_idx],
                    data.test_images, data.test_labels)


def _single_build(cfg: TrainConfig, data: TaskData | None, **_: Any) -> nn.Module:
    return build_model(cfg.model, cfg.model_args, num_classes=len(CLASSES), task=cfg.task)


def _single_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig
                 ) -> tuple[torch.Tensor, int]:
    logits = model(x)  # (B, 10)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    return loss, int((logits.argmax(1) == y).sum())


def _single_predict(model: nn.Module, x: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    logits = model(x).float()  # (B, 10)
    if cfg.tta_flip:  # test-time augmentation: the mirror image votes too
        logits = (logits + model(x.flip(-1)).float()) / 2
    return {"logits": logits, "probs": logits.softmax(1), "labels": logits.argmax(1)}


def _single_metrics(out: dict[str, torch.Tensor], y: torch.Tensor, cfg: TrainConfig
                    ) -> dict[str, Any]:
    m = single_label_metrics(y.numpy(), out["labels"].numpy(), len(CLASSES), list(CLASSES))
    m["loss"] = float(F.cross_entropy(out["logits"], y))
    return m


def _single_format(out: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"labels": out["labels"].tolist(), "probs": out["probs"].tolist()}


SINGLE_LABEL = Task("single-label", "accuracy", 28, _single_prepare, _single_build, _single_loss,
                    _single_predict, _single_metrics, _single_format)

TASKS: dict[str, Task] = {"single-label": SINGLE_LABEL}


def get_task(name: str) -> Task:
    if name == "multilabel" and name not in TASKS:
        from cnnrnn import multilabel  # noqa: F401 - registers the multilabel task
    return TASKS[name]


@torch.inference_mode()
def run_predict(task: Task, model: nn.Module, images: torch.Tensor, cfg: TrainConfig,
                device: torch.device, autocast_ctx: Callable[[], Any] | None = None
                ) -> dict[str, torch.Tensor]:
    """Run `task.predict` over uint8 images (N, H, W) in batches; outputs on the CPU."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for x in sequential_batches(images, cfg.eval_batch_size):
        if autocast_ctx is not None:
            with autocast_ctx():
                out = task.predict(model, x.to(device), cfg)
        else:
            out = task.predict(model, x.to(device), cfg)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.float().cpu() if v.is_floating_point() else v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}
