"""The single-label task: one of ten Fashion-MNIST classes per 28x28 image."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnrnn.config import TrainConfig
from cnnrnn.costs import load_costs
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST, train_val_split
from cnnrnn.data.loader import IndexedBatches
from cnnrnn.losses import CrossEntropy, ExpectedCost, HierarchicalCrossEntropy, SoftLabels
from cnnrnn.metrics.severity import severity_metrics
from cnnrnn.metrics.single_label import single_label_metrics
from cnnrnn.models.registry import get_entry
from cnnrnn.plots import check_format, plot_confusion_matrix, run_title
from cnnrnn.run_dir import CONFUSION_MATRIX, RunDir
from cnnrnn.tasks.base import EvalOption, Task, TaskData
from cnnrnn.trees import class_tree


@functools.lru_cache(maxsize=8)
def cost_tensor(spec: str) -> torch.Tensor:
    """The cost matrix `spec` names (cnnrnn.costs.load_costs), read once, as float32 (K, K)."""
    return torch.from_numpy(load_costs(spec)).float()


class SingleLabel(Task):
    name = "single-label"
    primary = "accuracy"
    metric_label = "val acc"
    image_size = 28
    summary_keys = ("accuracy", "ece", "mistake_severity", "hdist@1", "hdist@3", "hdist@5")
    eval_options = {"tta_flip": EvalOption("single_label.tta_flip", "--tta"),
                    "decision": EvalOption("single_label.decision", "--decision"),
                    "costs": EvalOption("single_label.costs", "--costs")}

    def prepare(self, cfg: TrainConfig, data: FashionMNIST) -> TaskData:
        opts = cfg.single_label
        train_idx, val_idx = train_val_split(len(data.train_images), cfg.val_size)
        if cfg.limit_train:
            train_idx = train_idx[:cfg.limit_train]
        train = IndexedBatches(data.train_images[train_idx], data.train_labels[train_idx],
                               min(cfg.batch_size, len(train_idx)), cfg.seed,
                               augment=opts.augment, erase=opts.random_erasing)
        return TaskData(train, data.train_images[val_idx], data.train_labels[val_idx],
                        data.test_images, data.test_labels)

    def build(self, cfg: TrainConfig, data: TaskData | None) -> nn.Module:
        return get_entry(cfg.model, self.name).build(cfg.model_args, len(CLASSES))

    def criterion(self, cfg: TrainConfig) -> nn.Module:
        opts = cfg.single_label
        if opts.loss == "soft-labels":
            return SoftLabels(cost_tensor(opts.costs), opts.beta)
        if opts.loss == "expected-cost":
            return ExpectedCost(cost_tensor(opts.costs), opts.cost_weight, opts.label_smoothing)
        if opts.loss == "hxe":  # the tree: the hierarchy, or the clustering of the cost file
            return HierarchicalCrossEntropy(class_tree(opts.costs), opts.alpha)
        return CrossEntropy(opts.label_smoothing)

    def count_correct(self, outputs: torch.Tensor, y: torch.Tensor) -> int:
        return int((outputs.argmax(1) == y).sum())

    def predict(self, model: nn.Module, x: torch.Tensor, cfg: TrainConfig
                ) -> dict[str, torch.Tensor]:
        logits = model(x).float()  # (B, 10)
        if cfg.single_label.tta_flip:  # test-time augmentation: the mirror image votes too
            logits = (logits + model(x.flip(-1)).float()) / 2
        probs = logits.softmax(1)
        if cfg.single_label.decision == "crm":
            # conditional risk minimisation (Karthik et al. 2021): the least expected cost
            # argmin_j sum_i p_i C[i, j]; the metrics rank by the same costs (hdist@k)
            expected = probs @ cost_tensor(cfg.single_label.costs).to(probs.device)  # (B, 10)
            return {"logits": logits, "probs": probs, "labels": expected.argmin(1),
                    "expected_cost": expected}
        return {"logits": logits, "probs": probs, "labels": logits.argmax(1)}

    def metrics(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
                cfg: TrainConfig) -> dict[str, Any]:
        m = single_label_metrics(targets.numpy(), outputs["labels"].numpy(), len(CLASSES),
                                 list(CLASSES), outputs["probs"].numpy())
        m["loss"] = float(F.cross_entropy(outputs["logits"], targets))
        if cfg.single_label.costs:
            expected = outputs.get("expected_cost")
            m.update(severity_metrics(targets.numpy(), outputs["labels"].numpy(),
                                      outputs["probs"].numpy(),
                                      cost_tensor(cfg.single_label.costs).numpy(),
                                      list(CLASSES), cfg.single_label.decision,
                                      None if expected is None else expected.numpy()))
            m["costs"] = cfg.single_label.costs
        return m

    def format_predictions(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"labels": outputs["labels"].tolist(), "probs": outputs["probs"].tolist()}

    def format_value(self, key: str, value: Any) -> str:
        if key != "accuracy":
            return super().format_value(key, value)
        return "-" if value is None else f"{100 * value:.2f} %"

    def per_class_rows(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        return [(name, self.format_value("accuracy", acc))
                for name, acc in zip(CLASSES, result["per_class_accuracy"], strict=True)]

    def plot_run(self, run: RunDir, history: list[dict[str, Any]],
                 val_metrics: dict[str, Any], cfg: TrainConfig) -> None:
        super().plot_run(run, history, val_metrics, cfg)
        plot_confusion_matrix(np.array(val_metrics["confusion_matrix"]), CLASSES,
                              run / CONFUSION_MATRIX,
                              f"{run_title(run.path.resolve().name, cfg.model)}: "
                              "validation confusion matrix")

    def plot_evaluation(self, result: dict[str, Any], run: RunDir, fmt: str = "png"
                        ) -> list[Path]:
        split = {"val": "validation"}.get(result["split"], result["split"])
        out = run / f"confusion_matrix_{result['split']}.{check_format(fmt)}"
        plot_confusion_matrix(np.array(result["confusion_matrix"]), CLASSES, out,
                              f"{run_title(run.path.resolve().name, result['model'])}: "
                              f"{split} confusion matrix")
        return [out]
