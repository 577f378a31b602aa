"""Class-cost matrices: how bad it is to predict class j for true class i.

A cost matrix is (10, 10), rows = true class, columns = predicted class, with a zero diagonal,
symmetric, and scaled to a maximum of 1. cnnrnn makes them from learned label embeddings
(the CNN-RNN's rows of U_l, or a classifier's last linear layer), from a validation confusion
matrix (classes confused often are close) and from the clothing hierarchy (every mistake
costing more than 0: see check_costs); it reads them from
CSV (with or without the class-name header row and column, so `numpy.savetxt` output works)
or from the JSON it writes.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from pathlib import Path

import numpy as np

from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.errors import CnnrnnError
from cnnrnn.files import atomic_write
from cnnrnn.hierarchy import from_groups, is_hierarchy_file, read_hierarchy

K = len(CLASSES)

# The clothing hierarchy: a root with four groups and three single classes. The distance of two
# classes is the height of their lowest common ancestor: 1 inside a group, 2 across the root.
HIERARCHY: dict[str, tuple[str, ...]] = {
    "tops": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
    "dress": ("Dress",),
    "trousers": ("Trouser",),
    "footwear": ("Sandal", "Sneaker", "Ankle boot"),
    "bag": ("Bag",),
}


def check_costs(costs: np.ndarray, where: str = "cost matrix", scale: bool = True
                ) -> np.ndarray:
    """A valid cost matrix: (10, 10), finite, non-negative, symmetric, zero diagonal and every
    off-diagonal cost > 0; scaled to a maximum of 1 when `scale` (a hand-written matrix may use
    any unit).

    A zero off-diagonal cost is refused (CnnrnnError), for every matrix alike: cnnrnn's own
    (hierarchy, embeddings, confusion), files cnnrnn wrote, and a user's CSV or JSON. With
    C[a, b] = 0, CRM's expected cost of predicting a or b no longer depends on p(a) and p(b),
    so it picks between the two ignoring their probabilities (p(a) = .9 can lose to b).
    """
    c = np.asarray(costs, dtype=np.float64)
    if c.shape != (K, K):
        raise CnnrnnError(f"{where} has shape {c.shape}; a cost matrix is ({K}, {K}): rows = "
                          "true class, columns = predicted class")
    if not np.isfinite(c).all():
        raise CnnrnnError(f"{where} holds NaN or infinite costs; give finite numbers")
    if (c < 0).any():
        i, j = np.argwhere(c < 0)[0]
        raise CnnrnnError(f"{where} has a negative cost ({c[i, j]:g} for true {CLASSES[i]!r}, "
                          f"predicted {CLASSES[j]!r}); costs must be >= 0")
    if not np.allclose(c, c.T, rtol=1e-6, atol=1e-9):
        i, j = np.argwhere(~np.isclose(c, c.T, rtol=1e-6, atol=1e-9))[0]
        raise CnnrnnError(f"{where} is not symmetric (cost[{CLASSES[i]!r}, {CLASSES[j]!r}] = "
                          f"{c[i, j]:g} but cost[{CLASSES[j]!r}, {CLASSES[i]!r}] = {c[j, i]:g})")
    if np.abs(np.diag(c)).max() > 1e-9:
        raise CnnrnnError(f"{where} has a non-zero diagonal; predicting the true class costs 0")
    if scale:
        top = c.max()
        if top <= 0:
            raise CnnrnnError(f"{where} is all zeros; give some mistakes a cost")
        c = c / top
    zero = (c == 0) & ~np.eye(K, dtype=bool)
    if zero.any():
        i, j = np.argwhere(zero)[0]
        raise CnnrnnError(f"{where} costs 0 for true {CLASSES[i]!r}, predicted {CLASSES[j]!r}; "
                          "give every mistake a cost > 0, or CRM ignores the probabilities "
                          "of the two classes")
    return c


# The least cost of a mistake in an embedding distance matrix, as a fraction of the largest
# distance: two classes with identical (or nearly identical) vectors would otherwise cost 0 or
# next to it, and CRM would pick between them ignoring their probabilities.
EMBEDDING_FLOOR = 0.01


def _scaled_distances(d: np.ndarray) -> np.ndarray:
    """Distances (K, K) -> a cost matrix: symmetric, zero diagonal, max 1, every off-diagonal
    cost at least EMBEDDING_FLOOR."""
    d = (d + d.T) / 2  # exactly symmetric
    np.fill_diagonal(d, 0.0)
    top = d.max()
    if top <= 0:
        raise CnnrnnError("all class embeddings are the same vector; their distances give no "
                          "cost matrix (train the model, or use another source)")
    d = np.maximum(d / top, EMBEDDING_FLOOR)
    np.fill_diagonal(d, 0.0)
    return check_costs(d, "distance matrix")


def hierarchy_costs() -> np.ndarray:
    """Height of the lowest common ancestor in HIERARCHY, scaled: 0.5 inside a group, 1
    across groups."""
    tree = from_groups({g: list(names) for g, names in HIERARCHY.items()}, CLASSES)
    return check_costs(tree.costs(), "the clothing hierarchy")


def hierarchy_file_costs(path: str | Path) -> np.ndarray:
    """The cost matrix of your own hierarchy file (cnnrnn.hierarchy): the height of each
    pair's lowest common ancestor, scaled to a maximum of 1."""
    return check_costs(read_hierarchy(path, CLASSES).costs(), f"the hierarchy in {path}")


