"""The training loop: explicit, resumable, interruptible.

Run folder: config.toml (written before training starts), metrics.jsonl (one row per epoch),
last.pt (every epoch and on Ctrl-C), best.pt (best validation metric), learning_curve.png and
confusion_matrix.png / metric plots (drawn from the saved run at the end).

Repeatability: the data order and augmentation are pure functions of (seed, epoch, batch), the
global RNG (dropout) is reseeded from (seed, epoch) at each epoch start and saved on interrupt,
and the learning rate is a pure function of the step. On a CPU, a seeded run repeats bit for bit,
and so does a run resumed from any checkpoint. On GPUs, cuDNN's nondeterministic kernels (and
bf16/fp16 reductions) can make runs differ in the last bits.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnrnn.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from cnnrnn.config import TrainConfig, config_from_dict, save_config
from cnnrnn.data.fashion_mnist import load_fashion_mnist
from cnnrnn.data.loader import mix_seed
from cnnrnn.errors import CheckpointError, CnnrnnError
from cnnrnn.models.registry import count_parameters
from cnnrnn.precision import autocast, resolve_device
from cnnrnn.progress import Reporter
from cnnrnn.tasks import Task, TaskData, get_task, run_predict


class TrainingDiverged(CnnrnnError):
    """The loss became NaN or infinite."""


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate at `step` (0-based): linear warm-up, then the schedule. Pure function."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":  # x0.1 at 50 % and 75 % of training
        return cfg.lr * 0.1 ** sum(step >= f * total_steps for f in (0.5, 0.75))
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # cosine to 0


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kinds = {
        "adam": lambda: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        "adamw": lambda: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                       weight_decay=cfg.weight_decay),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay),
    }
    return kinds[cfg.optimizer]()


@dataclass
class RunState:
    epoch: int = 0  # epochs completed (or the epoch in progress, with step_in_epoch > 0)
    step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, Any]] | None = None
    rng: torch.Tensor | None = None  # global RNG state when stopped mid-epoch
    partial: dict[str, Any] | None = None  # running sums of the epoch stopped in the middle


class _StopFlag:
    """The first Ctrl-C asks the loop to stop at the next step boundary; a second one kills."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopFlag:
        self._old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _validate(task: Task, model: nn.Module, data: TaskData, cfg: TrainConfig,
              device: torch.device, autocast_ctx: Any) -> dict[str, Any]:
    outputs = run_predict(task, model, data.val_images, cfg, device, autocast_ctx)
    if task.calibrate is not None:
        outputs = task.calibrate(model, outputs, data.val_targets)
    return task.metrics(outputs, data.val_targets, cfg)


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, out / "metrics.jsonl")


def _checkpoint(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, st: RunState,
                extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": cfg.to_dict(),
            "epoch": st.epoch, "step": st.step, "step_in_epoch": st.step_in_epoch,
            "best_metric": st.best_metric, "best_epoch": st.best_epoch,
            "history": st.history or [], "rng": st.rng, "partial": st.partial, "extra": extra}


