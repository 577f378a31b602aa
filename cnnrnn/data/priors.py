"""Label priors for synthetic mosaics: which classes a mosaic holds, and how many items.

A prior is a mixture of themes. A mosaic draws one theme (by its weight), a number of items m
(from `item_counts`), then each of its m items' class i.i.d. from that theme's distribution over
the ten Fashion-MNIST classes. The `independent` prior is the one-theme case: every item's class
is drawn from the same frequencies, so labels co-occur only by chance. The `outfits` prior has
several themes (summer, winter, ...), so labels co-occur the way the items of an outfit do.

Priors live in TOML files under `configs/mosaics/`:

    description = "one line"
    item_counts = [1, 1, 1, 1]        # relative weights of 1, 2, 3, 4 items per mosaic
    [classes]                         # one-theme prior: relative class frequencies per item
    "T-shirt/top" = 0.12
    ...
or, instead of [classes], one table per theme:
    [themes.summer]
    weight = 0.30                     # relative weight of the theme
    classes = { "T-shirt/top" = 4, "Dress" = 3, "Sandal" = 4 }   # unlisted classes: 0

Weights are relative (normalised when loaded), so a config can use counts or probabilities.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.errors import ConfigError
from cnnrnn.files import recipe_root

NUM_CLASSES = len(CLASSES)



def _prior_dirs() -> tuple[Path, ...]:
    # the priors shipped in the package (configs/mosaics/), then those of the working directory
    return (recipe_root() / "mosaics", Path.cwd() / "configs" / "mosaics")


@dataclass(frozen=True)
class Prior:
    """A distribution over mosaic label sets; probabilities are normalised and validated.

    Fields:
        name: the prior's name (the TOML file's stem).
        item_counts: P(m items in a mosaic) for m = 1 .. len(item_counts); sums to 1.
        theme_names: one name per theme; ("all",) for a one-theme prior.
        theme_weights: P(theme), one per theme; sums to 1.
        class_probs: P(class | theme), one row of NUM_CLASSES floats per theme; rows sum to 1.
        description: one line saying what the prior models.
    """

    name: str
    item_counts: tuple[float, ...]
    theme_names: tuple[str, ...]
    theme_weights: tuple[float, ...]
    class_probs: tuple[tuple[float, ...], ...]
    description: str = ""

    def __post_init__(self) -> None:
        where = f"prior {self.name!r}"
        _check_distribution(self.item_counts, f"{where}: item_counts")
        if len(self.theme_names) != len(self.theme_weights) or len(self.theme_names) != len(
            self.class_probs
        ):
            raise ConfigError(f"{where}: theme_names, theme_weights and class_probs differ in "
                              "length; give one weight and one class row per theme")
        if not self.theme_names:
            raise ConfigError(f"{where}: no themes; give [classes] or at least one [themes.X]")
        _check_distribution(self.theme_weights, f"{where}: theme weights")
        for theme, row in zip(self.theme_names, self.class_probs, strict=True):
            if len(row) != NUM_CLASSES:
                raise ConfigError(f"{where}: theme {theme!r} has {len(row)} class "
                                  f"probabilities; expected {NUM_CLASSES}")
            _check_distribution(row, f"{where}: theme {theme!r} classes")

    @property
    def max_items(self) -> int:
        """The largest number of items a mosaic can hold under this prior."""
        return len(self.item_counts)

    def class_marginal(self) -> torch.Tensor:
        """P(an item has class k), over themes: (NUM_CLASSES,) float64."""
        w = torch.tensor(self.theme_weights, dtype=torch.float64)  # (T,)
        return w @ torch.tensor(self.class_probs, dtype=torch.float64)  # (K,)

    def label_frequencies(self) -> torch.Tensor:
        """P(label k is present in a mosaic), computed exactly: (NUM_CLASSES,) float64.

        Items are i.i.d. given the theme, so with m items label k is absent with probability
        (1 - p_tk)^m, and P(k present) = sum_t w_t sum_m P(m) (1 - (1 - p_tk)^m).
        """
        w = torch.tensor(self.theme_weights, dtype=torch.float64)  # (T,)
        p = torch.tensor(self.class_probs, dtype=torch.float64)  # (T, K)
        p_m = torch.tensor(self.item_counts, dtype=torch.float64)  # (M,)
        m = torch.arange(1, self.max_items + 1, dtype=torch.float64)  # (M,)
        absent = (1.0 - p)[:, None, :] ** m[None, :, None]  # (T, M, K)
        present = (p_m[None, :, None] * (1.0 - absent)).sum(1)  # (T, K)
        return w @ present  # (K,)

    def pair_frequencies(self) -> torch.Tensor:
        """P(labels i and j both present in a mosaic), exact: (NUM_CLASSES, NUM_CLASSES)
        float64, symmetric, its diagonal `label_frequencies()`.

        With m i.i.d. items given the theme, P(i and j) = 1 - P(no i) - P(no j) + P(neither)
        = 1 - (1 - p_ti)^m - (1 - p_tj)^m + (1 - p_ti - p_tj)^m for i != j, summed over themes
        and item counts as `label_frequencies`.
        """
        w = torch.tensor(self.theme_weights, dtype=torch.float64)  # (T,)
        p = torch.tensor(self.class_probs, dtype=torch.float64)  # (T, K)
        p_m = torch.tensor(self.item_counts, dtype=torch.float64)  # (M,)
        m = torch.arange(1, self.max_items + 1, dtype=torch.float64)[None, :, None, None]
        no_i = (1.0 - p)[:, None, :, None] ** m  # (T, M, K, 1)
        no_j = (1.0 - p)[:, None, None, :] ** m  # (T, M, 1, K)
        neither = (1.0 - p[:, :, None] - p[:, None, :]).clamp(min=0.0)[:, None] ** m
        both = 1.0 - no_i - no_j + neither  # (T, M, K, K)
        joint = torch.einsum("t,m,tmij->ij", w, p_m, both)  # (K, K)
        joint.diagonal().copy_(self.label_frequencies())  # i = j: P(i present)
        return joint.clamp(min=0.0)  # rounding of a pair that never meets: -1e-17 -> 0


def mix_priors(a: Prior, b: Prior, share_b: float) -> Prior:
    """The prior that draws a mosaic's labels under `b` with probability `share_b`, else under
    `a`: the themes of both, weighted. Both must draw the number of items alike. A prior
    mixed with itself is that prior, its mosaics drawn as before."""
    if not 0.0 <= share_b <= 1.0:
        raise ConfigError(f"the share of prior {b.name!r} must be in [0, 1], got {share_b}")
    if a == b:
        return a
    if not all(math.isclose(x, y) for x, y in zip(a.item_counts, b.item_counts, strict=False)
               ) or len(a.item_counts) != len(b.item_counts):
        raise ConfigError(f"priors {a.name!r} and {b.name!r} draw different numbers of items "
                          "per mosaic, so they cannot mix; give them the same item_counts or "
                          "train on one alone (--set multilabel.mix_independent=0)")
    weights = ([(1 - share_b) * w for w in a.theme_weights]
               + [share_b * w for w in b.theme_weights])
    return Prior(f"{a.name}+{share_b:g} {b.name}", a.item_counts,
                 tuple(f"{a.name}:{t}" for t in a.theme_names)
                 + tuple(f"{b.name}:{t}" for t in b.theme_names),
                 tuple(weights), a.class_probs + b.class_probs,
                 f"{1 - share_b:g} x {a.name}, {share_b:g} x {b.name}")


def available_priors() -> list[str]:
    """Names of the priors found under configs/mosaics/, sorted."""
    return sorted({p.stem for d in _prior_dirs() if d.is_dir() for p in d.glob("*.toml")})


def load_prior(name_or_path: str | Path) -> Prior:
    """Load a prior by name (configs/mosaics/<name>.toml) or from a TOML file path."""
    path = _resolve(name_or_path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); fix the syntax") from None
    return prior_from_dict(raw, name=path.stem, where=str(path))


def prior_from_dict(raw: dict[str, Any], name: str, where: str | None = None) -> Prior:
    """Build a Prior from a parsed TOML dict (see the module docstring for the keys)."""
    where = where or f"prior {name!r}"
    _check_keys(raw, {"description", "item_counts", "classes", "themes"}, where, "")
    if "item_counts" not in raw:
        raise ConfigError(f"{where}: missing key 'item_counts'; give weights of 1, 2, ... items")
    counts = _weights(raw["item_counts"], where, "item_counts")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: key 'description' must be a string")

    if ("classes" in raw) == ("themes" in raw):
        raise ConfigError(f"{where}: give exactly one of [classes] (one theme) or [themes.NAME]")
    if "classes" in raw:
        names, weights, rows = ("all",), (1.0,), (_class_row(raw["classes"], where, "classes"),)
    else:
        themes = raw["themes"]
        if not isinstance(themes, dict) or not themes:
            raise ConfigError(f"{where}: key 'themes' must hold at least one [themes.NAME] table")
        names, weights, rows = (), (), ()
        for theme, table in themes.items():
            key = f"themes.{theme}"
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: key {key!r} must be a table with weight and classes")
            _check_keys(table, {"weight", "classes"}, where, key + ".")
            for required in ("weight", "classes"):
                if required not in table:
                    raise ConfigError(f"{where}: missing key '{key}.{required}'")
            names += (theme,)
            weights += (_number(table["weight"], where, key + ".weight"),)
            rows += (_class_row(table["classes"], where, key + ".classes"),)
        weights = _normalise(weights, where, "theme weights")
    return Prior(name=name, item_counts=counts, theme_names=names, theme_weights=weights,
                 class_probs=rows, description=description)


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"prior file {path} not found; give an existing .toml file or one "
                              f"of the names {', '.join(available_priors())}")
        return path
    for d in _prior_dirs():
        if (d / f"{text}.toml").is_file():
            return d / f"{text}.toml"
    known = ", ".join(available_priors()) or "none found"
    raise ConfigError(f"unknown prior {text!r}; available priors: {known} "
                      "(or give a path to a .toml file)")


def _check_keys(table: dict[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'; expected one of "
                              f"{', '.join(sorted(allowed))}")


def _number(value: Any, where: str, key: str) -> float:
    # bool is an int subclass in Python; `true` is never a weight.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: key '{key}' must be a finite number >= 0, got {value!r}")
    return float(value)


def _weights(values: Any, where: str, key: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: key '{key}' must be a non-empty list of numbers")
    return _normalise(tuple(_number(v, where, key) for v in values), where, key)


def _class_row(table: Any, where: str, key: str) -> tuple[float, ...]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: key '{key}' must be a table of class name = weight")
    _check_keys(table, set(CLASSES), where, key + ".")
    row = tuple(_number(table.get(c, 0), where, f"{key}.{c}") for c in CLASSES)
    return _normalise(row, where, key)


def _normalise(values: tuple[float, ...], where: str, key: str) -> tuple[float, ...]:
    total = sum(values)
    if total <= 0:
        raise ConfigError(f"{where}: key '{key}' has weights summing to 0; give a positive one")
    return tuple(v / total for v in values)


def _check_distribution(values: tuple[float, ...], where: str) -> None:
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"{where} must be non-negative finite numbers, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"{where} must sum to 1, got {sum(values):.6f}")
