"""The pretrained encoder of a multilabel run, prepared before its training starts.

`prepare(cfg)` returns the config the run trains with:
- with `--encoder-checkpoint RUN`: the encoder architecture (`encoder`: vgg16 or timm:<name>;
  for vgg16 its width and batch norm; the input normalisation) is read from that run's
  checkpoint and taken over; an explicit, different `--set model.encoder` (or
  `encoder_width`, `encoder_batch_norm`, `encoder_input`) is an error that says which is which;
- with `--encoder-weights FILE` (torchvision VGG-16, or a timm / torchvision state_dict for a
  timm encoder): ImageNet's input normalisation (`encoder_input = "imagenet"`), and width 1.0
  for vgg16;
- with neither: a single-label run pretrained once (vgg16, or the "timm" model with the same
  `model.encoder`), announced, cached under `~/.cache/cnnrnn/encoders/` (`$CNNRNN_CACHE`),
  and reused by later runs.
The encoder run it used is recorded in the config (and so in the new run's config.toml). This is
the only caller of `train()` besides the CLI; model construction never trains anything.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Collection
from pathlib import Path

from cnnrnn.config import TrainConfig, config_from_dict, load_config
from cnnrnn.distributed import World
from cnnrnn.errors import CnnrnnError, ConfigError
from cnnrnn.models.timm_encoder import VGG16, is_timm, timm_name
from cnnrnn.progress import Reporter
from cnnrnn.run_dir import BEST, LAST, VAL_METRICS, RunDir
from cnnrnn.tasks import get_task
from cnnrnn.tasks.multilabel import EncoderArchitecture, encoder_architecture
from cnnrnn.train import train


class Interrupted(CnnrnnError):
    """Ctrl-C during the encoder's pretraining: the whole command stops."""


