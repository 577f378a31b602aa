"""The training loop: explicit, resumable, interruptible.

`train(cfg, out)` sets a run up (`_setup`), then runs `train_one_epoch` and `validate` until
the last epoch, saving last.pt and best.pt after each epoch (`_end_epoch`), and finally
evaluates the best checkpoint on validation and draws the run's figures (`_finish`). The run
folder's files and the resume policy belong to `cnnrnn.run_dir.RunDir`; everything that
differs between tasks belongs to the task (`cnnrnn.tasks`). A training step calls the model
only as `model(...)`, so a wrapped model (DistributedDataParallel, torch.compile) trains the
same way. Under torchrun (`cnnrnn.distributed.World`) each rank trains on its slice of every
global batch, only rank 0 validates, writes and reports, and the ranks agree at every step on
a stop or a NaN loss.

Repeatability: the data order and augmentation are pure functions of (seed, epoch, batch), the
global RNG (dropout) is reseeded from (seed, epoch) at each epoch start and saved on interrupt,
and the learning rate is a pure function of the step. On a CPU, a seeded run repeats bit for bit
at a fixed thread count, and so does a run resumed from any checkpoint. On GPUs, cuDNN's
nondeterministic kernels (and bf16/fp16 reductions) can make runs differ in the last bits.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnrnn.checkpoint import load_model_state
from cnnrnn.config import TrainConfig
from cnnrnn.data.fashion_mnist import load_fashion_mnist
from cnnrnn.data.loader import mix_seed
from cnnrnn.distributed import World
from cnnrnn.errors import CheckpointError, CnnrnnError, ConfigError
from cnnrnn.models.registry import count_parameters
from cnnrnn.precision import autocast, resolve_device
from cnnrnn.progress import Reporter
from cnnrnn.run_dir import LAST, VAL_METRICS, RunDir
from cnnrnn.tasks import Task, TaskData, get_task, run_predict
from cnnrnn.threads import use_threads
from cnnrnn.tracking import Tracker, check_available, open_tracker


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
    """The config's optimizer over `params` (already on their device).

    Adam, AdamW and SGD use torch's fused kernels (one pass over all parameters instead of a
    loop of small ops per tensor; on a CPU torch's default is that loop): the vgg16 recipe's
    SGD step took 1.96 against 3.41 ms, the cnn's AdamW 0.48 against 2.86 ms
    (docs/results-archive.md). Fused SGD gives the same numbers bit for bit; fused Adam(W) may
    differ in the last bit. Where torch has no fused kernel for the parameters' device, it takes the
    loop. RMSprop has no fused kernel in torch.
    """
    kinds = {
        "adam": lambda fused: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                               fused=fused),
        "adamw": lambda fused: torch.optim.AdamW(params, lr=cfg.lr,
                                                 weight_decay=cfg.weight_decay, fused=fused),
        "sgd": lambda fused: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                             nesterov=True, weight_decay=cfg.weight_decay,
                                             fused=fused),
    }
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    try:
        return kinds[cfg.optimizer](True)
    except RuntimeError:  # "`fused=True` requires ... Tensors of supported devices"
        return kinds[cfg.optimizer](None)


@dataclass
class RunState:
    epoch: int = 0  # epochs completed (or the epoch in progress, with step_in_epoch > 0)
    step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    # global RNG state when stopped mid-epoch: the CPU generator's (one per rank when several
    # processes train), and the CUDA one's on a GPU
    rng: Any = None
    partial: dict[str, Any] | None = None  # running sums of the epoch stopped in the middle
    cuda_rng: Any = None

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> RunState:
        return cls(state["epoch"], state["step"], state["step_in_epoch"], state["best_metric"],
                   state["best_epoch"], list(state["history"]), state["rng"],
                   state.get("partial"), state.get("cuda_rng"))


@dataclass
class Session:
    """Everything a run trains with, set up once by `_setup`."""

    cfg: TrainConfig
    task: Task
    run: RunDir
    data: TaskData
    model: nn.Module
    criterion: nn.Module
    opt: torch.optim.Optimizer
    trainable: list[nn.Parameter]
    device: torch.device
    extra: dict[str, Any]  # task information stored in every checkpoint
    world: World = field(default_factory=World)
    threads: int = 1  # torch's CPU threads: cfg.threads resolved, recorded in every checkpoint
    train_model: nn.Module | None = None  # what a step calls: the model, or its DDP wrapper
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    tracker: Tracker = field(default_factory=Tracker)  # steps.csv or TensorBoard, on rank 0

    @property
    def step_model(self) -> nn.Module:
        """What a training step calls. Not `train_model or model`: a compiled module refuses
        bool() (it has a __len__ that raises)."""
        return self.model if self.train_model is None else self.train_model

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    def autocast(self) -> Any:
        return autocast(self.device, self.cfg.precision)

    def checkpoint(self, st: RunState) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "config": self.cfg.to_dict(), "epoch": st.epoch, "step": st.step,
                 "step_in_epoch": st.step_in_epoch, "best_metric": st.best_metric,
                 "best_epoch": st.best_epoch, "history": st.history, "rng": st.rng,
                 "partial": st.partial, "extra": self.extra, "threads": self.threads}
        if st.cuda_rng is not None:
            state["cuda_rng"] = st.cuda_rng
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.world.distributed:
            state["world_size"] = self.world.world_size
        return state

    def save(self, state_of: Callable[[], dict[str, Any]], which: str) -> None:
        """Rank 0 writes the run folder; the other ranks never do."""
        if self.world.is_main:
            self.run.save(state_of(), which)


class _StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM (what timeout, Slurm, Kubernetes and docker stop send) asks the
    loop to stop at the next step boundary and save; a second signal kills as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name once one came

    def __enter__(self) -> _StopFlag:
        self._old: dict[int, Any] = {}
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, signals behave as usual
                self._old.pop(sig, None)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        for sig, old in self._old.items():  # the next signal acts at once
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else old)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def training_step(task: Task, model: nn.Module, criterion: nn.Module, x: torch.Tensor,
                  y: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """The loss of one batch (and its correct predictions, where the task counts them).

    The model is called as `model(...)` and nothing else, so it may be wrapped."""
    outputs = model(*task.model_inputs(x, y))
    return criterion(outputs, y), task.count_correct(outputs, y)


def validate(task: Task, model: nn.Module, data: TaskData, cfg: TrainConfig,
             device: torch.device, autocast_ctx: Callable[[], Any] | None = None
             ) -> dict[str, Any]:
    """Metrics on the validation split, after the task's calibration (the BCE threshold), and
    the validation loss ("loss")."""
    outputs = run_predict(task, model, data.val_images, cfg, device, autocast_ctx)
    outputs = task.calibrate(model, outputs, data.val_targets, cfg)
    metrics = task.metrics(outputs, data.val_targets, cfg)
    loss = task.validation_loss(model, data.val_images, data.val_targets, cfg, device,
                                autocast_ctx)
    return metrics if loss is None else {**metrics, "loss": loss}


def _setup(cfg: TrainConfig, run: RunDir, resume: bool, overwrite: bool,
           data_dir: str | Path | None, world: World) -> tuple[Session, RunState]:
    state = run.check_resumable(cfg) if resume else None
    # auto (-1): the count the run chose at its start when resumed, so it repeats bit for bit;
    # else a share of the CPUs when several ranks train on this machine
    threads = use_threads(cfg.threads, world.distributed, state.get("threads") if state else None)
    device = world.device(resolve_device(cfg.device))
    if cfg.compile:
        _check_compiler(device)
    task = get_task(cfg.task)
    data = task.prepare(cfg, load_fashion_mnist(data_dir))
    if cfg.data_device == "auto":  # a no-op on a CPU; on a GPU the batches are built there
        data.train = data.train.to(device)
    data.train = world.shard(data.train)  # each rank its slice of every global batch
    torch.manual_seed(cfg.seed)  # weight initialisation
    # resuming: a bare model, since last.pt brings every weight (and the encoder run it was
    # built from may be gone)
    model = task.build(cfg, None if resume else data).to(device)
    if world.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over all ranks
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = task.criterion(cfg).to(device)  # reads a cost file: fails before run.start
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, trainable)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    st = RunState()
    if state is not None:
        load_model_state(model, state, run / LAST)
        try:
            opt.load_state_dict(state["optimizer"])
        except ValueError as e:  # another set of trainable parameters than this model's
            raise CheckpointError(
                f"{run / LAST}: its optimizer state does not fit the model's trainable "
                f"parameters ({e}); was it saved by another version of cnnrnn? Resume it with "
                "that version, or start again with --overwrite") from None
        st = RunState.from_checkpoint(state)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        saved_world = state.get("world_size", 1)
        if st.step_in_epoch and saved_world != world.world_size:
            raise CheckpointError(f"{run / LAST} stopped inside an epoch of a run on "
                                  f"{saved_world} process(es); resume it on as many (or wait "
                                  "for an epoch's end)")
    if world.is_main:  # only now, so a refused start or resume leaves the folder as it was
        if not resume:
            run.start(overwrite)
        run.write_config(cfg)  # before training starts
        run.record_environment(cfg, resumed=resume, processes=world.world_size)
        if state is not None:
            run.write_history(st.history)
    tracker = (open_tracker(cfg.log, run, st.step if resume else None) if world.is_main
               else Tracker())
    train_model = model
    if world.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # the step calls only model(...), so the compiled module trains the same
        train_model = torch.compile(train_model)
    session = Session(cfg, task, run, data, model, criterion, opt, trainable, device,
                      dict(data.info), world, threads, train_model, scaler, tracker)
    return session, st


def _check_compiler(device: torch.device) -> None:
    """torch.compile builds its kernels with a compiler: C++ on a CPU (inductor), C for
    Triton's launchers on a GPU. Without one it would fail inside the first step with a long
    traceback."""
    if device.type == "cpu":
        kind, names = "C++", (os.environ.get("CXX"), "g++", "c++", "clang++")
    else:
        kind, names = "C", (os.environ.get("CC"), "gcc", "cc", "clang")
    if not any(shutil.which(n) for n in names if n):
        raise ConfigError(f"compile = true on a {device.type.upper()} needs a {kind} compiler "
                          "(torch.compile builds its kernels with one): install "
                          f"{'g++' if kind == 'C++' else 'gcc'}, or set compile=false")


def _restore_rng(s: Session, st: RunState) -> None:
    """The global RNG (dropout) at the start of an epoch, or where a saved one stopped."""
    rank = s.world.rank
    if st.step_in_epoch and st.rng is not None:
        rng = st.rng[rank] if isinstance(st.rng, list) else st.rng
        torch.set_rng_state(rng)
        if st.cuda_rng is not None and s.device.type == "cuda":
            cuda = st.cuda_rng[rank] if isinstance(st.cuda_rng, list) else st.cuda_rng
            torch.cuda.set_rng_state(cuda, s.device)
    else:
        # one process: mix_seed(seed, epoch), as ever; rank r > 0 of several its own stream
        parts = (s.cfg.seed, st.epoch) if rank == 0 else (s.cfg.seed, st.epoch, rank)
        torch.manual_seed(mix_seed(*parts))


def train_one_epoch(s: Session, st: RunState, stop: _StopFlag, reporter: Reporter
                    ) -> dict[str, Any] | None:
    """Train epoch `st.epoch` from step `st.step_in_epoch`; the epoch's running sums, or None
    if Ctrl-C stopped it in the middle (last.pt then holds the exact position)."""
    cfg, model, epoch, world = s.cfg, s.step_model, st.epoch, s.world
    _restore_rng(s, st)
    model.train()
    sums: dict[str, Any] = {"loss_sum": 0.0, "correct": 0, "seen": 0, "step_times": [],
                            "counted": False}
    if st.partial and world.is_main:  # resuming inside this epoch: every rank's sums so far
        sums.update({k: st.partial[k] for k in ("loss_sum", "correct", "seen")})
        sums["step_times"] = list(st.partial["step_times"])
    reporter.epoch_start(epoch, s.steps_per_epoch, st.step_in_epoch)
    t_step = last_save = time.perf_counter()
    for x, y in s.data.train.epoch(epoch, st.step_in_epoch):
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        if cfg.channels_last:  # with one channel this changes strides, not data
            x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(st.step, s.total_steps, s.steps_per_epoch, cfg)
        for group in s.opt.param_groups:
            group["lr"] = lr
        with s.autocast():
            loss, n_correct = training_step(s.task, model, s.criterion, x, y)
        (diverged,) = world.agree(not torch.isfinite(loss))  # every rank stops at this step
        if diverged:
            raise TrainingDiverged.on_every_rank(
                f"loss became {_bad_losses(world, loss.item())} at epoch {epoch + 1}, step "
                f"{st.step + 1}; the last good checkpoint {s.run / LAST} is kept; lower --lr "
                f"or set grad_clip")
        s.opt.zero_grad(set_to_none=True)
        if s.scaler is not None:  # fp16: scale the loss so small gradients survive
            s.scaler.scale(loss).backward()
            s.scaler.unscale_(s.opt)
        else:
            loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(s.trainable, cfg.grad_clip)
        if s.scaler is not None:
            s.scaler.step(s.opt)
            s.scaler.update()
        else:
            s.opt.step()
        st.step += 1
        st.step_in_epoch += 1
        s.tracker.step(st.step, epoch + 1, loss.item(), lr)
        sums["loss_sum"] += loss.item() * len(y)
        sums["correct"] += n_correct or 0
        sums["counted"] = n_correct is not None
        sums["seen"] += len(y)
        now = time.perf_counter()
        sums["step_times"].append(now - t_step)
        t_step = now
        reporter.step(loss.item(), sums["correct"] / sums["seen"] if sums["counted"] else None)
        if st.step_in_epoch == s.steps_per_epoch:
            break  # the epoch's end saves
        due = bool(cfg.checkpoint_minutes) and now - last_save >= 60 * cfg.checkpoint_minutes
        stop_now, due = world.agree(bool(stop.requested), due)
        if stop_now:
            stop.requested = stop.requested or "a signal to another rank"
            _save_mid_epoch(s, st, sums)
            return None
        if due:
            _save_mid_epoch(s, st, sums)  # a kill loses at most checkpoint_minutes of work
            last_save = now
    return sums


def _bad_losses(world: World, loss: float) -> str:
    """The non-finite losses of this step, the same words on every rank: "nan", or with several
    ranks "nan on rank 1" (a rank whose own loss is finite names the one that is not)."""
    losses = world.gather(loss)
    return ", ".join(f"{v} on rank {r}" if world.distributed else str(v)
                     for r, v in enumerate(losses) if not math.isfinite(v))


def _save_mid_epoch(s: Session, st: RunState, sums: dict[str, Any]) -> None:
    """last.pt at the exact position inside the epoch: the RNG state and the running sums
    (every rank's RNG, gathered on rank 0, when several train)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(s.device) if s.device.type == "cuda" else None
    if s.world.distributed:
        cpu, cuda = zip(*s.world.gather((cpu, cuda)), strict=True)
        cpu, cuda = list(cpu), (list(cuda) if cuda[0] is not None else None)
    st.rng, st.cuda_rng = cpu, cuda
    # the running sums of every rank, added up: on resume rank 0 carries them and the others
    # start from zero, so the epoch's end adds each sample once (rank 0's step times only)
    loss_sum, correct, seen = s.world.sum(sums["loss_sum"], sums["correct"], sums["seen"])
    st.partial = {"loss_sum": loss_sum, "correct": int(correct), "seen": int(seen),
                  "step_times": sums["step_times"]}
    s.save(lambda: s.checkpoint(st), "last")


def _end_epoch(s: Session, st: RunState, sums: dict[str, Any], reporter: Reporter) -> None:
    """Validate, append the epoch's row, save last.pt (and best.pt if it improved)."""
    epoch = st.epoch
    # over the ranks; one process gets its own sums back untouched
    loss_sum, correct, seen = s.world.sum(sums["loss_sum"], sums["correct"], sums["seen"])
    st.epoch, st.step_in_epoch, st.rng, st.partial, st.cuda_rng = epoch + 1, 0, None, None, None
    if not s.world.is_main:  # rank 0 validates, saves and reports
        return
    val = validate(s.task, s.model, s.data, s.cfg, s.device, s.autocast)
    row = {"epoch": epoch + 1, "step": st.step, "train_loss": loss_sum / seen,
           "train_accuracy": correct / seen if sums["counted"] else None,
           "val_loss": val.get("loss"),
           **{f"val_{k}": v for k, v in val.items() if isinstance(v, float | int)
              and k != "loss"},
           # the median is robust to the slow first steps (allocator, oneDNN warm-up)
           "ms_per_step": 1000 * statistics.median(sums["step_times"]),
           "train_seconds": sum(sums["step_times"]),
           "lr": lr_at(st.step - 1, s.total_steps, s.steps_per_epoch, s.cfg)}
    st.history.append(row)
    improved = val[s.task.primary] > st.best_metric
    if improved:
        st.best_metric, st.best_epoch = val[s.task.primary], epoch + 1
    ckpt = s.checkpoint(st)
    # best.pt first: a kill between the two saves leaves last.pt an epoch behind, and the
    # resume replays that epoch (bit for bit on a CPU) and saves both again; the other order
    # could leave last.pt naming as best an epoch whose weights best.pt never got
    if improved:
        s.run.save(ckpt, "best")
    s.run.save(ckpt, "last")
    s.run.write_history(st.history)
    s.tracker.epoch(row)
    reporter.epoch_end(row, s.task.primary, improved)


def _finish(s: Session) -> None:
    """Validation metrics of the best checkpoint, and the run's figures."""
    best = s.run.load("best")
    load_model_state(s.model, best, s.run.checkpoint_path("best"))
    val = validate(s.task, s.model, s.data, s.cfg, s.device, s.autocast)
    s.run.write_json(VAL_METRICS, val)
    s.task.plot_run(s.run, s.run.read_history(), val, s.cfg)
    s.tracker.finish(s.run, s.model, s.total_steps)


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
          data_dir: str | Path | None = None, reporter: Reporter | None = None,
          world: World | None = None) -> dict[str, Any]:
    """Train `cfg` into the run folder `out`; with `resume`, continue from `out/last.pt`.

    A multilabel config must name its encoder (`cnnrnn.encoders.prepare` finds or pretrains
    one). `world`: the processes training together (default: those torchrun started, else
    one); only rank 0 writes the run folder and reports. Returns a summary: best validation
    metric and epoch, parameter count, steps, stop reason.
    """
    run = RunDir(out)
    world = world or World.from_env()
    if not world.is_main:
        reporter = Reporter(enabled=False)
    reporter = reporter or Reporter(enabled=False)
    check_available(cfg.log)  # a missing tensorboard package: refused before the folder is made
    world.init(resolve_device(cfg.device))
    with run.lock() if world.is_main else contextlib.nullcontext():
        return _train(cfg, run, resume, overwrite, data_dir, reporter, world)


