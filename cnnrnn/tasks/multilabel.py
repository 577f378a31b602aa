"""The multilabel task: CNN-RNN (or BCE, or the query head) on synthetic Fashion-MNIST mosaics.

Training mosaics are drawn fresh for every batch from the training items (a pure function of
seed, epoch and batch); validation and test mosaics are fixed sets drawn from the validation and
test items with seed 0, so runs with different seeds are compared on the same mosaics.

The models start from an encoder prepared before training (`cnnrnn.encoders.prepare`): a
single-label vgg16 or timm run, a multilabel run, or a local state_dict file (torchvision's
VGG-16 for the vgg16 encoder, a timm or torchvision network's for a timm encoder). What differs
between the CNN-RNN and binary relevance (criterion, decoding, calibration, options) is one
`Family` each, looked up by model name.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnrnn.checkpoint import load_model_state
from cnnrnn.config import TrainConfig, config_from_dict
from cnnrnn.costs import load_costs
from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST
from cnnrnn.data.loader import mix_seed, to_input
from cnnrnn.data.mosaics import MosaicGenerator, make_split_mosaics, split_pool
from cnnrnn.data.priors import Prior, load_prior, mix_priors
from cnnrnn.errors import CheckpointError, CnnrnnError
from cnnrnn.losses import SequenceNLL, label_loss
from cnnrnn.metrics.multilabel import multilabel_metrics
from cnnrnn.metrics.severity import set_severity
from cnnrnn.models.bce import choose_label_thresholds, choose_threshold
from cnnrnn.models.encoder import GridEncoder
from cnnrnn.models.heads import build_encoder
from cnnrnn.models.registry import get_entry
from cnnrnn.models.timm_encoder import VGG16, is_timm
from cnnrnn.run_dir import RunDir
from cnnrnn.tasks.base import EvalOption, Task, TaskData

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

    def to(self, device: torch.device) -> MosaicBatches:
        """The same source with its item pool on `device`: mosaics are then built there, from
        that device's random generator (on a GPU, other mosaics than on the CPU, as many and
        as seeded)."""
        return dataclasses.replace(self, generator=self.generator.to(device))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, len(self)):
            g = torch.Generator(self.generator.device).manual_seed(mix_seed(self.seed, epoch, i))
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


# --- the encoder ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderArchitecture:
    """What an encoder's weights fix: the model args a multilabel model must take over.

    `encoder` is "vgg16" or "timm:<name>" (`model.encoder`); width and batch norm describe
    the vgg16 encoder only and are neither taken over nor compared for a timm one. Configs
    written before timm encoders have no `encoder` key: they are vgg16 (the default).
    """

    width: float = 0.25
    batch_norm: bool = True
    input_kind: str = "fashion-mnist"  # or "imagenet" for ImageNet weights (see vgg.py)
    encoder: str = VGG16

    def as_model_args(self) -> dict[str, Any]:
        """The model args this architecture fixes (and the only ones compared)."""
        if is_timm(self.encoder):
            return {"encoder": self.encoder, "encoder_input": self.input_kind}
        return {"encoder": self.encoder, "encoder_width": self.width,
                "encoder_batch_norm": self.batch_norm, "encoder_input": self.input_kind}

    def fits(self, other: EncoderArchitecture) -> bool:
        return self.as_model_args() == other.as_model_args()

    def describe(self) -> str:
        if is_timm(self.encoder):
            return f"{self.encoder} encoder (input {self.input_kind})"
        return (f"width-{self.width:g} encoder (batch_norm={self.batch_norm}, input "
                f"{self.input_kind})")

    @classmethod
    def of_model_args(cls, args: Any) -> EncoderArchitecture:
        """The encoder architecture a multilabel model's args (CNNRNNArgs, BCEArgs) describe."""
        return cls(args.encoder_width, args.encoder_batch_norm, args.encoder_input,
                   getattr(args, "encoder", VGG16))


