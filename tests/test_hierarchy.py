"""cnnrnn.hierarchy: your own class hierarchy from a JSON, TOML or parent,child CSV file, as a
cost matrix (height of the lowest common ancestor) and as HXE's tree; hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnrnn.costs import (
    CLASSES,
    HIERARCHY,
    hierarchy_costs,
    load_costs,
    read_costs,
    write_costs,
)
from cnnrnn.errors import CnnrnnError
from cnnrnn.hierarchy import from_groups, is_hierarchy_file, read_hierarchy
from cnnrnn.trees import class_tree, hierarchy_tree

IDX = {name: i for i, name in enumerate(CLASSES)}

BUILT_IN_TOML = "\n".join(f"{group} = {json.dumps(list(names))}"
                          for group, names in HIERARCHY.items())
BUILT_IN_CSV = "parent,child\n" + "".join(
    f"clothing,{group}\n" + "".join(f"{group},{name}\n" for name in names)
    for group, names in HIERARCHY.items())
# three levels, classes at unequal depths: Coat alone under `upper`, the shoes under `rest`
DEEP = {"upper": {"tops": ["T-shirt/top", "Pullover", "Shirt"], "outer": ["Coat"]},
        "lower": ["Trouser", "Dress"],
        "rest": ["Bag", {"shoes": ["Sandal", "Sneaker", "Ankle boot"]}]}


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text", [("h.toml", BUILT_IN_TOML), ("h.csv", BUILT_IN_CSV),
                                        ("h.json", json.dumps(HIERARCHY))])
def test_the_built_in_hierarchy_written_to_a_file_gives_the_built_in_costs_and_tree(
        tmp_path, name, text):
    path = write(tmp_path, name, text)
    assert is_hierarchy_file(path)
    assert np.array_equal(load_costs(path), hierarchy_costs())
    assert class_tree(str(path)) == hierarchy_tree()


def test_a_deep_hierarchy_costs_the_height_of_the_lowest_common_ancestor(tmp_path):
    costs = load_costs(write(tmp_path, "deep.json", json.dumps(DEEP))) * 3  # root height 3

    def c(a, b):
        return costs[IDX[a], IDX[b]]

    assert c("Shirt", "T-shirt/top") == pytest.approx(1)  # tops
    assert c("Shirt", "Coat") == pytest.approx(2)  # upper: tops is one level below it
    assert c("Trouser", "Dress") == pytest.approx(1)  # lower
    assert c("Bag", "Sandal") == pytest.approx(2)  # rest, over shoes
    assert c("Sandal", "Ankle boot") == pytest.approx(1)  # shoes
    assert c("Shirt", "Sandal") == pytest.approx(3)  # the root
    assert c("Dress", "Coat") == pytest.approx(3)
    assert np.allclose(costs, costs.T) and np.allclose(np.diag(costs), 0)
    tree = class_tree(str(tmp_path / "deep.json"))
    groups = {frozenset(CLASSES[k] for k in g) for g in tree.groups()}
    # Coat's group of one collapses; every other group is a node
    assert groups == {frozenset({"T-shirt/top", "Pullover", "Shirt"}),
                      frozenset({"T-shirt/top", "Pullover", "Shirt", "Coat"}),
                      frozenset({"Trouser", "Dress"}),
                      frozenset({"Sandal", "Sneaker", "Ankle boot"}),
                      frozenset({"Bag", "Sandal", "Sneaker", "Ankle boot"})}


def test_a_hierarchy_over_any_classes():
    classes = ["oak", "pine", "rose", "tulip", "carp", "trout", "eagle"]
    h = from_groups({"plants": {"trees": ["oak", "pine"], "flowers": ["rose", "tulip"]},
                     "animals": {"fish": ["carp", "trout"], "birds": ["eagle"]}}, classes)
    expected = np.array([[0, 1, 2, 2, 3, 3, 3], [1, 0, 2, 2, 3, 3, 3], [2, 2, 0, 1, 3, 3, 3],
                         [2, 2, 1, 0, 3, 3, 3], [3, 3, 3, 3, 0, 1, 2], [3, 3, 3, 3, 1, 0, 2],
                         [3, 3, 3, 3, 2, 2, 0]])
    assert np.array_equal(h.costs(), expected)


def test_csv_edges_with_several_tops_hang_under_one_root(tmp_path):
    rows = "".join(f"{g},{n}\n" for g, names in HIERARCHY.items() for n in names)
    path = write(tmp_path, "tops.csv", rows)  # no header, no single root: five tops
    assert np.array_equal(load_costs(path), hierarchy_costs())


def test_cost_matrix_files_are_not_taken_for_hierarchies(tmp_path):
    written = write_costs(tmp_path / "c.csv", hierarchy_costs(), "test")
    for path in written:
        assert not is_hierarchy_file(path)
        assert np.allclose(read_costs(path), hierarchy_costs(), atol=1e-6)
    bare = write(tmp_path, "bare.csv", "\n".join(",".join(f"{x:g}" for x in row)
                                                 for row in hierarchy_costs()))
    assert not is_hierarchy_file(bare)


@pytest.mark.parametrize("text, message", [
    (BUILT_IN_TOML.replace('"T-shirt/top"', '"Tshirt/top"'),
     "'Tshirt/top' is not a class and holds no group; did you mean 'T-shirt/top'?"),
    (BUILT_IN_TOML + '\nagain = ["Shirt"]', "the class 'Shirt' appears twice"),
    ('a = ["Shirt", "Coat"]', "leaves out 'T-shirt/top', 'Trouser'"),
    (BUILT_IN_TOML + "\nz = 3", "group 'z' holds 3"),
    (BUILT_IN_TOML + "\nz = []", "the group 'z' holds no class"),
])
def test_bad_hierarchy_files_get_one_line_errors(tmp_path, text, message):
    with pytest.raises(CnnrnnError) as info:
        read_hierarchy(write(tmp_path, "bad.toml", text), CLASSES)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_edge_files_get_one_line_errors(tmp_path):
    with pytest.raises(CnnrnnError, match="has two parents"):
        read_hierarchy(write(tmp_path, "two.csv", "a,Shirt\nb,Shirt\n"), CLASSES)
    with pytest.raises(CnnrnnError, match="cycle"):
        read_hierarchy(write(tmp_path, "loop.csv", "a,b\nb,a\n"), CLASSES)
    with pytest.raises(CnnrnnError, match="each row is parent,child"):
        read_hierarchy(write(tmp_path, "short.csv", "parent,child\na,b,c\n"), CLASSES)
    with pytest.raises(CnnrnnError, match="has a class's name"):
        from_groups({"Shirt": ["Shirt"]}, ["Shirt", "Coat"])
    with pytest.raises(CnnrnnError, match="is not valid TOML"):
        read_hierarchy(write(tmp_path, "broken.toml", "a = ["), CLASSES)


def test_analyze_costs_writes_your_hierarchy_and_refuses_it_with_another_source(
        tmp_path, user_error):
    from typer.testing import CliRunner

    from cnnrnn.cli import app

    hier = write(tmp_path, "deep.json", json.dumps(DEEP))
    out = tmp_path / "deep-costs.csv"
    result = CliRunner().invoke(app, ["analyze", "costs", "hierarchy", "--hierarchy", str(hier),
                                      "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert np.allclose(read_costs(out), load_costs(hier), atol=1e-6)
    line = user_error("analyze", "costs", "confusion", tmp_path, "--hierarchy", hier)
    assert "--hierarchy goes with the source hierarchy" in line
