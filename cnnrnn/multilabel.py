"""The multilabel task: CNN-RNN (or BCE) on synthetic Fashion-MNIST mosaics.

Registers itself in the task table (`cnnrnn.tasks.TASKS`). Training mosaics are drawn fresh for
every batch from the training items (a pure function of seed, epoch and batch); validation and
test mosaics are fixed sets drawn from the validation and test items with seed 0, so runs with
different seeds are compared on the same mosaics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnrnn.checkpoint import load_checkpoint, load_model_state
from cnnrnn.config import TrainConfig, config_from_dict, load_config
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST
from cnnrnn.data.loader import mix_seed, to_input
from cnnrnn.data.mosaics import MosaicGenerator, make_split_mosaics, split_pool
from cnnrnn.data.priors import load_prior
from cnnrnn.errors import CheckpointError
from cnnrnn.metrics.multilabel import multilabel_metrics
from cnnrnn.models.bce import choose_threshold
from cnnrnn.models.registry import get_entry, make_args
from cnnrnn.models.vgg import VGGEncoder, load_torchvision_vgg16
from cnnrnn.tasks import TASKS, Task, TaskData

EVAL_SEED = 0  # validation and test mosaics are the same for every run


@dataclass
class MosaicBatches:
    """Fresh training mosaics: batch i of epoch e is drawn with seed (seed, e, i)."""

    generator: MosaicGenerator
    n_per_epoch: int
    batch_size: int
    seed: int

    def __len__(self) -> int:
        return max(1, self.n_per_epoch // self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, len(self)):
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, i))
            images, labels = self.generator.sample(self.batch_size, g)
            yield to_input(images), labels


def label_priority(cfg: TrainConfig, frequencies: torch.Tensor) -> list[int]:
    """The fixed label order for teacher forcing, first label first. PLA ignores it for its
    targets; it is still stored with the model."""
    most_first = frequencies.argsort(descending=True, stable=True).tolist()
    order = cfg.multilabel.order
    if order == "rare-first":
        return most_first[::-1]
    if order == "random":  # one fixed random order (a new one per batch fails to converge)
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, 7919))
        return torch.randperm(len(frequencies), generator=g).tolist()
    return most_first


def _prepare(cfg: TrainConfig, data: FashionMNIST) -> TaskData:
    ml = cfg.multilabel
    prior = load_prior(ml.prior)
    images, labels, _ = split_pool(data, "train", cfg.val_size)
    n_train = cfg.limit_train or ml.train_mosaics
    train = MosaicBatches(MosaicGenerator(images, labels, prior), n_train,
                          min(cfg.batch_size, n_train), cfg.seed)
    val = make_split_mosaics(data, "val", ml.val_mosaics, prior, EVAL_SEED, val_size=cfg.val_size)
    test = make_split_mosaics(data, "test", ml.test_mosaics, prior, EVAL_SEED,
                              val_size=cfg.val_size)
    freq = prior.label_frequencies()
    return TaskData(train, val[0], val[1], test[0], test[1],
                    info={"label_frequencies": freq.tolist(),
                          "label_priority": label_priority(cfg, freq)})


# --- the encoder ------------------------------------------------------------------------------

def cache_dir() -> Path:
    root = os.environ.get("CNNRNN_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnrnn"
    return Path(root)


def pretrained_encoder_run(cfg: TrainConfig, data_dir: str | Path | None, say: Any) -> Path:
    """A single-label vgg16 run whose encoder matches the cnn-rnn's; trained once, then reused."""
    from cnnrnn.train import resume_config, train

    args = cfg.model_args
    enc_cfg = load_config("single-label", "vgg16", overrides={
        "model.width": args["encoder_width"], "model.batch_norm": args["encoder_batch_norm"],
        "epochs": cfg.multilabel.encoder_epochs, "seed": cfg.seed, "device": cfg.device,
        "precision": cfg.precision, "val_size": cfg.val_size, "threads": cfg.threads,
        "limit_train": cfg.multilabel.encoder_limit_train})
    key = (f"vgg16-w{args['encoder_width']:g}-bn{int(args['encoder_batch_norm'])}"
           f"-e{cfg.multilabel.encoder_epochs}-n{cfg.multilabel.encoder_limit_train}"
           f"-s{cfg.seed}-v{cfg.val_size}")
    run = cache_dir() / "encoders" / key
    if (run / "best.pt").is_file() and (run / "val_metrics.json").is_file():
        say(f"using the cached pretrained encoder {run}")
        return run
    say(f"no encoder given: pretraining a vgg16 encoder on single-label Fashion-MNIST for "
        f"{enc_cfg.epochs} epochs, cached in {run} (pass --encoder-checkpoint to use your own)")
    if (run / "last.pt").is_file():
        train(resume_config(run), run, resume=True, data_dir=data_dir)
    else:
        train(enc_cfg, run, data_dir=data_dir)
    return run


