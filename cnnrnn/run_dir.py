"""The run folder: the one place that knows its file names, how each is written, and the resume
policy.

    config.toml        the resolved config, written before training starts
    metrics.jsonl      one JSON row per finished epoch
    last.pt, best.pt   checkpoints: every epoch (and on Ctrl-C), and the best on validation
    val_metrics.json   the best checkpoint's validation metrics, at the end
    steps.csv          one row per optimizer step: step, epoch, loss, lr (config log = "csv")
    tensorboard/       TensorBoard event files instead (log = "tensorboard"; cnnrnn.tracking)
    eval_*.json, .npz  saved evaluations: metrics and per-sample outputs, keyed by checkpoint
                       and options (cnnrnn.evaluate.evaluate_samples)
    *.png, *.pdf, *.svg  figures drawn from the files above by the run's task

Every file is written atomically (`cnnrnn.files.atomic_write`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnnrnn.checkpoint import load_checkpoint, save_checkpoint
from cnnrnn.config import TrainConfig, config_from_dict, save_config
from cnnrnn.errors import CheckpointError, CnnrnnError, DiskFullError
from cnnrnn.files import atomic_write
from cnnrnn.threads import cpu_model

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
VAL_METRICS = "val_metrics.json"
ENVIRONMENT = "environment.json"  # one entry per start or resume: versions, machine, command
STEPS = "steps.csv"
TENSORBOARD = "tensorboard"
LEARNING_CURVE = "learning_curve.png"
CONFUSION_MATRIX = "confusion_matrix.png"
CHECKPOINTS = ("best", "last")
RUN_FILES = (CONFIG, METRICS, LAST, BEST, VAL_METRICS, ENVIRONMENT, STEPS)

# What may change when a run is resumed; every other option must be the run's own.
RESUMABLE = ("epochs", "device", "threads", "checkpoint_minutes")
LOCK = ".lock"  # held by the training that writes the folder


class RunDir:
    """A run folder written by `cnnrnn train` (or to be written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---- checkpoints ---------------------------------------------------------------------

    def checkpoint_path(self, which: str = "best") -> Path:
        if which not in CHECKPOINTS:
            raise CnnrnnError(f"unknown checkpoint {which!r}; choose best or last")
        return self.path / f"{which}.pt"

    def load(self, which: str = "best") -> dict[str, Any]:
        """A checkpoint of this run, read without executing code."""
        if not self.path.is_dir():
            raise CnnrnnError(f"run folder {self.path} not found; pass a folder written by "
                              "`cnnrnn train`")
        return load_checkpoint(self.checkpoint_path(which))

    def save(self, state: dict[str, Any], which: str) -> None:
        """Write checkpoint `which`; a full disk keeps the one before and says how to go on."""
        try:
            save_checkpoint(state, self.checkpoint_path(which))
        except DiskFullError:
            if (self.path / LAST).is_file():
                kept = f"the {LAST} saved before is kept"
                then = f"continue with `cnnrnn train --resume {self.path}`"
            else:
                kept = "it has no checkpoint yet"
                then = (f"start it again with `cnnrnn train --overwrite --out {self.path}` and "
                        "the same options")
            raise DiskFullError(f"the disk of run folder {self.path} is full: {which}.pt was "
                                f"not written and {kept}; free some space, then {then}"
                                ) from None

    # ---- text files ----------------------------------------------------------------------

    def write_config(self, cfg: TrainConfig) -> None:
        save_config(cfg, self.path / CONFIG)

    def read_history(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self.path / METRICS, "".join(json.dumps(row) + "\n" for row in rows))

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write(self.path / name, json.dumps(obj, indent=1))
        return self.path / name

    def read_json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def record_environment(self, cfg: TrainConfig, resumed: bool, processes: int = 1) -> None:
        """Append this session's software, machine and command line to environment.json, and
        how many processes (torchrun's ranks) train: per-rank dropout streams and batch-norm
        statistics make the numbers depend on it."""
        sessions = self.read_json(ENVIRONMENT) or []
        sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": resumed,
                         "processes": processes, **environment(cfg)})
        self.write_json(ENVIRONMENT, sessions)

    # ---- starting and resuming -----------------------------------------------------------

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def check_free(self, overwrite: bool = False) -> None:
        """Refuse to start a new run here if the folder holds one (unless `overwrite`)."""
        if self.path.exists() and not self.path.is_dir():
            raise CnnrnnError(f"--out {self.path} is a file; give a folder for the run")
        if not self.holds_run() or overwrite:
            return
        if (self.path / LAST).exists():
            raise CnnrnnError(f"{self.path} already holds a run; continue it with --resume "
                              f"{self.path}, start afresh with --overwrite, or choose another "
                              "--out")
        raise CnnrnnError(f"{self.path} already holds a run that saved no checkpoint yet (it "
                          "stopped in its first epoch); start it again with --overwrite or "
                          "choose another --out")

    def start(self, overwrite: bool = False) -> None:
        """Make the folder for a new run; with `overwrite`, remove the files of the old one."""
        self.check_free(overwrite)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if overwrite:
                for name in RUN_FILES:
                    (self.path / name).unlink(missing_ok=True)
                shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)
                for figure in (*self.path.glob("*.png"), *self.path.glob("*.pdf"),
                               *self.path.glob("*.svg")):
                    figure.unlink()
        except OSError as e:
            raise CnnrnnError(f"cannot prepare the run folder {self.path}: "
                              f"{e.strerror or e}") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock while training into it; a second training is refused at once.

        An advisory lock (flock) on `.lock`: the system drops it when the process ends however
        it ends, so a lock left by a killed process never blocks the next run.
        """
        if self.path.exists() and not self.path.is_dir():
            raise CnnrnnError(f"--out {self.path} is a file; give a folder for the run")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path / LOCK, "a+")  # noqa: SIM115 - held until the block ends
        except OSError as e:
            raise CnnrnnError(f"cannot write to the run folder {self.path}: "
                              f"{e.strerror or e}") from None
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise CnnrnnError(f"another training ({holder}) is writing to {self.path}; "
                                  "wait for it to finish or choose another --out") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
            f.flush()
            yield
        finally:
            f.close()  # releases the lock

    def resume_config(self, **changes: Any) -> TrainConfig:
        """The config the run was started with (from last.pt), with the options that may change
        on resume (RESUMABLE) set to `changes`; None keeps the run's own."""
        return self.resume_point(**changes)[0]

    def resume_point(self, **changes: Any) -> tuple[TrainConfig, int, int]:
        """`resume_config`, and where last.pt stopped: (config, epoch, step in that epoch)."""
        unknown = sorted(set(changes) - set(RESUMABLE))
        if unknown:
            raise CnnrnnError(f"--resume continues with the run's own config; drop "
                              f"{', '.join(unknown)} (only {', '.join(RESUMABLE)} may change)")
        if (self.path / CONFIG).is_file() and not (self.path / LAST).exists():
            raise CheckpointError(f"{self.path} stopped before its first checkpoint (it has no "
                                  f"{LAST}), so there is nothing to resume; start it again with "
                                  f"`cnnrnn train --overwrite --out {self.path}` and the same "
                                  "options, or choose a new --out")
        state = self.load("last")
        cfg = config_from_dict(state["config"])
        epochs = changes.get("epochs")
        if epochs is not None and epochs < state["epoch"]:
            raise CnnrnnError(f"{self.path} has done {state['epoch']} epochs; --epochs must be "
                              f"at least {state['epoch']} to resume it")
        given = {k: v for k, v in changes.items() if v is not None}
        cfg = config_from_dict({**cfg.to_dict(), **given}) if given else cfg
        return cfg, state["epoch"], state["step_in_epoch"]

    def finished(self, cfg: TrainConfig, epoch: int, step_in_epoch: int) -> bool:
        """Whether resuming at (epoch, step_in_epoch) would have nothing left to do: every
        epoch of `cfg` done and the run's final files written."""
        return (epoch >= cfg.epochs and not step_in_epoch
                and (self.path / VAL_METRICS).is_file())

    def check_resumable(self, cfg: TrainConfig) -> dict[str, Any]:
        """last.pt, after checking that `cfg` differs from its config only where it may."""
        state = self.load("last")
        saved = config_from_dict(state["config"])
        free = dict.fromkeys(RESUMABLE)
        if {**saved.to_dict(), **free} != {**cfg.to_dict(), **free}:
            raise CheckpointError(f"{self.path / LAST} was trained with another config; resume "
                                  f"with the same options (only {', '.join(RESUMABLE)} may "
                                  "change)")
        return state


def _git_commit() -> str | None:
    """The commit of the checkout this package runs from, '+dirty' if it has changes; None for
    an installed package or without git."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def environment(cfg: TrainConfig) -> dict[str, Any]:
    """What a run's numbers depend on besides its config."""
    import torch

    from cnnrnn.version import __version__

    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {"cnnrnn": __version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpus": gpus,
            "threads": torch.get_num_threads(), "device": cfg.device,
            "command": sys.argv}
