"""Synthetic mosaics: labels match the items placed, splits stay apart, priors hold, files load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnrnn.data.fashion_mnist import CLASSES, train_val_split
from cnnrnn.data.mosaics import (
    CELL,
    MosaicGenerator,
    MosaicLayout,
    load_mosaics,
    make_split_mosaics,
    save_mosaics,
    split_pool,
)
from cnnrnn.data.priors import (
    Prior,
    available_priors,
    load_prior,
    mix_priors,
    prior_from_dict,
)
from cnnrnn.errors import CnnrnnError, ConfigError, DataError

PRIORS = ("independent", "outfits")
SIGMAS = 5.0  # binomial bound for frequency checks; fixed seeds make them repeatable


@pytest.fixture(scope="module")
def train_pool(fmnist) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = split_pool(fmnist, "train")
    return images, labels


def cells_of(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(n, S, S) canvas -> (n, grid*grid, 28, 28) cells in row-major order."""
    n = len(images)
    return images.view(n, grid, CELL, grid, CELL).permute(0, 1, 3, 2, 4).reshape(
        n, grid * grid, CELL, CELL)


def assert_within_binomial(observed: torch.Tensor, p: torch.Tensor, n: int, what: str) -> None:
    sigma = torch.sqrt(p * (1 - p) / n).clamp(min=1.0 / n)
    z = (observed.double() - p).abs() / sigma
    assert bool((z <= SIGMAS).all()), f"{what}: observed {observed}, expected {p}, z {z}"


# --- labels equal what was placed ------------------------------------------------------------

@pytest.mark.parametrize("prior_name", PRIORS)
def test_labels_are_the_classes_of_the_items_placed(train_pool, prior_name):
    images, labels = train_pool
    gen = MosaicGenerator(images, labels, load_prior(prior_name))
    x, y, items = gen.sample(400, torch.Generator().manual_seed(1), return_items=True)
    assert x.shape == (400, 56, 56) and x.dtype == torch.uint8
    assert y.shape == (400, 10) and y.dtype == torch.uint8
    assert items.shape == (400, 4) and items.dtype == torch.int64
    cells = cells_of(x, 2)
    for i in range(len(x)):
        placed = set()
        for c in range(4):
            if items[i, c] < 0:
                assert int(cells[i, c].max()) == 0, "an empty cell must be black"
            else:
                assert torch.equal(cells[i, c], images[items[i, c]])
                placed.add(int(labels[items[i, c]]))
        assert 1 <= len(placed) <= 4
        assert {k for k in range(10) if y[i, k]} == placed
        assert set(y[i].tolist()) <= {0, 1}


def test_item_count_distribution_is_respected(train_pool):
    images, labels = train_pool
    # Skewed, with zero weights, so uniform placement or an off-by-one would show.
    prior = prior_from_dict({"item_counts": [0, 1, 0, 3], "classes": {"Bag": 1, "Coat": 2}},
                            name="skewed")
    n = 20_000
    _, _, items = MosaicGenerator(images, labels, prior).sample(
        n, torch.Generator().manual_seed(2), return_items=True)
    counts = (items >= 0).sum(1)
    observed = torch.stack([(counts == m).float().mean() for m in range(5)])
    expected = torch.tensor([0.0, 0.0, 0.25, 0.0, 0.75], dtype=torch.float64)
    assert_within_binomial(observed, expected, n, "items per mosaic")
    # Which cells are used is uniform: each cell holds an item with probability E[m] / 4.
    occupancy = torch.full((4,), 3.5 / 4, dtype=torch.float64)
    assert_within_binomial((items >= 0).float().mean(0), occupancy, n, "cell occupancy")


def test_items_are_drawn_uniformly_from_their_class(train_pool):
    images, labels = train_pool
    n = 20_000
    _, _, items = MosaicGenerator(images, labels, load_prior("independent")).sample(
        n, torch.Generator().manual_seed(13), return_items=True)
    used = items[items >= 0]
    # Rank of each used item among the pool items of its class, as a fraction of the class:
    # uniform on [0, 1) when every item of the class is equally likely.
    rank_in_class = torch.empty(len(labels))
    for k in range(10):
        members = torch.nonzero(labels == k).flatten()
        rank_in_class[members] = torch.arange(len(members)) / len(members)
    r = rank_in_class[used].double()
    for q in (0.25, 0.5, 0.75):
        assert_within_binomial((r < q).double().mean()[None], torch.tensor([q]).double(),
                               len(r), f"P(rank < {q})")


