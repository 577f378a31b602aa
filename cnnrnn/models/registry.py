"""Models are built by name from one registry.

Each entry pairs a model class with the frozen dataclass of its arguments, so a config's
`[model]` table is validated field by field (a typo names itself) before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnrnn.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]  # build(args, num_classes) -> model
    args: type  # a frozen dataclass of the model's arguments
    tasks: tuple[str, ...]
    doc: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, args: type, tasks: tuple[str, ...], doc: str
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `build(args, num_classes)` under `name`; names are unique."""
    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, build, args, tasks, doc)
        return build
    return wrap


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_entry(name: str, task: str | None = None) -> ModelEntry:
    """The registry entry for `name`; an unknown name lists the known ones."""
    import cnnrnn.models  # noqa: F401 - registers every model family

    known = sorted(n for n, e in _REGISTRY.items() if task is None or task in e.tasks)
    if name not in known:
        where = f" for task {task!r}" if task else ""
        raise ConfigError(f"unknown model {name!r}{where}{_suggest(name, known)}; "
                          f"known models: {', '.join(known)}")
    return _REGISTRY[name]


def model_names(task: str | None = None) -> list[str]:
    import cnnrnn.models  # noqa: F401

    return sorted(n for n, e in _REGISTRY.items() if task is None or task in e.tasks)


def make_args(name: str, values: Mapping[str, Any], task: str | None = None) -> Any:
    """Validate a `[model]` table against the model's argument dataclass."""
    cls = get_entry(name, task).args
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown option {key!r} for model {name!r}"
                              f"{_suggest(key, list(fields))}; its options: {', '.join(fields)}")
        expected = type(fields[key].default)
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if not ok or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"model option {key!r} must be {expected.__name__}, "
                              f"got {value!r}")
    args = cls(**{k: (float(v) if isinstance(fields[k].default, float) else v)
                  for k, v in values.items()})
    if hasattr(args, "validate"):
        args.validate()
    return args


def build_model(name: str, args: Any = None, num_classes: int = 10, task: str | None = None
                ) -> nn.Module:
    entry = get_entry(name, task)
    if args is None or isinstance(args, Mapping):
        args = make_args(name, args or {}, task)
    return entry.build(args, num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
