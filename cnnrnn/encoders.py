"""The pretrained encoder of a multilabel run, prepared before its training starts.

`prepare(cfg)` returns the config the run trains with:
- with `--encoder-checkpoint RUN`: the encoder architecture (width, batch norm, input
  normalisation) is read from that run's checkpoint and taken over; an explicit, different
  `--set model.encoder_width` (or `encoder_batch_norm`, `encoder_input`) is an error that says
  which is which;
- with `--encoder-weights FILE` (torchvision VGG-16): width 1.0 and ImageNet's input
  normalisation (`encoder_input = "imagenet"`);
- with neither: a single-label vgg16 run pretrained once, announced, cached under
  `~/.cache/cnnrnn/encoders/` (`$CNNRNN_CACHE`), and reused by later runs.
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


def pretraining_config(cfg: TrainConfig) -> TrainConfig:
    """The single-label vgg16 config whose encoder fits the multilabel model `cfg`."""
    args, ml = cfg.model_args, cfg.multilabel
    return load_config("single-label", "vgg16", overrides={
        "model.width": args.encoder_width, "model.batch_norm": args.encoder_batch_norm,
        "epochs": ml.encoder_epochs, "seed": cfg.seed, "device": cfg.device,
        "precision": cfg.precision, "val_size": cfg.val_size, "threads": cfg.threads,
        "limit_train": ml.encoder_limit_train})


def pretrained_encoder_run(cfg: TrainConfig, data_dir: str | Path | None,
                           reporter: Reporter) -> Path:
    """A single-label vgg16 run whose encoder matches the cnn-rnn's; trained once, then reused.

    An interrupted pretraining resumes where it stopped the next time. It runs in this one
    process: under torchrun, rank 0 pretrains while the other ranks wait."""
    args, ml = cfg.model_args, cfg.multilabel
    enc_cfg = pretraining_config(cfg)
    key = (f"vgg16-w{args.encoder_width:g}-bn{int(args.encoder_batch_norm)}"
           f"-e{ml.encoder_epochs}-n{ml.encoder_limit_train}-s{cfg.seed}-v{cfg.val_size}")
    run = cache_dir() / "encoders" / key
    if (run / BEST).is_file() and (run / VAL_METRICS).is_file():
        reporter.say(f"using the cached pretrained encoder {run}")
        return run
    reporter.say(f"no encoder given: pretraining a vgg16 encoder on single-label Fashion-MNIST "
                 f"for {enc_cfg.epochs} epochs, cached in {run} (pass --encoder-checkpoint to "
                 "use your own)")
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


def _take_over(cfg: TrainConfig, arch: EncoderArchitecture, source: str,
               explicit: Collection[str]) -> TrainConfig:
    """`cfg` with the encoder architecture of `source`; an explicit other value is an error."""
    current = EncoderArchitecture.of_model_args(cfg.model_args).as_model_args()
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
        # and it reads ImageNet-normalised RGB: the encoder gets the fixed ImageNet input layer
        arch = EncoderArchitecture(1.0, cfg.model_args.encoder_batch_norm, "imagenet")
        return _take_over(cfg, arch, ml.encoder_weights, explicit)
    run = pretrained_encoder_run(cfg, data_dir, reporter)
    with_run = dataclasses.replace(cfg, multilabel=dataclasses.replace(
        ml, encoder_checkpoint=str(run))).validate()
    return _take_over(with_run, encoder_architecture(run), str(run), explicit)

