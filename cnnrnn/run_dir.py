"""The run folder: the one place that knows its file names, how each is written, and the resume
policy.

    config.toml        the resolved config, written before training starts
    metrics.jsonl      one JSON row per finished epoch
    last.pt, best.pt   checkpoints: every epoch (and on Ctrl-C), and the best on validation
    val_metrics.json   the best checkpoint's validation metrics, at the end
    *.png              figures drawn from the files above by the run's task

Every file is written atomically (`cnnrnn.files.atomic_write`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnrnn.checkpoint import load_checkpoint, save_checkpoint
from cnnrnn.config import TrainConfig, config_from_dict, save_config
from cnnrnn.errors import CheckpointError, CnnrnnError
from cnnrnn.files import atomic_write

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
VAL_METRICS = "val_metrics.json"
LEARNING_CURVE = "learning_curve.png"
CONFUSION_MATRIX = "confusion_matrix.png"
CHECKPOINTS = ("best", "last")
RUN_FILES = (CONFIG, METRICS, LAST, BEST, VAL_METRICS)

# What may change when a run is resumed; every other option must be the run's own.
RESUMABLE = ("epochs", "device", "threads")


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
        save_checkpoint(state, self.checkpoint_path(which))

    def saved_config(self, which: str = "best") -> TrainConfig:
        return config_from_dict(self.load(which)["config"])

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
                for png in self.path.glob("*.png"):
                    png.unlink()
        except OSError as e:
            raise CnnrnnError(f"cannot prepare the run folder {self.path}: "
                              f"{e.strerror or e}") from None

    def resume_config(self, **changes: Any) -> TrainConfig:
        """The config the run was started with (from last.pt), with the options that may change
        on resume (RESUMABLE) set to `changes`; None keeps the run's own."""
        unknown = sorted(set(changes) - set(RESUMABLE))
        if unknown:
            raise CnnrnnError(f"--resume continues with the run's own config; drop "
                              f"{', '.join(unknown)} (only {', '.join(RESUMABLE)} may change)")
        cfg = self.saved_config("last")
        given = {k: v for k, v in changes.items() if v is not None}
        return config_from_dict({**cfg.to_dict(), **given}) if given else cfg

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