def cache_dir() -> Path:
    root = os.environ.get("CNNRNN_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnrnn"
    return Path(root)


def _encoder_name(cfg: TrainConfig) -> str:
    return getattr(cfg.model_args, "encoder", VGG16)


def pretraining_config(cfg: TrainConfig) -> TrainConfig:
    """The single-label config whose encoder fits the multilabel model `cfg`: a vgg16 run of
    the encoder's width and batch norm, or a "timm" run of the same timm network."""
    args, ml = cfg.model_args, cfg.multilabel
    common = {"epochs": ml.encoder_epochs, "seed": cfg.seed, "device": cfg.device,
              "precision": cfg.precision, "val_size": cfg.val_size, "threads": cfg.threads,
              "limit_train": ml.encoder_limit_train}
    if is_timm(_encoder_name(cfg)):
        return load_config("single-label", "timm", overrides={
            "model.encoder": args.encoder, **common})
    return load_config("single-label", "vgg16", overrides={
        "model.width": args.encoder_width, "model.batch_norm": args.encoder_batch_norm,
        **common})


def pretraining_key(cfg: TrainConfig) -> str:
    """The cache folder's name of `cfg`'s pretrained encoder: what the run depends on."""
    args, ml = cfg.model_args, cfg.multilabel
    name = _encoder_name(cfg)
    arch = (f"timm-{timm_name(name)}" if is_timm(name) else
            f"vgg16-w{args.encoder_width:g}-bn{int(args.encoder_batch_norm)}")
    return f"{arch}-e{ml.encoder_epochs}-n{ml.encoder_limit_train}-s{cfg.seed}-v{cfg.val_size}"


def pretrained_encoder_run(cfg: TrainConfig, data_dir: str | Path | None,
                           reporter: Reporter) -> Path:
    """A single-label run (vgg16, or "timm" for a timm encoder) whose encoder matches the
    multilabel model's; trained once, then reused.

    An interrupted pretraining resumes where it stopped the next time. It runs in this one
    process: under torchrun, rank 0 pretrains while the other ranks wait."""
    enc_cfg = pretraining_config(cfg)
    run = cache_dir() / "encoders" / pretraining_key(cfg)
    if (run / BEST).is_file() and (run / VAL_METRICS).is_file():
        reporter.say(f"using the cached pretrained encoder {run}")
        return run
    minutes = estimate_minutes(enc_cfg)
    reporter.say(f"no encoder given: pretraining a {_encoder_name(cfg)} encoder on single-label "
                 f"Fashion-MNIST first, {enc_cfg.epochs} epochs on "
                 f"{_train_images(enc_cfg):,} images, about {minutes:.0f} min on this machine "
                 f"(timed from {TIMED_STEPS} steps); cached in {run} and reused by later runs. "
                 "Pass --encoder-checkpoint RUN to use your own, or bound it with --set "
                 "multilabel.encoder_epochs=E --set multilabel.encoder_limit_train=N")
    if (run / LAST).is_file():
        summary = train(RunDir(run).resume_config(), run, resume=True, data_dir=data_dir,
                        reporter=reporter, world=World())
    else:
        if run.exists():  # a pretraining that stopped before its first checkpoint
            shutil.rmtree(run)
        summary = train(enc_cfg, run, data_dir=data_dir, reporter=reporter, world=World())
    if summary["stop"] != "finished":
        raise Interrupted(f"interrupted while pretraining the encoder; run the same command "
                          f"again to continue it (it resumes from {run / LAST})")
    return run


TIMED_STEPS = 3
FASHION_MNIST_TRAIN = 60_000


def _train_images(cfg: TrainConfig) -> int:
    full = FASHION_MNIST_TRAIN - cfg.val_size
    return min(cfg.limit_train, full) if cfg.limit_train else full


def estimate_minutes(cfg: TrainConfig) -> float:
    """The wall time of single-label run `cfg` on this machine: a few training steps of its
    model on random images, timed, times its number of steps, plus the validation passes
    (a forward pass over the validation images each epoch, costed at a third of a step per
    training-sized batch). A guide, not a promise: another job on the machine slows it."""
    import time

    import torch

    from cnnrnn.precision import autocast, resolve_device

    device = resolve_device(cfg.device)
    task = get_task(cfg.task)
    torch.manual_seed(0)
    model = task.build(cfg, None).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.rand(cfg.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with autocast(device, cfg.precision):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # the first step allocates; it is not timed
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - start) / TIMED_STEPS
    steps = -(-_train_images(cfg) // cfg.batch_size)
    val_steps = -(-cfg.val_size // cfg.batch_size) / 3
    return cfg.epochs * (steps + val_steps) * per_step / 60


def _take_over(cfg: TrainConfig, arch: EncoderArchitecture, source: str,
               explicit: Collection[str]) -> TrainConfig:
    """`cfg` with the encoder architecture of `source`; an explicit other value is an error."""
    current = {key: getattr(cfg.model_args, key) for key in arch.as_model_args()}
    for key, value in arch.as_model_args().items():
        if f"model.{key}" in explicit and current[key] != value:
            raise ConfigError(f"model.{key} = {current[key]} was given, but the encoder "
                              f"{source} has {key} = {value}; drop --set model.{key} (the "
                              "encoder's own architecture is used) or choose another encoder")
    d = cfg.to_dict()
    d["model"] = {**d["model"], **arch.as_model_args()}
    return config_from_dict(d)


def will_pretrain(cfg: TrainConfig) -> bool:
    """Whether `prepare(cfg)` would have to pretrain an encoder (none named)."""
    ml = cfg.multilabel
    return (get_task(cfg.task).pretrained_encoder and not ml.encoder_checkpoint
            and not ml.encoder_weights)


def prepare(cfg: TrainConfig, explicit: Collection[str] = (), data_dir: str | Path | None = None,
            reporter: Reporter | None = None) -> TrainConfig:
    """The config a run trains with, its encoder found (or pretrained) and recorded.

    `explicit`: the config keys the user gave on the command line (e.g. "model.encoder_width"),
    which may not be silently replaced by the encoder's own architecture. A config whose task
    needs no pretrained encoder comes back unchanged.
    """
    if not get_task(cfg.task).pretrained_encoder:
        return cfg
    reporter = reporter or Reporter(enabled=False)
    ml = cfg.multilabel
    if ml.encoder_checkpoint:
        run = ml.encoder_checkpoint
        return _take_over(cfg, encoder_architecture(run), run, explicit)
    if ml.encoder_weights:  # torchvision's VGG-16 is width 1.0; batch norm is checked on load
        # and it reads ImageNet-normalised RGB: the encoder gets the fixed ImageNet input layer.
        # A timm encoder loads the file into its 3-channel network behind the same layer.
        arch = EncoderArchitecture(1.0, cfg.model_args.encoder_batch_norm, "imagenet",
                                   _encoder_name(cfg))
        return _take_over(cfg, arch, ml.encoder_weights, explicit)
    run = pretrained_encoder_run(cfg, data_dir, reporter)
    with_run = dataclasses.replace(cfg, multilabel=dataclasses.replace(
        ml, encoder_checkpoint=str(run))).validate()
    return _take_over(with_run, encoder_architecture(run), str(run), explicit)

