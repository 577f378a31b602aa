"""Your own class hierarchy, from a file: nested groups in JSON or TOML, or parent,child rows in
a CSV. It becomes a cost matrix (`--costs FILE` wherever a cost matrix is taken) and the tree of
the hierarchical cross-entropy (`--loss hxe --costs FILE`).

Formats (class names as the dataset names them; group names are free):

- JSON or TOML, nested groups: a table of groups, each a list of classes, a table of subgroups,
  or a list mixing both (JSON: `["Dress", {"shoes": ["Sandal", "Sneaker"]}]`); the top level is
  the root. A class may also stand at the top level as a group of one (`dress = ["Dress"]`).
- CSV, one edge per row: `parent,child` (a header row `parent,child` is optional). The classes
  are the children that are nobody's parent; the root is the one parent that is nobody's child
  (several such tops hang under an implicit root).

The cost of predicting b for true a is the height of their lowest common ancestor: the longest
path from that node down to a class, so two classes under one group of classes cost 1, and the
built-in clothing hierarchy gives 1 inside a group and 2 across the root (cnnrnn.costs scales
every matrix to a maximum of 1). In a tree whose classes sit at unequal depths this is the
definition of Bertinetto et al. (2020) made unique: the height of the subtree under the common
ancestor, not its distance from either class.

Every class must appear exactly once; a name that is not a class, a group that holds no class,
and a cycle are refused with a one-line error naming them.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnrnn.errors import CnnrnnError

SUFFIXES = (".json", ".toml", ".csv")
ROOT = "(root)"


@dataclass(frozen=True)
class Hierarchy:
    """A tree over `classes`: `children[node]` for every inner node (the root is ROOT); the
    leaves are the classes, by name."""

    classes: tuple[str, ...]
    children: dict[str, tuple[str, ...]]

    def height(self, node: str) -> int:
        """Edges on the longest path from `node` down to a class (0 for a class)."""
        kids = self.children.get(node, ())
        return 1 + max(self.height(k) for k in kids) if kids else 0

    def path(self, cls: str) -> list[str]:
        """The class, its group, ..., ROOT."""
        parent = {k: p for p, kids in self.children.items() for k in kids}
        out = [cls]
        while out[-1] != ROOT:
            out.append(parent[out[-1]])
        return out

    def under(self, node: str) -> frozenset[str]:
        """The classes under `node`."""
        kids = self.children.get(node, ())
        return frozenset().union(*(self.under(k) for k in kids)) if kids else frozenset({node})

    def costs(self) -> np.ndarray:
        """(K, K) unscaled: the height of each pair's lowest common ancestor, 0 on the
        diagonal; rows and columns in `classes` order."""
        paths = [self.path(c) for c in self.classes]
        k = len(self.classes)
        d = np.zeros((k, k))
        for i in range(k):
            for j in range(k):
                if i != j:
                    lca = next(n for n in paths[i] if n in paths[j])
                    d[i, j] = self.height(lca)
        return d

    def groups(self) -> list[frozenset[int]]:
        """The class indices under each inner node other than the root (groups of one class
        included; a tree builder drops them as it likes)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [frozenset(index[c] for c in self.under(node)) for node in self.children
                if node != ROOT]


def is_hierarchy_file(path: str | Path) -> bool:
    """Whether `path` holds a hierarchy rather than a cost matrix: TOML always; JSON when it is
    an object without a "costs" entry; CSV when its first cell that is not blank is not a
    number and its rows have two cells (parent,child)."""
    path = Path(path)
    if path.suffix == ".toml":
        return True
    if not path.is_file() or path.suffix not in SUFFIXES:
        return False
    text = path.read_text()
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return False
        return isinstance(obj, dict) and "costs" not in obj
    rows = [r for r in csv.reader(io.StringIO(text)) if any(x.strip() for x in r)]
    if not rows or any(len([x for x in r if x.strip()]) != 2 for r in rows):
        return False
    try:
        float(rows[-1][0])
        return False
    except ValueError:
        return True


def from_groups(groups: dict[str, Any], classes: Sequence[str],
                where: str = "hierarchy") -> Hierarchy:
    """The hierarchy of nested `groups` (as a JSON or TOML file holds them) over `classes`."""
    return _checked(_nested(groups, where), tuple(classes), where)