def embedding_costs(vectors: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Pairwise distances of the ten class embeddings (10, D), scaled to a maximum of 1."""
    from scipy.spatial.distance import pdist, squareform

    if metric not in ("cosine", "euclidean"):
        raise CnnrnnError(f"unknown distance {metric!r}; choose cosine or euclidean")
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[0] != K or v.ndim != 2:
        raise CnnrnnError(f"class embeddings have shape {v.shape}; expected ({K}, D)")
    return _scaled_distances(squareform(pdist(v, metric=metric)))


def confusion_costs(confusion: np.ndarray) -> np.ndarray:
    """From a confusion matrix (counts, rows = true): cost = -log of the row-normalised
    confusion rate, symmetrised, (r[i, j] + r[j, i]) / 2, scaled to a maximum of 1. More
    confused is cheaper, and every mistake costs > 0.

    The rate is clipped to [1 / (2 N), 1 - 1 / (2 N)], N the number of samples counted: the
    floor is no higher than any rate observed (a single confusion in a row of n <= N samples
    gives a symmetrised rate of at least 1 / (2 n)), so pairs never confused cost the most (1)
    and the log stays finite; the ceiling keeps the cost of a pair confused every time above
    0. (The former cost, 1 - rate / the largest rate, gave the most confused pair exactly 0.)
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.shape != (K, K) or (cm < 0).any():
        raise CnnrnnError(f"confusion matrix has shape {cm.shape}; expected ({K}, {K}) counts")
    if cm.sum() <= 0:
        raise CnnrnnError("confusion matrix is all zeros; it counts no sample")
    rows = cm.sum(1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    eps = 1.0 / (2.0 * cm.sum())
    sym = np.clip((rate + rate.T) / 2, eps, 1.0 - eps)
    cost = -np.log(sym)  # > 0 everywhere
    np.fill_diagonal(cost, 0.0)
    return check_costs(cost, "confusion costs")


BUILT_IN = {"hierarchy": hierarchy_costs}


def load_costs(spec: str | Path) -> np.ndarray:
    """A cost matrix by name (`hierarchy`), from a hierarchy file (JSON or TOML groups, or a
    parent,child CSV: cnnrnn.hierarchy) or from a cost-matrix file (see read_costs)."""
    if str(spec) in BUILT_IN:
        return BUILT_IN[str(spec)]()
    if not Path(spec).is_file():
        close = difflib.get_close_matches(str(spec), BUILT_IN, n=1)
        if close:  # a misspelt name, not a missing file
            raise CnnrnnError(f"unknown costs {str(spec)!r}: no such file, and not a built-in "
                              f"name; did you mean {close[0]}? (built in: "
                              f"{', '.join(BUILT_IN)}; or a file from `cnnrnn analyze costs`)")
    if is_hierarchy_file(spec):
        return hierarchy_file_costs(spec)
    return read_costs(spec)


def read_costs(path: str | Path) -> np.ndarray:
    """A cost matrix from a CSV (10 rows of 10 numbers, with or without the class-name header
    row and first column) or from the JSON `write_costs` writes; checked and scaled."""
    path = Path(path)
    if not path.is_file():
        raise CnnrnnError(f"cost file {path} not found; make one with `cnnrnn analyze costs`")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
            rows = obj["costs"] if isinstance(obj, dict) else obj
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CnnrnnError(f"{path} is not a cost-matrix JSON ({e})") from None
    else:
        delimiter = "," if "," in text else None
        lines = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter or " ",
                                           skipinitialspace=True) if any(x.strip() for x in row)]
        rows = []
        for line in lines:
            cells = [x.strip() for x in line if x.strip()]
            try:
                rows.append([float(x) for x in cells])
            except ValueError:
                try:  # a header row, or a row with the class name first
                    rows.append([float(x) for x in cells[1:]])
                except ValueError:
                    continue
        rows = [r for r in rows if r]
    try:
        matrix = np.array(rows, dtype=np.float64)
    except ValueError:
        raise CnnrnnError(f"{path}: rows of different lengths; a cost matrix is {K} rows of "
                          f"{K} numbers") from None
    return check_costs(matrix, str(path))


def write_costs(path: str | Path, costs: np.ndarray, source: str) -> list[Path]:
    """Write `path` as .csv (header row and column of class names) and .json beside it."""
    c = check_costs(costs, source, scale=False)
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *CLASSES])
    for name, row in zip(CLASSES, c, strict=True):
        writer.writerow([name, *(f"{x:.6f}" for x in row)])
    csv_path, json_path = base.with_suffix(".csv"), base.with_suffix(".json")
    atomic_write(csv_path, buf.getvalue())
    atomic_write(json_path, json.dumps({"classes": list(CLASSES), "source": source,
                                        "costs": np.round(c, 6).tolist()}, indent=1))
    return [csv_path, json_path]


def equal_cost_classes(costs: np.ndarray, atol: float = 1e-9) -> list[int]:
    """The true classes whose every mistake costs the same (all off-diagonal costs of the row
    equal, within `atol`): their mistake severity is that one cost by construction, whatever the
    model predicts (under the hierarchy: Trouser, Dress and Bag, alone in their groups)."""
    c = np.asarray(costs, dtype=np.float64)
    off = c[~np.eye(len(c), dtype=bool)].reshape(len(c), len(c) - 1)  # (K, K-1)
    return [k for k, row in enumerate(off) if np.ptp(row) <= atol]