def encoder_from_run(run: str | Path, cfg: TrainConfig) -> VGGEncoder:
    """The encoder of a single-label vgg16 run, or of a multilabel run (cnn-rnn or bce, e.g. one
    whose encoder was fine-tuned on mosaics), checked against the multilabel model's args."""
    state = load_checkpoint(Path(run) / "best.pt")
    src = config_from_dict(state["config"])
    if src.task == "single-label" and src.model == "vgg16":
        width, bn = src.model_args["width"], src.model_args["batch_norm"]
    elif src.task == "multilabel":
        width, bn = src.model_args["encoder_width"], src.model_args["encoder_batch_norm"]
    else:
        raise CheckpointError(f"{run} is a {src.task} {src.model!r} run; the encoder must come "
                              "from a single-label vgg16 run or a multilabel run")
    if (width, bn) != (cfg.model_args["encoder_width"], cfg.model_args["encoder_batch_norm"]):
        raise CheckpointError(f"{run} has a width-{width:g} encoder (batch_norm={bn}); set "
                              f"--set model.encoder_width={width:g} "
                              f"--set model.encoder_batch_norm={str(bn).lower()}")
    entry = get_entry(src.model, src.task)
    model = entry.build(make_args(src.model, src.model_args, src.task), len(CLASSES))
    load_model_state(model, state, Path(run) / "best.pt")
    return model.encoder


def _build(cfg: TrainConfig, data: TaskData | None, data_dir: str | Path | None = None,
           say: Any = print) -> nn.Module:
    entry = get_entry(cfg.model, "multilabel")
    args = make_args(cfg.model, cfg.model_args, "multilabel")
    ml = cfg.multilabel
    kwargs: dict[str, Any] = {"freeze_encoder": not ml.finetune_encoder}
    if cfg.model == "cnn-rnn":
        kwargs["order"] = "pla" if ml.order == "pla" else "fixed"
    if data is None:  # rebuilding a saved run: the state_dict brings every weight
        return entry.build(args, len(CLASSES), **kwargs)
    if ml.encoder_checkpoint:
        encoder = encoder_from_run(ml.encoder_checkpoint, cfg)
    elif ml.encoder_weights:
        encoder = VGGEncoder(args.encoder_width, args.encoder_batch_norm)
        load_torchvision_vgg16(encoder, ml.encoder_weights)
    else:
        encoder = encoder_from_run(pretrained_encoder_run(cfg, data_dir, say), cfg)
    if cfg.model == "cnn-rnn":
        kwargs["label_priority"] = data.info["label_priority"]
    return entry.build(args, len(CLASSES), encoder=encoder, **kwargs)


# --- loss, prediction, metrics -----------------------------------------------------------------

def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig
          ) -> tuple[torch.Tensor, None]:
    features = model.encode(x).float()  # (B, D): the encoder under autocast, the decoder in fp32
    with torch.autocast(x.device.type, enabled=False):
        return model.loss_from_features(features, y), None


def _predict(model: nn.Module, x: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    features = model.encode(x).float()  # (B, D)
    with torch.autocast(x.device.type, enabled=False):
        if cfg.model == "cnn-rnn":
            sets, scores = model.predict_from_features(features, cfg.multilabel.beam_width)
        else:
            sets, scores = model.predict_from_features(features, float(model.threshold))
    return {"label_sets": sets, "scores": scores}


def _calibrate(model: nn.Module, out: dict[str, torch.Tensor], y: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """BCE: choose the decision threshold on validation data (best O-F1) and apply it."""
    if not hasattr(model, "threshold"):
        return out
    t = choose_threshold(out["scores"], y)
    model.threshold.fill_(t)
    return {**out, "label_sets": (out["scores"] >= t).to(torch.uint8)}


def _metrics(out: dict[str, torch.Tensor], y: torch.Tensor, cfg: TrainConfig) -> dict[str, Any]:
    return multilabel_metrics(y, out["label_sets"], out["scores"], list(CLASSES))


def _format(out: dict[str, torch.Tensor]) -> dict[str, Any]:
    sets = [row.nonzero().flatten().tolist() for row in out["label_sets"]]
    return {"label_sets": sets, "scores": out["scores"].tolist()}


MULTILABEL = Task("multilabel", "O-F1", 56, _prepare, _build, _loss, _predict, _metrics, _format,
                  calibrate=_calibrate)
TASKS["multilabel"] = MULTILABEL
