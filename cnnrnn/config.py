"""Experiment configs: frozen dataclasses, loaded from TOML, overridden by CLI flags, validated.

A config file has top-level training options, a `[model]` table (its `name` plus the model's own
options, checked against the model's argument dataclass) and, for the multilabel task, a
`[multilabel]` table. Every unknown key is an error that names it. The resolved config is written
to the run folder as `config.toml` before training starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cnnrnn.errors import ConfigError

TASKS = ("single-label", "multilabel")
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
CHOICES = {
    "task": TASKS,
    "optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "schedule": ("constant", "cosine", "step"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("fp32", "bf16", "fp16"),
    "order": ("frequency", "rare-first", "random", "pla"),
}


@dataclass(frozen=True)
class MultilabelConfig:
    prior: str = "outfits"  # a configs/mosaics/<name>.toml or a path to such a file
    train_mosaics: int = 40000  # fresh mosaics drawn per epoch (--limit-train overrides)
    val_mosaics: int = 5000  # fixed, from validation items
    test_mosaics: int = 10000  # fixed, from test items
    order: str = "frequency"  # label order for teacher forcing: frequency|rare-first|random|pla
    beam_width: int = 3  # 1 = greedy
    encoder_checkpoint: str = ""  # a single-label vgg16 run folder, or a multilabel run
    encoder_weights: str = ""  # a torchvision vgg16(_bn) state_dict file
    finetune_encoder: bool = False  # train the encoder too (else frozen)
    encoder_epochs: int = 6  # epochs of the automatic single-label pretraining
    encoder_limit_train: int = 0  # images for that pretraining; 0 = all


@dataclass(frozen=True)
class TrainConfig:
    task: str = "single-label"
    model: str = "lstm"
    model_args: Mapping[str, Any] = field(default_factory=dict)  # resolved [model] options
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
    label_smoothing: float = 0.0
    augment: bool = False  # random horizontal flips and 2-pixel shifts
    random_erasing: float = 0.0  # single-label: chance per image of one random-noise rectangle
    tta_flip: bool = False  # single-label evaluation: average the logits of x and its mirror
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # bf16 autocast is ~4.5x faster on CPUs with AVX512-BF16
    val_size: int = 5000  # held out from the 60,000 training images
    limit_train: int = 0  # train on the first N training images / N mosaics per epoch; 0 = all
    threads: int = 0  # torch CPU threads; 0 = torch's default
    channels_last: bool = True  # NHWC memory layout: ~20 % faster convolutions on CPU
    multilabel: MultilabelConfig = field(default_factory=MultilabelConfig)

    def validate(self) -> TrainConfig:
        for key, choices in CHOICES.items():
            value = getattr(self.multilabel if key == "order" else self, key)
            if value not in choices:
                raise ConfigError(f"{key} = {value!r} is not one of {', '.join(choices)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size,
                    "multilabel.beam_width": self.multilabel.beam_width}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.limit_train < 0 or self.val_size < 0:
            raise ConfigError("limit_train and val_size must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError(
                f"random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.random_erasing and self.task != "single-label":
            raise ConfigError("random_erasing applies to single-label training only; "
                              "remove it from the multilabel config")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {"name": d.pop("model"), **dict(d.pop("model_args"))}
        if self.task != "multilabel":
            del d["multilabel"]  # unused: keep config.toml to what the run reads
        return d


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}{hint}; known keys: {', '.join(known)}")


def _coerce(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check names and types of `values` against the dataclass `cls`."""
    fields = {k: f for k, f in _fields(cls).items() if k != "model_args"}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(key, sorted(fields), where)
        default = fields[key].default
        if default is dataclasses.MISSING or isinstance(value, Mapping):
            out[key] = value
            continue
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        out[key] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


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


def default_config_path(task: str, model: str) -> Path:
    return CONFIG_ROOT / task.replace("-", "_") / f"{model}.toml"


def build_config(raw: Mapping[str, Any], where: str = "config") -> TrainConfig:
    """A validated TrainConfig from a parsed TOML dict (with overrides already merged)."""
    from cnnrnn.models.registry import make_args

    raw = dict(raw)
    model_table = dict(raw.pop("model", {}) or {})
    if not isinstance(model_table, dict):
        raise ConfigError(f"{where}: [model] must be a table with a name")
    ml = raw.pop("multilabel", {}) or {}
    top = _coerce(TrainConfig, raw, where)
    task = top.get("task", TrainConfig.task)
    if task not in TASKS:
        raise ConfigError(f"task = {task!r} is not one of {', '.join(TASKS)}")
    name = model_table.pop("name", None) or ("cnn-rnn" if task == "multilabel" else "lstm")
    args = make_args(name, model_table, task)
    return TrainConfig(**top, model=name, model_args=dataclasses.asdict(args),
                       multilabel=MultilabelConfig(**_coerce(MultilabelConfig, ml,
                                                             f"{where} [multilabel]"))).validate()


def load_config(task: str, model: str | None = None, config_file: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Resolve a config: the file (or the task/model default file), then the overrides."""
    overrides = dict(overrides or {})
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if config_file:
        raw = read_toml(config_file)
        where = str(config_file)
    else:
        name = model or ("cnn-rnn" if task == "multilabel" else "lstm")
        path = default_config_path(task, name)
        raw = read_toml(path) if path.is_file() else {"model": {"name": name}}
        where = str(path) if path.is_file() else "config"
    raw = merge(raw, {"task": task})
    if model:
        if (raw.get("model") or {}).get("name", model) != model:
            raw["model"] = {}  # a different model: its options would not fit
        raw = merge(raw, {"model.name": model})
    if overrides:
        where = f"{where} or its overrides"
    return build_config(merge(raw, overrides), where)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(tomli_w.dumps(cfg.to_dict()))


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Inverse of `TrainConfig.to_dict` (used for checkpoints and saved config.toml)."""
    return build_config(d, "saved config")


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
