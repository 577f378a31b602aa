"""What a task is: everything that differs between single-label and multilabel training.

A task picks its data, builds its model and criterion, says what the model is called with,
predicts, calibrates, scores, and names its metrics, its evaluation options and its figures.
The training loop, evaluation and the CLI ask the task and never branch on its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from cnnrnn.config import TrainConfig
from cnnrnn.data.fashion_mnist import FashionMNIST
from cnnrnn.data.loader import sequential_batches
from cnnrnn.plots import plot_learning_curve, run_title
from cnnrnn.run_dir import LEARNING_CURVE, RunDir


class BatchSource(Protocol):
    def __len__(self) -> int: ...
    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def to(self, device: torch.device) -> BatchSource: ...  # its data held on `device`


@dataclass
class TaskData:
    train: BatchSource
    val_images: torch.Tensor  # (N, H, W) uint8
    val_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # task-specific, e.g. label frequencies


@dataclass(frozen=True)
class EvalOption:
    """An evaluation option of a task (`cnnrnn evaluate --beam-width`): the config key it
    overrides and the models it applies to (empty: all of the task's models)."""

    key: str  # e.g. "multilabel.beam_width"
    flag: str  # as the user typed it, for messages
    models: tuple[str, ...] = ()


class Task:
    """The interface every task implements; see SingleLabel and Multilabel."""

    name: str
    primary: str  # validation metric that picks best.pt (higher is better)
    metric_label: str  # the epoch table's heading for it, e.g. "val acc"
    image_size: int  # side of the square uint8 inputs `predict` accepts
    summary_keys: tuple[str, ...]  # metrics printed by `cnnrnn evaluate`
    eval_options: dict[str, EvalOption] = {}
    pretrained_encoder: bool = False  # its models start from an encoder prepared beforehand

    # ---- data and model ------------------------------------------------------------------

    def prepare(self, cfg: TrainConfig, data: FashionMNIST) -> TaskData:
        raise NotImplementedError

    def build(self, cfg: TrainConfig, data: TaskData | None) -> nn.Module:
        """The model; with `data` None a bare one whose weights a checkpoint will bring."""
        raise NotImplementedError

    def criterion(self, cfg: TrainConfig) -> nn.Module:
        """criterion(model(*model_inputs(x, y)), y) -> the scalar training loss."""
        raise NotImplementedError

    def model_inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the model is called with in a training step."""
        return (x,)

    def validation_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                        cfg: TrainConfig, device: torch.device,
                        autocast_ctx: Callable[[], Any] | None = None) -> float | None:
        """The training loss on validation data, for a task whose `metrics` do not give it
        ("loss"); None by default (single-label's metrics compute it from the logits)."""
        return None

    def count_correct(self, outputs: Any, y: torch.Tensor) -> int | None:
        """Correct predictions in a training batch, for the running accuracy; None if the task
        has no such count."""
        return None

    # ---- prediction and scoring ----------------------------------------------------------

    def predict(self, model: nn.Module, x: torch.Tensor, cfg: TrainConfig
                ) -> dict[str, torch.Tensor]:
        """Per-sample predictions and scores for a batch of model inputs."""
        raise NotImplementedError

    def calibrate(self, model: nn.Module, outputs: dict[str, torch.Tensor],
                  targets: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """Fit a decision rule on validation outputs (stored in the model); default: none."""
        return outputs

    def metrics(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
                cfg: TrainConfig) -> dict[str, Any]:
        """JSON-ready metrics, `primary` among them."""
        raise NotImplementedError

    def format_predictions(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The JSON `cnnrnn predict` writes (besides "classes")."""
        raise NotImplementedError

    # ---- evaluation options and reports --------------------------------------------------

    def with_options(self, cfg: TrainConfig, options: dict[str, Any]) -> TrainConfig:
        """`cfg` with evaluation options of this task applied (None keeps the run's own)."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in options.items():
            if value is not None:
                table, key = self.eval_options[name].key.split(".")
                changes.setdefault(table, {})[key] = value
        if not changes:
            return cfg
        return dataclasses.replace(cfg, **{table: dataclasses.replace(getattr(cfg, table), **kv)
                                           for table, kv in changes.items()}).validate()

    def takes_option(self, name: str, model: str) -> bool:
        option = self.eval_options.get(name)
        return option is not None and (not option.models or model in option.models)

    def describe(self, cfg: TrainConfig) -> dict[str, Any]:
        """The decoding options an evaluation ran with, for its JSON."""
        out = {}
        for name, option in self.eval_options.items():
            if not option.models or cfg.model in option.models:
                table, key = option.key.split(".")
                out[name] = getattr(getattr(cfg, table), key)
        return out

    def format_value(self, key: str, value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    def per_class_rows(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        """(class, value) rows printed under the summary; none by default."""
        return []

    def plot_run(self, run: RunDir, history: list[dict[str, Any]],
                 val_metrics: dict[str, Any], cfg: TrainConfig) -> None:
        """The figures of a finished run, from its saved history and validation metrics; their
        titles name the run folder and `cfg.model`."""
        plot_learning_curve(history, run / LEARNING_CURVE, self.primary,
                            title=run_title(run.path.resolve().name, cfg.model))

    def plot_evaluation(self, result: dict[str, Any], run: RunDir, fmt: str = "png"
                        ) -> list[Path]:
        """Figures of one evaluation (e.g. a confusion matrix) in format `fmt` (png, pdf or
        svg), written into the run folder; none by default."""
        return []


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
