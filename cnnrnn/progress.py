"""What a training run shows: the parameter count, a live progress bar, one table row per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class Reporter:
    """Prints to stderr through rich; `enabled=False` keeps library calls and tests quiet."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._bar: Any = None

    def start(self, cfg: Any, n_params: int, n_trainable: int, device: torch.device,
              steps_per_epoch: int, resumed_at: tuple[int, int] | None,
              metric_label: str = "val") -> None:
        if not self.enabled:
            return
        c = self.console
        c.print(f"[bold]{cfg.task} / {cfg.model}[/]: {n_params:,} parameters "
                f"({n_trainable:,} trainable), device {device}, precision {cfg.precision}, "
                f"{steps_per_epoch} steps per epoch of batch {cfg.batch_size}")
        if resumed_at:
            c.print(f"resuming at epoch {resumed_at[0] + 1}, step {resumed_at[1]} of the epoch")
        c.print(f"{'epoch':>5} {'iteration':>9} {'loss':>8} {metric_label:>8} {'ms/step':>8}")

    def epoch_start(self, epoch: int, steps: int, start: int) -> None:
        if not self.enabled:
            return
        self._progress = Progress(TextColumn(f"epoch {epoch + 1}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                  TimeRemainingColumn(), console=self.console, transient=True,
                                  disable=not self.console.is_terminal)
        self._progress.start()
        self._bar = self._progress.add_task("train", total=steps, completed=start, stats="")

    def step(self, loss: float, accuracy: float | None) -> None:
        if self._progress is not None:
            acc = "" if accuracy is None else f" acc {accuracy:.4f}"
            self._progress.update(self._bar, advance=1, stats=f"loss {loss:.4f}{acc}")

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def epoch_end(self, row: dict[str, Any], primary: str, improved: bool) -> None:
        self._stop_bar()
        if not self.enabled:
            return
        star = " *" if improved else ""
        self.console.print(f"{row['epoch']:>5} {row['step']:>9} {row['train_loss']:>8.4f} "
                           f"{row['val_' + primary]:>8.4f} {row['ms_per_step']:>8.1f}{star}",
                           highlight=False)

    def finish(self, reason: str, out: Path) -> None:
        self._stop_bar()
        if not self.enabled:
            return
        if reason == "interrupted":
            self.console.print(f"interrupted: checkpoint saved; continue with "
                               f"`cnnrnn train --resume {out}`")
        else:
            self.console.print(f"done: run folder {out} (* = new best on validation)")

    def say(self, message: str) -> None:
        if self.enabled:
            self._stop_bar()
            self.console.print(message)