def _source_config(run: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    state = RunDir(run).load("best")
    return config_from_dict(state["config"]), state


def _architecture_of(src: TrainConfig, run: str | Path) -> EncoderArchitecture:
    args = src.model_args
    if src.task == "single-label" and src.model == "vgg16":  # trained on the package's input
        return EncoderArchitecture(args.width, args.batch_norm, "fashion-mnist")
    if src.task == "single-label" and src.model == "timm":
        return EncoderArchitecture(input_kind="fashion-mnist", encoder=args.encoder)
    if src.task == "multilabel":
        return EncoderArchitecture.of_model_args(args)
    raise CheckpointError(f"{run} is a {src.task} {src.model!r} run; the encoder must come "
                          "from a single-label vgg16 or timm run, or a multilabel run")


def encoder_architecture(run: str | Path) -> EncoderArchitecture:
    """The encoder architecture of a single-label vgg16 or timm run or of a multilabel run."""
    return _architecture_of(_source_config(run)[0], run)


def _set_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def encoder_from_run(run: str | Path, cfg: TrainConfig) -> GridEncoder:
    """The encoder of a single-label vgg16 or timm run, or of a multilabel run (cnn-rnn or bce,
    e.g. one whose encoder was fine-tuned on mosaics), checked against the multilabel model's
    args."""
    src, state = _source_config(run)
    arch = _architecture_of(src, run)
    ours = EncoderArchitecture.of_model_args(cfg.model_args)
    if not arch.fits(ours):
        fix = " ".join(f"--set model.{k}={_set_value(v)}" for k, v in arch.as_model_args().items()
                       if ours.as_model_args().get(k) != v)
        raise CheckpointError(f"{run} has a {arch.describe()}; set {fix}")
    model = get_entry(src.model, src.task).build(src.model_args, len(CLASSES))
    load_model_state(model, state, RunDir(run).checkpoint_path("best"))
    # a multilabel run's model is rebuilt with its heads' default, a frozen encoder; whether
    # the new model trains this encoder is its own `finetune_encoder`'s to say
    return model.encoder.requires_grad_(True)


def _encoder(cfg: TrainConfig) -> GridEncoder:
    ml, args = cfg.multilabel, cfg.model_args
    if ml.encoder_checkpoint:
        return encoder_from_run(ml.encoder_checkpoint, cfg)
    if ml.encoder_weights:  # torchvision's VGG-16, or a timm encoder's; needs input "imagenet"
        return build_encoder(args, ml.encoder_weights)
    raise CnnrnnError("a multilabel model needs a pretrained encoder: set "
                      "multilabel.encoder_checkpoint or multilabel.encoder_weights, or call "
                      "cnnrnn.encoders.prepare(cfg) first (as `cnnrnn train` does)")


# --- the two model families -------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """What differs between the multilabel models."""

    criterion: Callable[[TrainConfig], nn.Module]
    # decode(model, x, cfg) -> label sets (B, K) uint8 and scores (B, K)
    decode: Callable[[nn.Module, torch.Tensor, TrainConfig], tuple[torch.Tensor, torch.Tensor]]
    build_kwargs: Callable[[TrainConfig, TaskData | None], dict[str, Any]]
    calibrated: bool = False  # a decision threshold is chosen on validation data
    describe: Callable[[TrainConfig], dict[str, Any]] = lambda cfg: {}


def _cnn_rnn_kwargs(cfg: TrainConfig, data: TaskData | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"order": "pla" if cfg.multilabel.order == "pla" else "fixed"}
    if data is not None:
        kwargs["label_priority"] = data.info["label_priority"]
    return kwargs


FAMILIES: dict[str, Family] = {
    "cnn-rnn": Family(
        criterion=lambda cfg: SequenceNLL(cfg.model_args.aux_bce,
                                          cfg.multilabel.label_smoothing,
                                          cfg.multilabel.step_target),
        decode=lambda model, x, cfg: model.predict(x, cfg.multilabel.beam_width),
        build_kwargs=_cnn_rnn_kwargs,
        describe=lambda cfg: {"order": cfg.multilabel.order}),
    "bce": Family(
        criterion=lambda cfg: label_loss(cfg.multilabel),
        decode=lambda model, x, cfg: model.predict(x, cfg.multilabel.threshold or
                                                   model.threshold),
        build_kwargs=lambda cfg, data: {},
        calibrated=True),
}
FAMILIES["query"] = FAMILIES["bce"]  # label queries, trained and decided as binary relevance


def training_prior(cfg: TrainConfig) -> Prior:
    """The label prior of a run's training mosaics: `multilabel.prior`, with a share
    `multilabel.mix_independent` of its mosaics drawn under `independent`."""
    prior = load_prior(cfg.multilabel.prior)
    if not cfg.multilabel.mix_independent:
        return prior
    # under `independent` itself this is `independent`
    return mix_priors(prior, load_prior("independent"), cfg.multilabel.mix_independent)


class Multilabel(Task):
    name = "multilabel"
    primary = "O-F1"
    metric_label = "val O-F1"
    image_size = 56
    summary_keys = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "macro-F1", "mAP", "exact_match",
                    "hamming_loss", "swap_cost", "unmatched_false_positives",
                    "unmatched_false_negatives")
    eval_options = {"beam_width": EvalOption("multilabel.beam_width", "--beam-width",
                                             models=("cnn-rnn",)),
                    "costs": EvalOption("multilabel.costs", "--costs"),
                    "threshold": EvalOption("multilabel.threshold", "--threshold",
                                            models=("bce", "query")),
                    # test mosaics under another label prior: the prior-shift experiment
                    "prior": EvalOption("multilabel.prior", "--prior")}
    pretrained_encoder = True

    def prepare(self, cfg: TrainConfig, data: FashionMNIST) -> TaskData:
        ml = cfg.multilabel
        prior = load_prior(ml.prior)
        train_prior = training_prior(cfg)
        images, labels, _ = split_pool(data, "train", cfg.val_size)
        n_train = cfg.limit_train or ml.train_mosaics
        train = MosaicBatches(MosaicGenerator(images, labels, train_prior), n_train,
                              min(cfg.batch_size, n_train), cfg.seed)
        val = make_split_mosaics(data, "val", ml.val_mosaics, prior, EVAL_SEED,
                                 val_size=cfg.val_size)
        test = make_split_mosaics(data, "test", ml.test_mosaics, prior, EVAL_SEED,
                                  val_size=cfg.val_size)
        freq = train_prior.label_frequencies()  # the label order follows the training mosaics
        return TaskData(train, val[0], val[1], test[0], test[1],
                        info={"label_frequencies": freq.tolist(),
                              "label_priority": label_priority(cfg, freq)})

    def with_options(self, cfg: TrainConfig, options: dict[str, Any]) -> TrainConfig:
        """As `Task.with_options`; test mosaics under another `prior` are drawn under that
        prior alone. The run's share of `independent` training mosaics (mix_independent)
        shapes training batches only, never validation or test mosaics, and a prior that
        draws other item counts (inverted) could not mix with `independent` at all."""
        if options.get("threshold") is not None and getattr(cfg.model_args, "count_head", False):
            raise CnnrnnError("--threshold does not apply to a run with a count head: it gives "
                              "each image its predicted number of top-scored labels")
        out = super().with_options(cfg, options)
        if options.get("prior") is None or not out.multilabel.mix_independent:
            return out
        return dataclasses.replace(out, multilabel=dataclasses.replace(
            out.multilabel, mix_independent=0.0)).validate()

    def build(self, cfg: TrainConfig, data: TaskData | None) -> nn.Module:
        family = FAMILIES[cfg.model]
        kwargs = {"freeze_encoder": not cfg.multilabel.finetune_encoder,
                  **family.build_kwargs(cfg, data)}
        entry = get_entry(cfg.model, self.name)
        if data is None:  # rebuilding a saved run: the state_dict brings every weight
            return entry.build(cfg.model_args, len(CLASSES), **kwargs)
        return entry.build(cfg.model_args, len(CLASSES), encoder=_encoder(cfg), **kwargs)

    def criterion(self, cfg: TrainConfig) -> nn.Module:
        return FAMILIES[cfg.model].criterion(cfg)

    def model_inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x, y)  # the CNN-RNN is teacher-forced on y; BCE ignores it

    @torch.inference_mode()
    def validation_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                        cfg: TrainConfig, device: torch.device,
                        autocast_ctx: Callable[[], Any] | None = None) -> float:
        """The training criterion on the validation mosaics, the model in eval mode and (the
        CNN-RNN) teacher-forced as in training: one forward pass each, no decoding. Batches
        are weighted by their size, as the epoch's train_loss is."""
        model.eval()
        criterion = self.criterion(cfg).to(device)
        total = 0.0
        for i in range(0, len(images), cfg.eval_batch_size):
            x = to_input(images[i:i + cfg.eval_batch_size]).to(device)
            y = targets[i:i + cfg.eval_batch_size].to(device)
            with autocast_ctx() if autocast_ctx is not None else contextlib.nullcontext():
                loss = criterion(model(*self.model_inputs(x, y)), y)
            total += float(loss) * len(y)
        return total / len(images)

    def predict(self, model: nn.Module, x: torch.Tensor, cfg: TrainConfig
                ) -> dict[str, torch.Tensor]:
        sets, scores = FAMILIES[cfg.model].decode(model, x, cfg)
        return {"label_sets": sets, "scores": scores}

    def calibrate(self, model: nn.Module, outputs: dict[str, torch.Tensor],
                  targets: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """BCE and query: choose the decision thresholds on validation data (one, the best
        O-F1, or one per label, each the best F1 of its label: `multilabel.thresholds`) and
        apply them; a model with a count head keeps its top-k sets, and a fixed
        `multilabel.threshold` is kept as given."""
        if (not FAMILIES[cfg.model].calibrated or getattr(model, "count", None) is not None
                or cfg.multilabel.threshold):
            return outputs  # a count head gives each image its number of labels: no threshold
        scores = outputs["scores"]
        if cfg.multilabel.thresholds == "per-label":
            t = choose_label_thresholds(scores, targets)
        else:
            t = torch.full((scores.shape[1],), choose_threshold(scores, targets))
        model.threshold.copy_(t)
        return {**outputs, "label_sets": (scores >= t).to(torch.uint8)}

    def metrics(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
                cfg: TrainConfig) -> dict[str, Any]:
        m = multilabel_metrics(targets, outputs["label_sets"], outputs["scores"],
                               list(CLASSES))
        if cfg.multilabel.costs:
            m.update(set_severity(targets.numpy(), outputs["label_sets"].numpy(),
                                  load_costs(cfg.multilabel.costs)))
            m["costs"] = cfg.multilabel.costs
        return m

    def format_predictions(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        sets = [row.nonzero().flatten().tolist() for row in outputs["label_sets"]]
        return {"label_sets": sets, "scores": outputs["scores"].tolist()}

    def describe(self, cfg: TrainConfig) -> dict[str, Any]:
        return {**super().describe(cfg), **FAMILIES[cfg.model].describe(cfg)}