def _train(cfg: TrainConfig, run: RunDir, resume: bool, overwrite: bool,
           data_dir: str | Path | None, reporter: Reporter, world: World) -> dict[str, Any]:
    s, st = world.on_every_rank(lambda: _setup(cfg, run, resume, overwrite, data_dir, world))
    n_params = count_parameters(s.model)
    reporter.start(cfg, n_params, count_parameters(s.model, trainable_only=True), s.device,
                   s.steps_per_epoch, resumed_at=(st.epoch, st.step_in_epoch) if resume else None,
                   metric_label=s.task.metric_label, threads=s.threads)
    stop_reason = "finished"
    with contextlib.closing(s.tracker):  # steps.csv or the event files, however it ends
        with _StopFlag() as stop:
            while st.epoch < cfg.epochs:
                sums = train_one_epoch(s, st, stop, reporter)
                if sums is None:
                    stop_reason = "interrupted"
                    break
                _end_epoch(s, st, sums, reporter)
                (stop_now,) = world.agree(bool(stop.requested))
                if stop_now:
                    stop.requested = stop.requested or "a signal to another rank"
                    stop_reason = "interrupted"
                    break
        reporter.finish(stop_reason, run.path, stop.requested)
        if stop_reason == "finished" and world.is_main:
            _finish(s)
    world.barrier()  # the files are written before any rank returns (the last collective)
    return {"stop": stop_reason, "best_metric": st.best_metric, "best_epoch": st.best_epoch,
            "primary": s.task.primary, "parameters": n_params, "steps": st.step,
            "history": st.history, "out": str(run.path)}
