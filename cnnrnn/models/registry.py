"""Models are built by name from one registry.

Each entry pairs a model class with the frozen dataclass of its arguments, so a config's
`[model]` table is validated field by field (a typo names itself) before anything is built.
Every family is registered by the time this module can be used: importing it runs
`cnnrnn/models/__init__.py` first, which imports each family module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnrnn.errors import ConfigError
from cnnrnn.schema import check_fields, suggest


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


def get_entry(name: str, task: str | None = None) -> ModelEntry:
    """The registry entry for `name`; an unknown name lists the known ones."""
    known = sorted(n for n, e in _REGISTRY.items() if task is None or task in e.tasks)
    if name not in known:
        where = f" for task {task!r}" if task else ""
        raise ConfigError(f"unknown model {name!r}{where}{suggest(name, known)}; "
                          f"known models: {', '.join(known)}")
    return _REGISTRY[name]


def model_names(task: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if task is None or task in e.tasks)


def make_args(name: str, values: Mapping[str, Any], task: str | None = None) -> Any:
    """Validate a `[model]` table against the model's argument dataclass; returns an instance."""
    cls = get_entry(name, task).args
    args = cls(**check_fields(cls, values, f"[model] of {name!r}"))
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
