"""A whole training as one call: what `cnnrnn train` does, for a notebook or a script.

    from cnnrnn.config import load_config
    from cnnrnn.launch import launch

    cfg = load_config("single-label", "cnn", None, {"epochs": 1})
    summary = launch(cfg, "runs/cnn")            # a new run
    summary = launch(resume="runs/cnn", changes={"epochs": 3})   # two more epochs of it

`launch` owns what surrounds `cnnrnn.train.train`: the resume policy (only the RESUMABLE
options may change; a finished run trains nothing), the process group's lifetime (under
torchrun every rank calls it alike), a multilabel encoder found or pretrained once on rank 0
(`cnnrnn.encoders.prepare`) and a Ctrl-C during that pretraining. User mistakes raise
`CnnrnnError` with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from cnnrnn.config import TrainConfig
from cnnrnn.distributed import World
from cnnrnn.encoders import Interrupted, prepare
from cnnrnn.errors import CnnrnnError
from cnnrnn.precision import resolve_device
from cnnrnn.progress import Reporter
from cnnrnn.run_dir import RESUMABLE, RunDir
from cnnrnn.tracking import check_available
from cnnrnn.train import train


@contextlib.contextmanager
def alike_on_every_rank() -> Iterator[None]:
    """A user error raised inside is one every rank raises alike (the same command line, the
    same files), so under torchrun rank 0 alone prints it."""
    try:
        yield
    except CnnrnnError as e:
        e.every_rank = True
        raise


def default_out(cfg: TrainConfig) -> Path:
    """runs/<model>-<time>: a new run's folder when none is given."""
    return Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def launch(cfg: TrainConfig | None = None, out: str | Path | None = None, *,
           resume: str | Path | None = None, changes: Mapping[str, Any] | None = None,
           overwrite: bool = False, data_dir: str | Path | None = None, quiet: bool = False,
           explicit: Collection[str] = ()) -> dict[str, Any]:
    """Train `cfg` into the run folder `out` (default runs/<model>-<time>), or continue the
    run in `resume` with its own config, where `changes` may set the RESUMABLE options
    (epochs, device, threads, checkpoint_minutes).

    `overwrite`: start afresh in an `out` that holds a run. `quiet`: no progress output.
    `explicit`: the config keys the user set, which a multilabel run's encoder may not
    contradict (`cnnrnn.encoders.prepare`). Returns `cnnrnn.train.train`'s summary (`stop`,
    `best_metric`, `best_epoch`, `history`, `out`, ...); `stop` is "finished", "interrupted"
    (Ctrl-C or SIGTERM; last.pt holds the exact position) or "already finished" (a resumed run
    with no epoch left: nothing was trained).
    """
    world = World.from_env()  # the processes torchrun started, or this one
    reporter = Reporter(enabled=not quiet and world.is_main)
    with alike_on_every_rank():  # the same arguments and files: every rank fails alike
        if resume is not None:
            if cfg is not None or out is not None or overwrite:
                raise CnnrnnError("a resumed run continues with its own config and folder; "
                                  "give resume alone (and changes to "
                                  f"{', '.join(RESUMABLE)})")
            cfg, done, step = RunDir(resume).resume_point(**dict(changes or {}))
            if RunDir(resume).finished(cfg, done, step):
                if world.is_main:
                    print(f"{resume} is finished ({done} of {cfg.epochs} epochs done), so "
                          f"nothing was trained; to train it further, give it more epochs: "
                          f"cnnrnn train --resume {resume} --epochs M, with M above {done}",
                          file=sys.stderr)
                return {"stop": "already finished", "out": str(resume)}
            out = resume
        elif cfg is None:
            raise CnnrnnError("give a config to train (cnnrnn.config.load_config) or a run "
                              "folder to resume")
        elif changes:
            raise CnnrnnError("changes are for a resumed run; set the options in the config")
        else:
            # under torchrun every rank must write to the same folder: rank 0 names it
            out = out or default_out(cfg)
        check_available(cfg.log)  # before any folder is made or encoder pretrained

    def ready() -> tuple[TrainConfig, Path]:
        RunDir(out).check_free(overwrite)  # refuse a taken folder before any pretraining
        return prepare(cfg, explicit=explicit, data_dir=data_dir, reporter=reporter), out

    # every way out leaves the process group: a process that exits inside one aborts
    # ("terminate called without an active exception") instead of giving its exit status
    try:
        if resume is None:
            world.init(resolve_device(cfg.device))
            try:
                cfg, out = world.on_main(ready)  # the encoder is pretrained once, on rank 0
            except Interrupted as e:  # on every rank; rank 0 says so
                if world.is_main:
                    print(f"interrupted: {e}", file=sys.stderr)
                return {"stop": "interrupted", "out": str(out)}
        return train(cfg, out, resume=resume is not None, overwrite=overwrite,
                     data_dir=data_dir, reporter=reporter, world=world)
    finally:
        world.close()