# --- priors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("prior_name", PRIORS)
def test_prior_reproduces_its_label_and_class_frequencies(train_pool, prior_name):
    images, labels = train_pool
    prior = load_prior(prior_name)
    n = 20_000
    _, y, items = MosaicGenerator(images, labels, prior).sample(
        n, torch.Generator().manual_seed(3), return_items=True)
    assert_within_binomial(y.float().mean(0), prior.label_frequencies(), n, "P(label present)")
    placed = labels[items[items >= 0]]
    per_item = torch.bincount(placed, minlength=10).float() / len(placed)
    assert_within_binomial(per_item, prior.class_marginal(), len(placed), "P(item class)")
    counts = (items >= 0).sum(1)
    observed = torch.stack([(counts == m).float().mean() for m in range(1, 5)])
    assert_within_binomial(observed, torch.tensor(prior.item_counts, dtype=torch.float64), n,
                           "items per mosaic")


def test_label_frequencies_match_a_hand_computation():
    # One theme, classes 0 and 1 at 1/2 each, always 2 items: P(present) = 1 - 1/4 = 3/4 each.
    two = prior_from_dict({"item_counts": [0, 1], "classes": {CLASSES[0]: 1, CLASSES[1]: 1}},
                          name="two")
    assert two.label_frequencies()[:2].tolist() == pytest.approx([0.75, 0.75])
    assert two.label_frequencies()[2:].abs().max() == 0
    # Two themes of weight 1/2, one item: P(present) = mixture of the themes' class weights.
    mix = prior_from_dict({"item_counts": [1], "themes": {
        "a": {"weight": 1, "classes": {CLASSES[2]: 1}},
        "b": {"weight": 1, "classes": {CLASSES[2]: 1, CLASSES[3]: 3}}}}, name="mix")
    assert mix.label_frequencies()[2].item() == pytest.approx(0.5 + 0.5 * 0.25)
    assert mix.label_frequencies()[3].item() == pytest.approx(0.5 * 0.75)


def test_outfits_labels_are_unequal_and_co_occur(train_pool):
    outfits = load_prior("outfits")
    freq = outfits.label_frequencies()
    assert bool((freq > 0).all()), "every class must be able to appear"
    assert float(freq.max() / freq.min()) >= 3.0
    assert len(outfits.theme_names) >= 4
    # No theme holds both a sneaker and a dress, so under outfits they never meet;
    # under independent they do.
    sneaker, dress = CLASSES.index("Sneaker"), CLASSES.index("Dress")
    images, labels = train_pool
    for name, should_meet in (("outfits", False), ("independent", True)):
        _, y = MosaicGenerator(images, labels, load_prior(name)).sample(
            5000, torch.Generator().manual_seed(4))
        met = bool((y[:, sneaker] & y[:, dress]).any())
        assert met == should_meet, name


def test_mixed_priors_draw_each_prior_by_its_share(train_pool):
    outfits, independent = load_prior("outfits"), load_prior("independent")
    mix = mix_priors(outfits, independent, 0.25)
    expected = 0.75 * outfits.label_frequencies() + 0.25 * independent.label_frequencies()
    assert torch.allclose(mix.label_frequencies(), expected)
    images, labels = train_pool
    n = 20_000
    _, y = MosaicGenerator(images, labels, mix).sample(n, torch.Generator().manual_seed(5))
    assert_within_binomial(y.float().mean(0), expected, n, "P(label present), mixed")
    # Sneaker and Dress never meet under outfits: under the mix they meet about a quarter
    # as often as under independent
    sneaker, dress = CLASSES.index("Sneaker"), CLASSES.index("Dress")
    _, y_ind = MosaicGenerator(images, labels, independent).sample(
        n, torch.Generator().manual_seed(6))
    met = (y[:, sneaker] & y[:, dress]).float().mean()
    met_ind = (y_ind[:, sneaker] & y_ind[:, dress]).float().mean()
    assert 0.15 < float(met / met_ind) < 0.35
    assert mix_priors(outfits, independent, 0.0).label_frequencies().equal(
        outfits.label_frequencies())
    assert mix_priors(independent, load_prior("independent"), 0.2) is independent
    one = prior_from_dict({"item_counts": [1], "classes": {CLASSES[0]: 1}}, name="one")
    with pytest.raises(ConfigError, match="different numbers of items"):
        mix_priors(outfits, one, 0.5)