def read_hierarchy(path: str | Path, classes: Sequence[str]) -> Hierarchy:
    """The hierarchy in file `path` over `classes` (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise CnnrnnError(f"hierarchy file {path} not found")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            children = _nested(tomllib.loads(text), str(path))
        elif path.suffix == ".json":
            children = _nested(json.loads(text), str(path))
        else:
            children = _edges(text, str(path))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise CnnrnnError(f"{path} is not valid {path.suffix[1:].upper()} ({e})") from None
    return _checked(children, tuple(classes), str(path))


def _nested(obj: Any, where: str) -> dict[str, tuple[str, ...]]:
    """{node: its children} of nested groups; the top level is ROOT."""
    if not isinstance(obj, dict):
        raise CnnrnnError(f"{where}: a hierarchy is a table of groups at the top level, for "
                          'example {"tops": ["Shirt", "Coat"], "shoes": ["Sandal", "Sneaker"]}')
    children: dict[str, list[str]] = {}
    names: set[str] = set()

    def add(node: str, value: Any) -> None:
        if node in children:
            raise CnnrnnError(f"{where}: the group {node!r} is defined twice; give each group "
                              "one name")
        children[node] = []
        items = [value] if isinstance(value, str | dict) else value
        if not isinstance(items, list):
            raise CnnrnnError(f"{where}: group {node!r} holds {value!r}; a group holds class "
                              "names and groups")
        for item in items:
            if isinstance(item, str):
                children[node].append(item)
                names.add(item)
            elif isinstance(item, dict):
                for name, sub in item.items():
                    add(name, sub)
                    children[node].append(name)
            else:
                raise CnnrnnError(f"{where}: group {node!r} holds {item!r}; a group holds "
                                  "class names and groups")

    add(ROOT, obj)
    return {k: tuple(v) for k, v in children.items()}


def _edges(text: str, where: str) -> dict[str, tuple[str, ...]]:
    """{node: its children} from parent,child rows."""
    rows = [[x.strip() for x in r] for r in csv.reader(io.StringIO(text))
            if any(x.strip() for x in r)]
    if rows and [x.lower() for x in rows[0]] == ["parent", "child"]:
        rows = rows[1:]
    children: dict[str, list[str]] = {}
    parent: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        if len(row) != 2 or not all(row):
            raise CnnrnnError(f"{where}: row {n} is {','.join(row)!r}; each row is parent,child")
        p, c = row
        if c in parent and parent[c] != p:
            raise CnnrnnError(f"{where}: {c!r} has two parents ({parent[c]!r} and {p!r}); a "
                              "hierarchy is a tree")
        parent[c] = p
        children.setdefault(p, []).append(c)
    tops = [p for p in children if p not in parent]
    if not tops:
        raise CnnrnnError(f"{where}: every parent is also a child: the rows make a cycle")
    for start in parent:  # a cycle below the tops
        seen, node = set(), start
        while node in parent:
            if node in seen:
                raise CnnrnnError(f"{where}: the rows make a cycle through {node!r}")
            seen.add(node)
            node = parent[node]
    out = {k: tuple(v) for k, v in children.items()}
    out[ROOT] = tuple(tops) if len(tops) > 1 else out.pop(tops[0])
    return out


def _checked(children: dict[str, tuple[str, ...]], classes: tuple[str, ...],
             where: str) -> Hierarchy:
    leaves = [c for kids in children.values() for c in kids if c not in children]
    clash = [node for node in children if node in classes]
    if clash:
        raise CnnrnnError(f"{where}: the group {clash[0]!r} has a class's name; name the group "
                          "otherwise")
    for name in leaves:
        if name not in classes:
            close = difflib.get_close_matches(name, classes, n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"the classes are {', '.join(classes)}"
            raise CnnrnnError(f"{where}: {name!r} is not a class and holds no group; {hint}")
    seen: set[str] = set()
    for name in leaves:
        if name in seen:
            raise CnnrnnError(f"{where}: the class {name!r} appears twice; a class has one place "
                              "in a hierarchy")
        seen.add(name)
    missing = [c for c in classes if c not in seen]
    if missing:
        raise CnnrnnError(f"{where} leaves out {', '.join(map(repr, missing))}; place every "
                          "class in the hierarchy")
    empty = [node for node, kids in children.items() if not kids]
    if empty:
        raise CnnrnnError(f"{where}: the group {empty[0]!r} holds no class; remove it or fill it")
    if len(classes) < 2:
        raise CnnrnnError(f"{where}: a hierarchy needs at least two classes")
    return Hierarchy(classes, children)
