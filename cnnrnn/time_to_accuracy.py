"""`cnnrnn bench --time-to-accuracy`: wall time until a model first reaches a validation
accuracy, trained cnnrnn's way against the plain PyTorch way.

- cnnrnn's way: `cnnrnn.train.train` on the shipped recipe (its optimizer, schedule over the
  recipe's epochs, augmentation, bf16 autocast, channels_last, in-memory uint8 batches), stopped
  at the end of the first epoch whose validation accuracy reaches the target: what `cnnrnn
  train` does, Ctrl-C'd at that moment.
- The plain way, as the tutorials write it: torchvision's `FashionMNIST` with `ToTensor`, a
  shuffled `DataLoader` (batch 128, the main process), the same architecture with fresh
  weights, `CrossEntropyLoss`, Adam at lr 1e-3, fp32, no schedule, no augmentation; validated
  after each epoch.

Both validate after every epoch on the same 5,000 training images cnnrnn holds out
(`train_val_split`), and train on the other 55,000. The clock runs from just before the
dataset is opened to the end of the validation that reached the target, so it counts data
loading, every epoch's training and every validation. An epoch's end is the only moment
either is checked, so the times are in whole epochs. A side that has not reached the target
by `max_epochs` (or `max_minutes`) is reported as not reached, with its best accuracy.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from cnnrnn.bench import plain_fashion_mnist, plain_loader, torchvision_root
from cnnrnn.config import TrainConfig, load_config
from cnnrnn.data.fashion_mnist import train_val_split
from cnnrnn.errors import CnnrnnError
from cnnrnn.progress import Reporter
from cnnrnn.tasks import get_task
from cnnrnn.threads import cpu_model
from cnnrnn.train import train

# model -> (its recipe's overrides, the validation accuracy to reach): the pair, the
# one-direction LSTM (the seed essay's) at 90 % and the vgg16 recipe at 93 %.
TARGETS: dict[str, tuple[dict[str, Any], float]] = {
    "lstm": ({"model.bidirectional": False}, 0.90),
    "vgg16": ({}, 0.93),
}
PLAIN_LR = 1e-3
BATCH = 128


@dataclass
class Race:
    """One side's progress: the wall time and validation accuracy at each epoch's end."""

    target: float
    max_epochs: int
    deadline: float  # time.perf_counter() after which the side stops
    start: float = field(default_factory=time.perf_counter)
    epochs: list[dict[str, float]] = field(default_factory=list)

    def record(self, accuracy: float) -> bool:
        """Note an epoch's end; True when the side should stop (reached, or out of time)."""
        now = time.perf_counter()
        self.epochs.append({"epoch": len(self.epochs) + 1, "seconds": now - self.start,
                            "val_accuracy": accuracy})
        return (accuracy >= self.target or len(self.epochs) >= self.max_epochs
                or now >= self.deadline)

    def summary(self) -> dict[str, Any]:
        reached = next((e for e in self.epochs if e["val_accuracy"] >= self.target), None)
        return {"reached": reached is not None,
                "seconds": reached["seconds"] if reached else None,
                "epochs": reached["epoch"] if reached else None,
                "best_val_accuracy": max((e["val_accuracy"] for e in self.epochs), default=None),
                "epochs_run": len(self.epochs),
                "seconds_run": self.epochs[-1]["seconds"] if self.epochs else 0.0,
                "history": self.epochs}


class _StopAtTarget(Reporter):
    """Ends a `cnnrnn.train` run the way Ctrl-C does, after the epoch that reaches the target."""

    def __init__(self, race: Race) -> None:
        super().__init__(enabled=False)
        self.race = race

    def epoch_end(self, row: dict[str, Any], primary: str, improved: bool) -> None:
        if self.race.record(float(row["val_accuracy"])):
            signal.raise_signal(signal.SIGINT)  # train() stops after this epoch, files intact