def test_independent_frequencies_are_the_outfits_per_item_marginal():
    # The documented design: the two priors differ only in co-occurrence.
    independent, outfits = load_prior("independent"), load_prior("outfits")
    assert independent.item_counts == outfits.item_counts
    assert torch.allclose(independent.class_marginal(), outfits.class_marginal(), atol=1e-3)
    freq = independent.label_frequencies()
    assert float(freq.max() / freq.min()) > 1.5, "independent frequencies should be unequal"


def test_prior_names_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(PRIORS) <= set(available_priors())
    assert load_prior("outfits").name == "outfits"
    path = Path(__file__).resolve().parents[1] / "configs" / "mosaics" / "independent.toml"
    assert load_prior(path) == load_prior("independent")
    assert load_prior(str(path)).name == "independent"


def test_unknown_prior_lists_the_known_ones():
    known = r"independent, inverted, outfits, street"  # the shipped priors, held-out ones too
    with pytest.raises(CnnrnnError, match=rf"unknown prior 'outfit'.*{known}"):
        load_prior("outfit")
    with pytest.raises(ConfigError, match=r"prior file .*nope\.toml not found"):
        load_prior("nope.toml")


@pytest.mark.parametrize("text, message", [
    ('item_counts = [1]\ncolour = 1\n[classes]\nBag = 1\n', r"unknown key 'colour'"),
    ('item_counts = [1]\n[classes]\nBags = 1\n', r"unknown key 'classes\.Bags'"),
    ('item_counts = [1]\n[classes]\nBag = -1\n', r"'classes\.Bag' must be a finite number >= 0"),
    ('item_counts = [1]\n[classes]\nBag = "x"\n', r"'classes\.Bag' must be a number"),
    ('item_counts = [1]\n[classes]\nBag = 0\n', r"'classes' has weights summing to 0"),
    ('item_counts = [0, 0]\n[classes]\nBag = 1\n', r"'item_counts' has weights summing to 0"),
    ('item_counts = []\n[classes]\nBag = 1\n', r"'item_counts' must be a non-empty list"),
    ('[classes]\nBag = 1\n', r"missing key 'item_counts'"),
    ('item_counts = [1]\n', r"exactly one of \[classes\]"),
    ('item_counts = [1]\n[themes.a]\nweight = 1\nclasses = { Bag = 1 }\nshoes = 2\n',
     r"unknown key 'themes\.a\.shoes'"),
    ('item_counts = [1]\n[themes.a]\nclasses = { Bag = 1 }\n', r"missing key 'themes\.a\.weight'"),
    ('item_counts = [1]\n[themes.a]\nweight = true\nclasses = { Bag = 1 }\n',
     r"'themes\.a\.weight' must be a number"),
    ('item_counts = [1\n', r"not valid TOML"),
])
def test_bad_prior_file_is_a_one_line_config_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_prior(path)
    assert "\n" not in str(info.value)


def test_prior_is_frozen_and_validated():
    prior = load_prior("outfits")
    with pytest.raises(AttributeError):
        prior.name = "x"
    with pytest.raises(ConfigError, match="must sum to 1"):
        Prior(name="p", item_counts=(0.5,), theme_names=("all",), theme_weights=(1.0,),
              class_probs=((1.0,) + (0.0,) * 9,))


# --- determinism ----------------------------------------------------------------------------------

def test_same_seed_same_mosaics_other_seed_other_mosaics(train_pool):
    images, labels = train_pool
    gen = MosaicGenerator(images, labels, load_prior("outfits"))
    a = gen.sample(500, torch.Generator().manual_seed(7), return_items=True)
    b = gen.sample(500, torch.Generator().manual_seed(7), return_items=True)
    c = gen.sample(500, torch.Generator().manual_seed(8), return_items=True)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_split_seeds_differ_between_splits(fmnist):
    _, y_train = make_split_mosaics(fmnist, "train", 300, "outfits", seed=0)
    _, y_val = make_split_mosaics(fmnist, "val", 300, "outfits", seed=0)
    x_again, y_again = make_split_mosaics(fmnist, "train", 300, "outfits", seed=0)
    assert torch.equal(y_train, y_again)
    assert not torch.equal(y_train, y_val), "train and val must not share label sets"


# --- splits -----------------------------------------------------------------------------------

def _cell_bytes(images: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in images}


