"""Experiment configs: frozen dataclasses, loaded from TOML, overridden by CLI flags, validated.

A config file has top-level training options, a `[model]` table (its `name` plus the model's own
options, checked against the model's argument dataclass and kept as that typed dataclass) and
the table of its task's own options: `[single_label]` or `[multilabel]`. Every unknown key is an
error that names it; a table of the other task is an error too. The resolved config is written
to the run folder as `config.toml` before training starts.

Recipes (`configs/<task>/<model>.toml`) ship inside the package; a model without a recipe is an
error, never a silent fall-back to the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cnnrnn.errors import ConfigError
from cnnrnn.files import atomic_write, recipe_root
from cnnrnn.models.registry import make_args
from cnnrnn.precision import DEVICES
from cnnrnn.schema import check_fields, unknown_key

CHOICES = {
    "optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "schedule": ("constant", "cosine", "step"),
    "device": DEVICES,
    "precision": ("fp32", "bf16", "fp16"),
    "data_device": ("auto", "cpu"),
    "log": ("csv", "tensorboard"),
}
ORDERS = ("frequency", "rare-first", "random", "pla")
LOSSES = ("cross-entropy", "soft-labels", "expected-cost", "hxe")
DECISIONS = ("argmax", "crm")
STEP_TARGETS = ("next", "set")  # the CNN-RNN's step target (cnnrnn.losses.SequenceNLL)
# the per-label loss of the binary-relevance heads (bce, query): cnnrnn.losses.label_loss
LABEL_LOSSES = ("bce", "asl")
THRESHOLDS = ("global", "per-label")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(choices)}")


def _check_min(values: Mapping[str, float], low: float) -> None:
    for key, value in values.items():
        if not value >= low:  # also refuses NaN
            raise ConfigError(f"{key} must be >= {low:g}, got {value}")


@dataclass(frozen=True)
class SingleLabelConfig:
    """`[single_label]`: options only the single-label task reads."""

    augment: bool = False  # random horizontal flips and 2-pixel shifts
    random_erasing: float = 0.0  # chance per image of one random-noise rectangle
    label_smoothing: float = 0.0  # of the cross-entropy targets
    tta_flip: bool = False  # evaluation: average the logits of x and its mirror
    # Making better mistakes (cnnrnn/costs.py): a class-cost matrix, by name ("hierarchy") or a
    # CSV/JSON file, read by the severity-aware losses, the CRM decision and the metrics.
    costs: str = ""
    loss: str = "cross-entropy"  # cross-entropy | soft-labels | expected-cost | hxe
    beta: float = 6.0  # soft labels: target = softmax(-beta * C[y])
    cost_weight: float = 1.0  # expected cost: loss = CE + cost_weight * sum_j p_j C[y, j]
    # hxe: the term of the edge above node C weighs exp(-alpha * depth of C); 0.1 is the
    # reference code's default (fiveai/making-better-mistakes); 0 is the cross-entropy
    alpha: float = 0.1
    decision: str = "argmax"  # argmax | crm (the class of least expected cost)

    def validate(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError(
                f"random_erasing is a probability in [0, 1], got {self.random_erasing}")
        _check_choice("single_label.loss", self.loss, LOSSES)
        _check_choice("single_label.decision", self.decision, DECISIONS)
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"single_label.beta must be a finite number > 0, got {self.beta}")
        _check_min({"single_label.cost_weight": self.cost_weight}, 0)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"single_label.alpha must be a finite number >= 0, got {self.alpha}")
        needs = [f"{k} = {v!r}" for k, v in (("loss", self.loss), ("decision", self.decision))
                 if v in ("soft-labels", "expected-cost", "hxe", "crm")]
        if needs and not self.costs:
            raise ConfigError(f"single_label.{needs[0]} needs a cost matrix: set "
                              "single_label.costs to 'hierarchy' or a cost file (--costs FILE)")
        if self.loss == "soft-labels" and self.label_smoothing:
            raise ConfigError("soft labels replace label smoothing; set one of "
                              "single_label.loss = 'soft-labels' and label_smoothing")
        if self.loss == "hxe" and self.label_smoothing:
            raise ConfigError("the hierarchical cross-entropy takes no label smoothing; set "
                              "single_label.label_smoothing = 0 with single_label.loss = 'hxe'")


@dataclass(frozen=True)
class MultilabelConfig:
    """`[multilabel]`: options only the multilabel task reads."""

    prior: str = "outfits"  # a configs/mosaics/<name>.toml or a path to such a file
    train_mosaics: int = 40000  # fresh mosaics drawn per epoch (--limit-train overrides)
    val_mosaics: int = 5000  # fixed, from validation items
    test_mosaics: int = 10000  # fixed, from test items
    order: str = "frequency"  # label order for teacher forcing: frequency|rare-first|random|pla
    beam_width: int = 3  # 1 = greedy
    encoder_checkpoint: str = ""  # a single-label vgg16 or timm run folder, or a multilabel run
    # a torchvision vgg16(_bn) state_dict file; for a timm encoder (model.encoder = "timm:NAME")
    # a state_dict of that timm (or torchvision) network
    encoder_weights: str = ""
    finetune_encoder: bool = False  # train the encoder too (else frozen)
    encoder_epochs: int = 6  # epochs of the automatic single-label pretraining
    encoder_limit_train: int = 0  # images for that pretraining; 0 = all
    costs: str = ""  # evaluation: a class-cost matrix for the set severity (cnnrnn/costs.py)
    # share of the training mosaics whose labels follow the `independent` prior instead of
    # `prior` (a remedy for a shift of the label prior); validation and test follow `prior`
    mix_independent: float = 0.0
    label_smoothing: float = 0.0  # cnn-rnn: smoothing of each step's softmax target
    # cnn-rnn: each step's target, "next" (the next label of the order: the paper) or "set"
    # (any true label not yet emitted: an orderless target, with order = "pla"; losses.py)
    step_target: str = "next"
    # per-label heads (bce, query): "bce" or "asl", the asymmetric loss (Ridnik et al., ICCV
    # 2021, timm's AsymmetricLossMultiLabel), a mean over batch and labels as BCE's is
    loss: str = "bce"
    asl_gamma_neg: float = 4.0  # asl: focusing exponent of the negative labels (timm's default)
    asl_gamma_pos: float = 1.0  # asl: focusing exponent of the positive labels
    asl_clip: float = 0.05  # asl: probability margin shifted onto the negatives; 0 = off
    count_weight: float = 1.0  # model.count_head: weight of the count's cross-entropy
    # per-label heads (bce, query): the decision thresholds chosen on validation, "global" (one
    # for every label, the best O-F1) or "per-label" (each label's own, the best F1 of that
    # label; a label without a positive validation mosaic is never predicted)
    thresholds: str = "global"
    # evaluation and predict: one fixed threshold for every label instead of the chosen ones
    # (`--threshold`); 0 = the chosen ones
    threshold: float = 0.0

    def validate(self) -> None:
        _check_choice("multilabel.order", self.order, ORDERS)
        _check_choice("multilabel.loss", self.loss, LABEL_LOSSES)
        for key, value in (("multilabel.asl_gamma_neg", self.asl_gamma_neg),
                           ("multilabel.asl_gamma_pos", self.asl_gamma_pos),
                           ("multilabel.count_weight", self.count_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{key} must be a finite number >= 0, got {value}")
        _check_choice("multilabel.thresholds", self.thresholds, THRESHOLDS)
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"multilabel.threshold must be in [0, 1) (0: the thresholds "
                              f"chosen on validation), got {self.threshold}")
        if not 0.0 <= self.asl_clip < 1.0:
            raise ConfigError(f"multilabel.asl_clip must be in [0, 1), got {self.asl_clip}")
        _check_choice("multilabel.step_target", self.step_target, STEP_TARGETS)
        if self.step_target == "set" and self.order != "pla":
            raise ConfigError("multilabel.step_target = 'set' needs multilabel.order = 'pla' "
                              "(the model's own choice as the next input); with a fixed order "
                              "it is fed orders it never emits")
        if self.step_target == "set" and self.label_smoothing:
            raise ConfigError("multilabel.label_smoothing and multilabel.step_target = 'set' "
                              "do not combine; set one of them")
        for key, value in (("multilabel.mix_independent", self.mix_independent),
                           ("multilabel.label_smoothing", self.label_smoothing)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {value}")
        _check_min({"multilabel.beam_width": self.beam_width,
                    "multilabel.train_mosaics": self.train_mosaics,
                    "multilabel.val_mosaics": self.val_mosaics,
                    "multilabel.test_mosaics": self.test_mosaics,
                    "multilabel.encoder_epochs": self.encoder_epochs}, 1)
        _check_min({"multilabel.encoder_limit_train": self.encoder_limit_train}, 0)


# The table of each task's own options: the task's name -> (table name, dataclass).
TASK_TABLES: dict[str, tuple[str, type]] = {
    "single-label": ("single_label", SingleLabelConfig),
    "multilabel": ("multilabel", MultilabelConfig),
}
TASKS = tuple(TASK_TABLES)
DEFAULT_MODELS = {"single-label": "lstm", "multilabel": "cnn-rnn"}  # when --model is not given


@dataclass(frozen=True)
class TrainConfig:
    task: str = "single-label"
    model: str = "lstm"
    model_args: Any = None  # the model's argument dataclass (models/registry.py), typed
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd momentum; rmsprop momentum
    schedule: str = "cosine"  # a pure function of the step, see train.lr_at
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # bf16 autocast is ~4.5x faster on CPUs with AVX512-BF16
    val_size: int = 5000  # held out from the 60,000 training images
    limit_train: int = 0  # train on the first N training images / N mosaics per epoch; 0 = all
    # torch CPU threads: -1 = auto (the CPUs no other job keeps busy, cnnrnn.threads; the count
    # chosen is recorded and a resume takes it again); N = pinned; 0 = torch's default
    threads: int = -1
    channels_last: bool = True  # NHWC memory layout: ~20 % faster convolutions on CPU
    # where the training data lives: "auto" = on the training device (a GPU's memory: batches
    # and mosaics are built there), "cpu" = host memory, each batch copied to the device
    data_device: str = "auto"
    checkpoint_minutes: float = 10.0  # also save last.pt inside an epoch this often; 0 = off
    compile: bool = False  # torch.compile the training step's model (GPUs; minutes to compile)
    # what a run logs beside metrics.jsonl (cnnrnn.tracking): "csv" = steps.csv, a row per
    # step; "tensorboard" = RUN/tensorboard/ (pip install 'cnnrnn[tensorboard]')
    log: str = "csv"
    single_label: SingleLabelConfig = field(default_factory=SingleLabelConfig)
    multilabel: MultilabelConfig = field(default_factory=MultilabelConfig)

    def validate(self) -> TrainConfig:
        _check_choice("task", self.task, TASKS)
        for key, choices in CHOICES.items():
            _check_choice(key, getattr(self, key), choices)
        _check_min({"epochs": self.epochs, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "val_size": self.val_size}, 1)
        _check_min({"threads": self.threads}, -1)
        _check_min({"limit_train": self.limit_train,
                    "weight_decay": self.weight_decay, "momentum": self.momentum,
                    "warmup_epochs": self.warmup_epochs, "grad_clip": self.grad_clip,
                    "seed": self.seed, "checkpoint_minutes": self.checkpoint_minutes}, 0)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if self.seed >= 2**63:
            raise ConfigError(f"seed must be below 2**63, got {self.seed}")
        self.task_options.validate()
        if self.task == "multilabel" and self.model == "cnn-rnn" and self.multilabel.loss != "bce":
            raise ConfigError(f"multilabel.loss = {self.multilabel.loss!r} is for the per-label "
                              "heads (bce, query); the cnn-rnn is trained on its label sequence")
        return self

    @property
    def task_options(self) -> Any:
        """The table of this config's task: `single_label` or `multilabel`."""
        return getattr(self, TASK_TABLES[self.task][0])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {"name": d.pop("model"), **d.pop("model_args")}
        for task, (table, _) in TASK_TABLES.items():
            if task != self.task:
                del d[table]  # the other task's options: keep config.toml to what the run reads
        return d