def cnnrnn_race(cfg: TrainConfig, race: Race, data_dir: str | Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cnnrnn-tta-") as tmp:
        race.start = time.perf_counter()
        train(cfg, Path(tmp) / "run", data_dir=data_dir, reporter=_StopAtTarget(race))
    return race.summary()


@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = seen = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    model.train()
    return correct / seen


def plain_race(cfg: TrainConfig, race: Race, data_dir: str | Path | None,
               limit: int = 0) -> dict[str, Any]:
    """The tutorials' loop (see the module doc) on the recipe's architecture."""
    race.start = time.perf_counter()  # before the files are unpacked, as cnnrnn reads its own
    with torchvision_root(data_dir) as root:
        dataset = plain_fashion_mnist(root)
        train_idx, val_idx = train_val_split(len(dataset), cfg.val_size)
        if limit:
            train_idx = train_idx[:limit]
        train_loader = plain_loader(Subset(dataset, train_idx.tolist()), BATCH)
        val_loader = DataLoader(Subset(dataset, val_idx.tolist()), batch_size=1000)
        torch.manual_seed(cfg.seed)
        model = get_task(cfg.task).build(cfg, None).train()
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.Adam(model.parameters(), lr=PLAIN_LR)
        while True:
            for x, y in train_loader:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            if race.record(_accuracy(model, val_loader)):
                break
    return race.summary()


def recipe(name: str, overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, float]:
    """The shipped recipe of `name` as the race trains it, and its target accuracy."""
    if name not in TARGETS:
        raise CnnrnnError(f"no time-to-accuracy target for {name!r}; choose from "
                          f"{', '.join(TARGETS)}")
    recipe_overrides, target = TARGETS[name]
    cfg = load_config("single-label", name, overrides={**recipe_overrides, "batch_size": BATCH,
                                                       **(overrides or {})})
    return cfg, target


def run_time_to_accuracy(names: list[str], data_dir: str | Path | None = None,
                         max_minutes: float = 60.0, max_epochs: int = 0,
                         target: float | None = None, limit: int = 0, threads: int = 0,
                         say: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Both races for each model, one after the other (never side by side); JSON-ready.

    max_minutes / max_epochs bound each side (max_epochs 0: the recipe's epochs); `target`
    replaces the models' own; `limit` trains on that many images (tests).
    """
    if max_minutes <= 0:
        raise CnnrnnError(f"--max-minutes must be > 0, got {max_minutes}")
    if target is not None and not 0.0 < target <= 1.0:
        raise CnnrnnError(f"--target is a validation accuracy in (0, 1], got {target}")
    if threads < 0:
        raise CnnrnnError(f"--threads must be 0 (torch's default) or more, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "max_minutes": max_minutes,
                           "models": {}}
    for name in names:
        overrides = {"limit_train": limit} if limit else {}
        cfg, own_target = recipe(name, overrides)
        goal = own_target if target is None else target
        epochs = max_epochs or cfg.epochs
        say(f"{name}: cnnrnn's recipe until {100 * goal:g} % validation accuracy")
        ours = cnnrnn_race(cfg, Race(goal, epochs, time.perf_counter() + 60 * max_minutes),
                           data_dir)
        say(f"{name}: the plain way until {100 * goal:g} % validation accuracy")
        theirs = plain_race(cfg, Race(goal, epochs, time.perf_counter() + 60 * max_minutes),
                            data_dir, limit)
        both = ours["reached"] and theirs["reached"]
        out["models"][name] = {
            "target": goal, "max_epochs": epochs, "cnnrnn": ours, "plain": theirs,
            "cnnrnn_recipe": {"optimizer": cfg.optimizer, "lr": cfg.lr,
                              "schedule": cfg.schedule, "epochs": cfg.epochs,
                              "precision": cfg.precision, "augment": cfg.single_label.augment},
            "plain_recipe": {"optimizer": "adam", "lr": PLAIN_LR, "precision": "fp32"},
            "speedup": theirs["seconds"] / ours["seconds"] if both else None}
    return out


def format_time_to_accuracy(result: dict[str, Any]) -> str:
    def cell(side: dict[str, Any]) -> str:
        if side["reached"]:
            return f"{side['seconds'] / 60:.1f} min ({side['epochs']} ep)"
        return (f"not reached in {side['epochs_run']} ep, {side['seconds_run'] / 60:.1f} min "
                f"(best {100 * side['best_val_accuracy']:.2f} %)")

    lines = [f"CPU {result['cpu']}, {result['threads']} threads, torch {result['torch']}",
             "| model | target | cnnrnn | plain | plain / cnnrnn |", "|---|---:|---:|---:|---:|"]
    for name, m in result["models"].items():
        speedup = f"{m['speedup']:.2f}x" if m["speedup"] else "-"
        lines.append(f"| {name} | {100 * m['target']:g} % | {cell(m['cnnrnn'])} | "
                     f"{cell(m['plain'])} | {speedup} |")
    return "\n".join(lines) + "\n"
