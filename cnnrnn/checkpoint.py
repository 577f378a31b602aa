"""Checkpoints: one dict, written atomically, read without executing code.

A checkpoint holds the model and optimizer state, the resolved config (so the architecture comes
from the checkpoint on resume and evaluation), the position in training (epoch, step, step in
epoch), the best validation metric, the metric history and the RNG state.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Any

import torch

from cnnrnn.errors import CheckpointError
from cnnrnn.files import atomic_write

FORMAT = "cnnrnn-checkpoint-v1"
# what torch.save's RuntimeError says when the file could not be written (a full disk)
TORCH_WRITE_FAILED = ("unexpected pos", "file write failed")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file, then rename: a crash never leaves a half-written checkpoint."""

    def write(f: IO[bytes]) -> None:
        try:
            torch.save({"format": FORMAT, **state}, f)
        except RuntimeError as e:
            # a full disk reaches torch's zip writer as a short write, and torch raises
            # "[enforce fail at inline_container.cc:...] . unexpected pos N vs M" (or "file
            # write failed"), not the OSError behind it
            if any(sign in str(e) for sign in TORCH_WRITE_FAILED):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise

    atomic_write(path, write)


def read_torch_file(path: Path, what: str, fix: str) -> Any:
    """torch.load with weights_only=True (no code runs); a bad file is a one-line error."""
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {what} {path} ({type(e).__name__}): the file is "
                              f"corrupt or of another kind; {fix}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a bad file is a one-line CheckpointError."""
    path = Path(path)
    state = read_torch_file(path, "checkpoint", "pass a run folder written by `cnnrnn train` "
                            "(it holds best.pt and last.pt)")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnnrnn checkpoint (format {FORMAT} expected)")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path} does not fit this model ({first}); it was written by "
                              "another model or configuration") from None