def test_splits_take_items_only_from_their_own_pool(fmnist):
    train_idx, val_idx = train_val_split(60000, 5000, seed=0)
    test_set = _cell_bytes(fmnist.test_images.numpy())
    val_set = _cell_bytes(fmnist.train_images[val_idx].numpy())
    train_set = _cell_bytes(fmnist.train_images[train_idx].numpy())
    sources = {"train": (fmnist.train_images, set(train_idx.tolist()), train_set),
               "val": (fmnist.train_images, set(val_idx.tolist()), val_set),
               "test": (fmnist.test_images, set(range(10000)), test_set)}
    for split, (source, allowed, own) in sources.items():
        x, y, items = make_split_mosaics(fmnist, split, 2000, "independent", seed=5,
                                         return_items=True)
        used = items[items >= 0]
        assert set(used.tolist()) <= allowed, split
        # By pixels too, so a wrong index mapping cannot hide a leak: every placed item is
        # an image of the split's own pool (Fashion-MNIST has no exact train/test duplicates).
        cells = cells_of(x, 2)[items >= 0].numpy()
        placed = _cell_bytes(cells)
        assert placed <= own, split
        for other, (_, _, pool) in sources.items():
            if other != split:
                assert not placed & pool, f"{split} mosaic holds a {other} item"
        assert torch.equal(torch.from_numpy(cells), source[used])


def test_pool_without_a_needed_class_is_an_error(train_pool):
    images, labels = train_pool
    keep = labels != CLASSES.index("Sneaker")
    with pytest.raises(DataError, match="no images of Sneaker"):
        MosaicGenerator(images[keep], labels[keep], load_prior("outfits"))
    with pytest.raises(DataError, match=r"\(N, 28, 28\) uint8"):
        MosaicGenerator(images.float(), labels, load_prior("outfits"))
    with pytest.raises(ConfigError, match="unknown split 'validation'"):
        split_pool(None, "validation")


# --- layout -----------------------------------------------------------------------------------

