"""Class trees for the hierarchical cross-entropy (cnnrnn.losses.HierarchicalCrossEntropy).

A tree over the ten classes: nodes 0..9 are the classes (the leaves), the rest are groups,
and the last node is the root. Two sources:

- `hierarchy`: the clothing hierarchy (cnnrnn.costs.HIERARCHY), root -> groups -> classes.
  A group of one class (Dress, Trouser, Bag) is collapsed: the class is a direct child of the
  root. Under HXE's depth weighting a one-child node changes nothing (its conditional
  probability is 1 and the edge above it has the same weight the class's own edge would
  have), and collapsing gives the tree the clustering of the hierarchy's cost matrix gives.
- your own hierarchy file (JSON or TOML groups, a parent,child CSV: cnnrnn.hierarchy): its
  own tree, groups of one class collapsed as above.
- any cost matrix (a CSV/JSON file, say the cosine distances of a CNN-RNN's rows of U_l):
  agglomerative clustering, `scipy.cluster.hierarchy.linkage` with method 'average' on the
  condensed costs. Linkage merges two clusters at a time; a merge at the same height as the
  merge above it (to 1e-9) joins that node instead, so classes at equal cost form one group of
  more than two (the hierarchy's matrix gives back the four tops and the three shoes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cnnrnn.costs import HIERARCHY, K, check_costs, load_costs
from cnnrnn.data.fashion_mnist import CLASSES
from cnnrnn.errors import CnnrnnError
from cnnrnn.hierarchy import is_hierarchy_file, read_hierarchy

HEIGHT_TOL = 1e-9  # merges closer in height than this are one node


@dataclass(frozen=True)
class ClassTree:
    """leaves[i]: the classes under node i; parent[i]: node i's parent (-1 for the root).
    Nodes 0..K-1 are the classes, in CLASSES order; the root is the last node."""

    leaves: tuple[frozenset[int], ...]
    parent: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.leaves)
        if n != len(self.parent) or self.parent[-1] != -1 or self.leaves[-1] != set(range(K)):
            raise CnnrnnError("a class tree ends with its root, the node over all classes")
        for i in range(K):
            if self.leaves[i] != {i}:
                raise CnnrnnError(f"node {i} of a class tree is the class {CLASSES[i]!r}")
        for i, p in enumerate(self.parent[:-1]):
            if not (i < p < n and self.leaves[i] < self.leaves[p]):
                raise CnnrnnError(f"node {i}'s parent {p} does not hold its classes")

    def path(self, node: int) -> list[int]:
        """Node, its parent, ..., the root."""
        out = [node]
        while self.parent[out[-1]] != -1:
            out.append(self.parent[out[-1]])
        return out

    def depth(self, node: int) -> int:
        """Edges from the root: 0 for the root, 1 for its children."""
        return len(self.path(node)) - 1

    def groups(self) -> set[frozenset[int]]:
        """The classes under each node that is neither a class nor the root."""
        return set(self.leaves[K:-1])

    def mask(self) -> np.ndarray:
        """(N, K) bool: mask[i, k] when class k is under node i."""
        m = np.zeros((len(self.leaves), K), dtype=bool)
        for i, under in enumerate(self.leaves):
            m[i, sorted(under)] = True
        return m


def _build(groups: list[frozenset[int]]) -> ClassTree:
    """The tree of nested class sets `groups` (no classes, no root): each node's parent is the
    smallest set that holds it."""
    nodes = [frozenset({k}) for k in range(K)]
    nodes += sorted(set(groups) - set(nodes) - {frozenset(range(K))}, key=len)
    nodes.append(frozenset(range(K)))
    parent = [min((j for j in range(i + 1, len(nodes)) if nodes[i] < nodes[j]),
                  key=lambda j: len(nodes[j])) for i in range(len(nodes) - 1)]
    return ClassTree(tuple(nodes), (*parent, -1))


def hierarchy_tree() -> ClassTree:
    """cnnrnn.costs.HIERARCHY: root -> tops, footwear; Dress, Trouser and Bag under the root."""
    index = {name: i for i, name in enumerate(CLASSES)}
    return _build([frozenset(index[n] for n in names) for names in HIERARCHY.values()
                   if len(names) > 1])


def tree_from_costs(costs: np.ndarray) -> ClassTree:
    """Average-linkage clustering of a (K, K) cost matrix; merges of equal height are one node."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    c = check_costs(costs, "cost matrix", scale=False)
    z = linkage(squareform(c, checks=False), method="average")
    members = [frozenset({k}) for k in range(K)]
    heights = [0.0] * K
    for a, b, h, _ in z:
        members.append(members[int(a)] | members[int(b)])
        heights.append(float(h))
    parent = {}
    for node, (a, b, _, _) in enumerate(z, start=K):
        parent[int(a)], parent[int(b)] = node, node
    # a merge at its parent's height is not a node of its own
    kept = [members[i] for i in range(K, len(members) - 1)
            if heights[parent[i]] - heights[i] > HEIGHT_TOL]
    return _build(kept)


def tree_from_file(path: str) -> ClassTree:
    """The tree of your own hierarchy file (cnnrnn.hierarchy); a group of one class is
    collapsed, as in hierarchy_tree."""
    return _build([g for g in read_hierarchy(path, CLASSES).groups() if len(g) > 1])


@functools.lru_cache(maxsize=8)
def class_tree(spec: str) -> ClassTree:
    """The tree for the cost spec of `single_label.costs`: `hierarchy`, a hierarchy file's
    own tree, or the clustering of the matrix a cost file holds."""
    if spec == "hierarchy":
        return hierarchy_tree()
    if is_hierarchy_file(spec):
        return tree_from_file(spec)
    return tree_from_costs(load_costs(spec))