def resume_config(run_dir: str | Path, epochs: int | None = None) -> TrainConfig:
    """The config a run was started with (from last.pt), optionally with more epochs."""
    state = load_checkpoint(Path(run_dir) / "last.pt")
    cfg = config_from_dict(state["config"])
    if epochs is not None:
        cfg = config_from_dict({**cfg.to_dict(), "epochs": epochs})
    return cfg


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False,
          data_dir: str | Path | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train `cfg` into the run folder `out`; with `resume`, continue from `out/last.pt`.

    Returns a summary: best validation metric and epoch, parameter count, steps, stop reason.
    """
    out = Path(out)
    reporter = reporter or Reporter(enabled=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    task = get_task(cfg.task)

    state = None
    if resume:
        state = load_checkpoint(out / "last.pt")
        saved = config_from_dict(state["config"])
        free = {"epochs": 0, "device": "", "threads": 0}  # may change on resume
        if {**saved.to_dict(), **free} != {**cfg.to_dict(), **free}:
            raise CheckpointError(f"{out}/last.pt was trained with another config; resume with "
                                  "the same options (only --epochs and --device may change)")
    elif (out / "last.pt").exists():
        raise CnnrnnError(f"{out} already holds a run; continue it with --resume {out} or "
                          "choose another --out")

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.toml")  # before training starts
    fmnist = load_fashion_mnist(data_dir)
    data = task.prepare(cfg, fmnist)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = task.build(cfg, data, data_dir=data_dir, say=reporter.say).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, trainable)

    st = RunState(history=[])
    if state is not None:
        load_model_state(model, state, out / "last.pt")
        opt.load_state_dict(state["optimizer"])
        st = RunState(state["epoch"], state["step"], state["step_in_epoch"], state["best_metric"],
                      state["best_epoch"], list(state["history"]), state["rng"],
                      state.get("partial"))
        _write_history(out, st.history)
    extra = dict(data.info)

    steps_per_epoch = len(data.train)
    total_steps = steps_per_epoch * cfg.epochs
    n_params = count_parameters(model)
    reporter.start(cfg, n_params, count_parameters(model, trainable_only=True), device,
                   steps_per_epoch, resumed_at=(st.epoch, st.step_in_epoch) if resume else None)
    autocast_ctx = lambda: autocast(device, cfg.precision)  # noqa: E731
    stop_reason = "finished"

    with _StopFlag() as stop:
        while st.epoch < cfg.epochs:
            epoch = st.epoch
            if st.step_in_epoch and st.rng is not None:
                torch.set_rng_state(st.rng)
            else:
                torch.manual_seed(mix_seed(cfg.seed, epoch))
            model.train()
            loss_sum, correct, seen, step_times = 0.0, 0, 0, []
            if st.partial:  # resuming in the middle of this epoch: its running sums
                loss_sum, correct, seen = (st.partial[k] for k in ("loss_sum", "correct", "seen"))
                step_times = list(st.partial["step_times"])
            reporter.epoch_start(epoch, steps_per_epoch, st.step_in_epoch)
            t_step = time.perf_counter()
            for x, y in data.train.epoch(epoch, st.step_in_epoch):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cfg.channels_last:  # with one channel this changes strides, not data
                    x = x.contiguous(memory_format=torch.channels_last)
                for group in opt.param_groups:
                    group["lr"] = lr_at(st.step, total_steps, steps_per_epoch, cfg)
                with autocast_ctx():
                    loss, n_correct = task.loss(model, x, y, cfg)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {st.step + 1}; "
                        f"the last good checkpoint {out / 'last.pt'} is kept; lower --lr or set "
                        "grad_clip")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                opt.step()
                st.step += 1
                st.step_in_epoch += 1
                loss_sum += loss.item() * len(y)
                correct += n_correct or 0
                seen += len(y)
                now = time.perf_counter()
                step_times.append(now - t_step)
                t_step = now
                reporter.step(loss.item(), None if n_correct is None else correct / seen)
                if stop.requested and st.step_in_epoch < steps_per_epoch:
                    st.rng = torch.get_rng_state()
                    st.partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen,
                                  "step_times": step_times}
                    save_checkpoint(_checkpoint(model, opt, cfg, st, extra), out / "last.pt")
                    stop_reason = "interrupted"
                    break
            if stop_reason == "interrupted":
                break

            val = _validate(task, model, data, cfg, device, autocast_ctx)
            row = {"epoch": epoch + 1, "step": st.step, "train_loss": loss_sum / seen,
                   "train_accuracy": None if n_correct is None else correct / seen,
                   "val_loss": val.get("loss"),
                   **{f"val_{k}": v for k, v in val.items() if isinstance(v, float | int)
                      and k != "loss"},
                   # the median is robust to the slow first steps (allocator, oneDNN warm-up)
                   "ms_per_step": 1000 * statistics.median(step_times),
                   "train_seconds": sum(step_times),
                   "lr": lr_at(st.step - 1, total_steps, steps_per_epoch, cfg)}
            st.history.append(row)
            st.epoch, st.step_in_epoch, st.rng, st.partial = epoch + 1, 0, None, None
            improved = val[task.primary] > st.best_metric
            if improved:
                st.best_metric, st.best_epoch = val[task.primary], epoch + 1
            ckpt = _checkpoint(model, opt, cfg, st, extra)
            save_checkpoint(ckpt, out / "last.pt")
            if improved:
                save_checkpoint(ckpt, out / "best.pt")
            _write_history(out, st.history)
            reporter.epoch_end(row, task.primary, improved)
            if stop.requested:
                stop_reason = "interrupted"
                break

    reporter.finish(stop_reason, out)
    if stop_reason == "finished":
        from cnnrnn.plots import plot_run

        best = load_checkpoint(out / "best.pt")
        load_model_state(model, best, out / "best.pt")
        val = _validate(task, model, data, cfg, device, autocast_ctx)
        (out / "val_metrics.json").write_text(json.dumps(val, indent=1))
        plot_run(out)
    return {"stop": stop_reason, "best_metric": st.best_metric, "best_epoch": st.best_epoch,
            "primary": task.primary, "parameters": n_params, "steps": st.step,
            "history": st.history, "out": str(out)}
