"""What a run logs beside metrics.jsonl, chosen by the config's `log`:

- "csv" (the default): RUN/steps.csv, one row per optimizer step: step, epoch, loss, lr.
- "tensorboard": RUN/tensorboard/, TensorBoard event files through
  `torch.utils.tensorboard.SummaryWriter`: per step the loss and learning rate (train/...),
  per epoch every number of the metrics.jsonl row (epoch/...), at the end the run's PNG
  figures (figures/...) and, for a model with class embeddings (the CNN-RNN's U_l, a
  classifier's last linear layer), those embeddings for the projector, named by class.
  It needs the optional `tensorboard` package: pip install 'cnnrnn[tensorboard]'.

Steps are counted from 1 (the optimizer steps taken), the x-axis of every TensorBoard scalar.
A resumed run logs on from its checkpoint's step: the rows or events a killed run wrote past
it are dropped first, so each step is logged once.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.errors import CnnrnnError, ConfigError
from cnnrnn.files import atomic_write
from cnnrnn.models.embeddings import class_embeddings
from cnnrnn.run_dir import STEPS, TENSORBOARD, RunDir

STEP_COLUMNS = ("step", "epoch", "loss", "lr")


def check_available(log: str) -> None:
    """Refuse `log = "tensorboard"` at the start when its package is missing."""
    if log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log = 'tensorboard' needs the tensorboard package: pip install "
                          "'cnnrnn[tensorboard]' (or use log = 'csv')")


class Tracker:
    """Logs nothing: the ranks other than 0, and the base of the two below."""

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        """After optimizer step `step` (from 1) of epoch `epoch` (from 1)."""

    def epoch(self, row: dict[str, Any]) -> None:
        """After an epoch: its metrics.jsonl row."""

    def finish(self, run: RunDir, model: nn.Module, step: int) -> None:
        """After the run's last figures are drawn."""

    def close(self) -> None:
        pass


class CsvTracker(Tracker):
    """RUN/steps.csv, a row per step, written line by line so a kill loses at most one."""

    def __init__(self, run: RunDir, resume_step: int | None) -> None:
        path = run / STEPS
        if resume_step is not None and path.is_file():
            kept = [row for row in _read_rows(path) if int(row["step"]) <= resume_step]
            atomic_write(path, _csv_text([STEP_COLUMNS, *([r[c] for c in STEP_COLUMNS]
                                                          for r in kept)]))
        else:
            atomic_write(path, _csv_text([STEP_COLUMNS]))
        self._file = open(path, "a", newline="", buffering=1)  # noqa: SIM115 - closed in close
        self._writer = csv.writer(self._file)

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self._writer.writerow((step, epoch, repr(loss), repr(lr)))

    def close(self) -> None:
        self._file.close()


def _csv_text(rows: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _read_rows(path: Path) -> list[dict[str, str]]:
    """steps.csv's whole rows (a row cut short by a kill is dropped)."""
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f)
                if all(row.get(c) not in (None, "") for c in STEP_COLUMNS)]


def read_steps(run: str | Path) -> list[dict[str, float]]:
    """RUN/steps.csv as numbers: step and epoch as int, loss and lr as float."""
    return [{"step": int(r["step"]), "epoch": int(r["epoch"]), "loss": float(r["loss"]),
             "lr": float(r["lr"])} for r in _read_rows(Path(run) / STEPS)]


class TensorBoardTracker(Tracker):
    """RUN/tensorboard/: scalars per step and per epoch, figures and class embeddings."""

    def __init__(self, run: RunDir, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what a killed run logged past its checkpoint
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(run / TENSORBOARD), purge_step=purge)
        self._step = resume_step or 0

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self._writer.add_scalar("train/loss", loss, step)
        self._writer.add_scalar("train/lr", lr, step)
        self._step = step

    def epoch(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                self._writer.add_scalar(f"epoch/{key}", value, row["step"])
        self._writer.flush()

    def finish(self, run: RunDir, model: nn.Module, step: int) -> None:
        from PIL import Image

        for png in sorted(run.path.glob("*.png")):
            with Image.open(png) as im:
                image = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
            self._writer.add_image(f"figures/{png.stem}", image, step, dataformats="HWC")
        try:
            vectors = class_embeddings(model).float().cpu()  # (K, D)
        except CnnrnnError:  # no U_l and no linear head: nothing for the projector
            return
        if len(vectors) == len(CLASSES):
            self._writer.add_embedding(vectors, metadata=list(CLASSES), global_step=step,
                                       tag="class_embeddings")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_tracker(log: str, run: RunDir, resume_step: int | None) -> Tracker:
    """The tracker of config value `log` for the run folder `run`; `resume_step`: the step a
    resumed run goes on from (None for a new run)."""
    check_available(log)
    kinds = {"csv": CsvTracker, "tensorboard": TensorBoardTracker}
    return kinds[log](run, resume_step)