def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """img moved down dy and right dx inside its 28x28 frame, cut at the edges."""
    out = np.zeros_like(img)
    src = img[max(0, -dy):CELL - max(0, dy), max(0, -dx):CELL - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def test_jitter_shifts_items_within_their_cell(train_pool):
    images, labels = train_pool
    j = 3
    gen = MosaicGenerator(images, labels, load_prior("outfits"), MosaicLayout(jitter=j))
    x, y, items = gen.sample(60, torch.Generator().manual_seed(9), return_items=True)
    assert x.shape == (60, 56, 56)
    cells, shifts = cells_of(x, 2).numpy(), set()
    for i, c in zip(*np.nonzero(items.numpy() >= 0), strict=True):
        src = images[items[i, c]].numpy()
        match = [(dy, dx) for dy in range(-j, j + 1) for dx in range(-j, j + 1)
                 if np.array_equal(cells[i, c], _shifted(src, dy, dx))]
        assert match, "a jittered cell must be its item shifted by at most `jitter` pixels"
        shifts.add(match[0])
    assert len(shifts) > 10, "shifts should vary"
    assert (cells[items.numpy() < 0] == 0).all()
    # The layout draws come after the item draws: the same seed places the same items.
    _, y0, items0 = MosaicGenerator(images, labels, load_prior("outfits")).sample(
        60, torch.Generator().manual_seed(9), return_items=True)
    assert torch.equal(items, items0) and torch.equal(y, y0)


def test_scale_shrinks_items_inside_their_cell(train_pool):
    images, labels = train_pool
    gen = MosaicGenerator(images, labels, load_prior("outfits"),
                          MosaicLayout(scale_min=0.5, scale_max=0.5))
    x, _, items = gen.sample(200, torch.Generator().manual_seed(10), return_items=True)
    cells = cells_of(x, 2)
    occupied = items >= 0
    assert int(cells[~occupied].max()) == 0
    for cell in cells[occupied]:
        rows = torch.nonzero(cell.amax(1)).flatten()
        cols = torch.nonzero(cell.amax(0)).flatten()
        # 14 pixels when halved, plus one for bilinear bleed at a sub-pixel position.
        assert len(rows) and rows[-1] - rows[0] < 15 and cols[-1] - cols[0] < 15
    ink_ratio = cells[occupied].double().sum() / images[items[occupied]].double().sum()
    assert 0.15 < float(ink_ratio) < 0.35, "halving an item keeps about a quarter of its ink"


def test_larger_grid_with_all_options(train_pool):
    images, labels = train_pool
    prior = prior_from_dict({"item_counts": [1] * 9, "classes": dict.fromkeys(CLASSES, 1)},
                            name="nine")
    layout = MosaicLayout(grid=3, jitter=2, scale_min=0.6)
    x, y, items = MosaicGenerator(images, labels, prior, layout).sample(
        300, torch.Generator().manual_seed(11), return_items=True)
    assert layout.size == 84 and x.shape == (300, 84, 84) and items.shape == (300, 9)
    assert (items >= 0).sum(1).max() == 9
    cells = cells_of(x, 3)
    assert int(cells[items < 0].max()) == 0
    assert bool((cells[items >= 0].flatten(1).amax(1) > 0).all())
    expected = torch.zeros(300, 10, dtype=torch.uint8)
    for i, c in zip(*torch.nonzero(items >= 0, as_tuple=True), strict=True):
        expected[i, labels[items[i, c]]] = 1
    assert torch.equal(y, expected)


def test_layout_and_prior_must_fit():
    with pytest.raises(ConfigError, match="jitter must be an integer in 0..27"):
        MosaicLayout(jitter=28)
    with pytest.raises(ConfigError, match="scale_min <= scale_max"):
        MosaicLayout(scale_min=0.8, scale_max=0.5)
    with pytest.raises(ConfigError, match="grid must be an integer"):
        MosaicLayout(grid=0)
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    labels = torch.arange(10)
    with pytest.raises(ConfigError, match=r"allows 4 items but a 1x1 grid has 1 cells"):
        MosaicGenerator(images, labels, load_prior("outfits"), MosaicLayout(grid=1))
    with pytest.raises(ConfigError, match="number of mosaics must be at least 1, got 0"):
        MosaicGenerator(images, labels, load_prior("outfits")).sample(0, torch.Generator())


# --- files --------------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path, train_pool):
    images, labels = train_pool
    x, y = MosaicGenerator(images, labels, load_prior("outfits")).sample(
        100, torch.Generator().manual_seed(12))
    path = save_mosaics(tmp_path / "sub" / "m.npz", x, y)
    assert path == tmp_path / "sub" / "m.npz" and not list(path.parent.glob("*.tmp"))
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["images", "labels"]
        assert npz["images"].dtype == np.uint8 and npz["labels"].shape == (100, 10)
    x2, y2 = load_mosaics(path)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def _npz(path: Path, **arrays) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((2, 56, 56), np.uint8)}, r"missing array 'labels'"),
    ({"images": np.zeros((2, 56, 56), np.float32), "labels": np.zeros((2, 10), np.uint8)},
     r"images must be a \(N, S, S\) uint8 array.*float32"),
    ({"images": np.zeros((2, 56, 50), np.uint8), "labels": np.zeros((2, 10), np.uint8)},
     r"images must be square"),
    ({"images": np.zeros((2, 56, 56), np.uint8), "labels": np.zeros((2, 10), np.int64)},
     r"labels must be a \(2, 10\) uint8 array.*int64"),
    ({"images": np.zeros((2, 56, 56), np.uint8), "labels": np.zeros((3, 10), np.uint8)},
     r"labels must be a \(2, 10\) uint8 array"),
    ({"images": np.zeros((2, 56, 56), np.uint8), "labels": np.full((2, 10), 2, np.uint8)},
     r"multi-hot"),
    ({"images": np.array([{"a": 1}], dtype=object), "labels": np.zeros((1, 10), np.uint8)},
     r"not a readable \.npz"),
])
def test_bad_mosaic_file_is_a_one_line_error(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_mosaics(path)
    assert "\n" not in str(info.value)


def test_missing_or_corrupt_mosaic_file(tmp_path):
    with pytest.raises(DataError, match=r"mosaic file .*none\.npz not found"):
        load_mosaics(tmp_path / "none.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_mosaics(garbage)
    with pytest.raises(DataError, match="labels must be"):
        save_mosaics(tmp_path / "x.npz", np.zeros((2, 56, 56), np.uint8),
                     np.zeros((2, 9), np.uint8))
    assert not (tmp_path / "x.npz").exists()


def test_binomial_bound_can_fail():
    # The frequency checks above are only as good as this bound: a real difference must trip it.
    with pytest.raises(AssertionError):
        assert_within_binomial(torch.tensor([0.30]), torch.tensor([0.25], dtype=torch.float64),
                               20_000, "shifted")
