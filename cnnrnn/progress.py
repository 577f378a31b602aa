"""What a training run shows: the parameter count, a live progress bar, one table row per epoch.

Without a terminal (output to a file or a pipe, a batch job) the bar becomes a plain line every
`plain_every` seconds: step, loss, rate and time left. No line is longer than 80 columns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class Reporter:
    """Prints to stderr through rich; `enabled=False` keeps library calls and tests quiet."""

    def __init__(self, enabled: bool = True, console: Console | None = None,
                 plain_every: float = 10.0):
        self.enabled = enabled
        self.console = console or Console(stderr=True, soft_wrap=True)  # no line is cut
        self.plain_every = plain_every
        self._progress: Progress | None = None
        self._bar: Any = None
        self._plain: dict[str, Any] | None = None

    def start(self, cfg: Any, n_params: int, n_trainable: int, device: torch.device,
              steps_per_epoch: int, resumed_at: tuple[int, int] | None,
              metric_label: str = "val", threads: int | None = None) -> None:
        if not self.enabled:
            return
        c = self.console
        c.print(f"[bold]{cfg.task} / {cfg.model}[/]: {n_params:,} parameters "
                f"({n_trainable:,} trainable)")
        how = " (auto)" if cfg.threads == -1 else " (pinned)" if cfg.threads > 0 else ""
        cpu = "" if threads is None else f", {threads} thread{'s' * (threads != 1)}{how}"
        c.print(f"device {device}, precision {cfg.precision}{cpu}", highlight=False)
        c.print(f"{steps_per_epoch} steps per epoch of batch {cfg.batch_size}")
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
        if not self.console.is_terminal:
            now = time.monotonic()
            self._plain = {"epoch": epoch + 1, "steps": steps, "done": start, "start": start,
                           "t0": now, "last": now}

    def step(self, loss: float, accuracy: float | None) -> None:
        acc = "" if accuracy is None else f" acc {accuracy:.4f}"
        if self._progress is not None:
            self._progress.update(self._bar, advance=1, stats=f"loss {loss:.4f}{acc}")
        p = self._plain
        if p is None:
            return
        p["done"] += 1
        now = time.monotonic()
        if now - p["last"] < self.plain_every or p["done"] == p["steps"]:
            return
        p["last"] = now
        rate = (p["done"] - p["start"]) / max(now - p["t0"], 1e-9)  # steps per second
        left = (p["steps"] - p["done"]) / rate if rate > 0 else float("inf")
        self.console.print(f"epoch {p['epoch']} step {p['done']}/{p['steps']} loss {loss:.4f}"
                           f"{acc} {rate:.1f} steps/s, {_duration(left)} left", highlight=False,
                           soft_wrap=True)

    def _stop_bar(self) -> None:
        self._plain = None
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

    def finish(self, reason: str, out: Path, signal_name: str | None = None) -> None:
        self._stop_bar()
        if not self.enabled:
            return
        if reason == "interrupted":
            by = f" by {signal_name}" if signal_name else ""
            self.console.print(f"interrupted{by}: checkpoint saved; continue with "
                               f"`cnnrnn train --resume {out}`")
        else:
            self.console.print(f"done: run folder {out} (* = new best on validation)")

    def say(self, message: str) -> None:
        if self.enabled:
            self._stop_bar()
            self.console.print(message)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