_TOP_SKIP = ("model_args", *(table for table, _ in TASK_TABLES.values()))


def key_of(name: str, task: str | None = None) -> str:
    """The dotted config key of a CLI flag's name: a top-level option, else the task option of
    that name (`beam_width` -> `multilabel.beam_width`; a name both tasks have, such as
    `costs`, is `task`'s). The CLI's flags are read this way, so the schema here is the only
    list of them."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(_TOP_SKIP)
    if name in names:
        return name
    found = [f"{table}.{name}" for t, (table, cls) in TASK_TABLES.items()
             if name in {f.name for f in dataclasses.fields(cls)}]
    if len(found) > 1 and task in TASK_TABLES:
        found = [k for k in found if k.startswith(TASK_TABLES[task][0] + ".")]
    if len(found) != 1:
        raise ConfigError(f"no single config key is named {name!r} (found {found or 'none'})")
    return found[0]


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict update; `overrides` may use dotted keys like "model.hidden_size"."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        head, _, rest = key.partition(".")
        if rest:
            out[head] = merge(out.get(head, {}) if isinstance(out.get(head), dict) else {},
                              {rest: value})
        else:
            out[key] = value
    return out


def recipe_path(task: str, model: str) -> Path:
    """The shipped recipe of `model` for `task`: configs/<task>/<model>.toml."""
    return recipe_root() / task.replace("-", "_") / f"{model}.toml"


def default_model(task: str) -> str:
    return DEFAULT_MODELS[task]


def _hint_for(key: str) -> str:
    """Where a top-level key that belongs to a task table lives."""
    for table, cls in TASK_TABLES.values():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return f" (it lives in [{table}]: {table}.{key})"
    return ""


def build_config(raw: Mapping[str, Any], where: str = "config") -> TrainConfig:
    """A validated TrainConfig from a parsed TOML dict (with overrides already merged)."""
    raw = dict(raw)
    model_table = raw.pop("model", {}) or {}
    if not isinstance(model_table, dict):
        raise ConfigError(f"{where}: [model] must be a table with a name")
    model_table = dict(model_table)
    tables = {table: raw.pop(table, None) for table, _ in TASK_TABLES.values()}
    known = sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in _TOP_SKIP)
    for key in raw:
        if key not in known:
            raise unknown_key(key, known, where, _hint_for(key))
    top = check_fields(TrainConfig, raw, where, skip=_TOP_SKIP)
    task = top.get("task", TrainConfig.task)
    _check_choice("task", task, TASKS)
    options = {}
    for other, (table, cls) in TASK_TABLES.items():
        values = tables[table]
        if other != task:
            if values:
                given = ", ".join(f"{table}.{k}" for k in values)
                raise ConfigError(f"{where}: [{table}] options apply to --task {other}, not to "
                                  f"this {task} run; remove {given}")
            continue
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{where}: {table} must be a table")
        options[table] = cls(**check_fields(cls, values or {}, f"{where} [{table}]"))
    name = model_table.pop("name", None) or default_model(task)
    args = make_args(name, model_table, task)
    return TrainConfig(**top, model=name, model_args=args, **options).validate()


def load_config(task: str, model: str | None = None, config_file: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Resolve a config: the file (or the task/model recipe), then the overrides."""
    overrides = dict(overrides or {})
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if config_file:
        raw = read_toml(config_file)
        where = str(config_file)
    else:
        name = model or default_model(task)
        make_args(name, {}, task)  # an unknown model name is named as such, with the known ones
        path = recipe_path(task, name)
        if not path.is_file():
            raise ConfigError(f"no recipe for model {name!r} ({path} is missing); reinstall "
                              "cnnrnn or pass --config FILE")
        raw = read_toml(path)
        where = f"configs/{path.parent.name}/{path.name}"
    raw = merge(raw, {"task": task})
    if model:
        if (raw.get("model") or {}).get("name", model) != model:
            raw["model"] = {}  # a different model: its options would not fit
        raw = merge(raw, {"model.name": model})
    if overrides:
        where = f"{where} or its overrides"
    return build_config(merge(raw, overrides), where)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write(path, tomli_w.dumps(cfg.to_dict()))


# Options that lived at the top level before they moved into [single_label].
_MOVED_TO_SINGLE_LABEL = ("augment", "random_erasing", "label_smoothing", "tta_flip")


def upgrade_saved(d: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config of an older cnnrnn (checkpoint or config.toml) in today's layout."""
    d = dict(d)
    moved = {k: d.pop(k) for k in _MOVED_TO_SINGLE_LABEL if k in d}
    table, cls = TASK_TABLES.get(d.get("task", TrainConfig.task), (None, None))
    if moved and cls is SingleLabelConfig:
        d[table] = {**moved, **(d.get(table) or {})}
    return d  # a multilabel run never read them: they are dropped


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Inverse of `TrainConfig.to_dict` (used for checkpoints and saved config.toml)."""
    return build_config(upgrade_saved(d), "saved config")


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are parsed as TOML (numbers, booleans, strings)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()  # a bare word is a string
    return out
