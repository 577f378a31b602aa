"""Synthetic multi-item images: Fashion-MNIST items on a grid of 28x28 cells.

A mosaic is a (grid*28, grid*28) uint8 canvas, by default 56x56 = 2x2 cells. Each cell holds
one Fashion-MNIST item or stays black (0). A label prior (`cnnrnn.data.priors`) says how many
items a mosaic holds and of which classes; the ground truth is the set of classes present, as a
multi-hot (10,) uint8 vector (a class in two cells is still a single 1).

Generation is vectorised over the batch with no Python loop (the default layout is a single
gather of pool images), deterministic for a torch.Generator, and fast enough to run on the fly
during training. Training and validation mosaics take items only from the training
images, split by `train_val_split`; test mosaics only from the test images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnrnn.data.fashion_mnist import CLASSES, FashionMNIST, train_val_split
from cnnrnn.data.priors import Prior, load_prior
from cnnrnn.errors import ConfigError, DataError
from cnnrnn.files import atomic_write

CELL = 28  # pixels per side of a cell: one Fashion-MNIST image
NUM_CLASSES = len(CLASSES)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MosaicLayout:
    """Where items go on the canvas. The default (2x2, no jitter, no scaling) pastes items as is.

    Fields:
        grid: cells per side; the canvas is (grid*28, grid*28) pixels.
        jitter: largest shift of an item within its cell, pixels, drawn uniformly per axis from
            -jitter..jitter; what leaves the cell is cut off, so cells never overlap.
        scale_min, scale_max: each item is shrunk by a factor drawn uniformly from
            [scale_min, scale_max] (bilinear resampling) and placed uniformly at random where it
            fits inside its cell (before jitter). 1.0 keeps items at 28x28.
    """

    grid: int = 2
    jitter: int = 0
    scale_min: float = 1.0
    scale_max: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or not (
            1 <= self.grid <= 16
        ):
            raise ConfigError(f"mosaic grid must be an integer in 1..16, got {self.grid!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int) or not (
            0 <= self.jitter < CELL
        ):
            raise ConfigError(f"mosaic jitter must be an integer in 0..{CELL - 1} pixels, "
                              f"got {self.jitter!r}")
        if not 0.1 <= self.scale_min <= self.scale_max <= 1.0:
            raise ConfigError("mosaic scale must satisfy 0.1 <= scale_min <= scale_max <= 1, got "
                              f"scale_min={self.scale_min}, scale_max={self.scale_max}")

    @property
    def cells(self) -> int:
        """Cells per mosaic, grid * grid."""
        return self.grid * self.grid

    @property
    def size(self) -> int:
        """Canvas side in pixels."""
        return self.grid * CELL

    @property
    def pastes_as_is(self) -> bool:
        """True when items are copied pixel for pixel (no jitter, no scaling)."""
        return self.jitter == 0 and self.scale_min == 1.0 and self.scale_max == 1.0


class MosaicGenerator:
    """Draws mosaics from a pool of items under a label prior and a layout.

    Per mosaic: a theme, a number of items m, m distinct cells chosen uniformly, a class per
    cell from the theme, then a uniformly random pool item of that class.

    Args:
        images: (N, 28, 28) uint8, the item pool.
        labels: (N,) int64 classes 0..9 of the pool items.
        prior: the label prior.
        layout: canvas layout; default 2x2, items pasted as is.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, prior: Prior,
                 layout: MosaicLayout = MosaicLayout()) -> None:
        if images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1:] != (CELL, CELL):
            raise DataError(f"mosaic item pool must be (N, {CELL}, {CELL}) uint8, got "
                            f"{tuple(images.shape)} {images.dtype}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise DataError(f"mosaic pool labels must be ({len(images)},) int64, got "
                            f"{tuple(labels.shape)} {labels.dtype}")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < NUM_CLASSES:
            raise DataError(f"mosaic pool labels must lie in 0..{NUM_CLASSES - 1}")
        if prior.max_items > layout.cells:
            raise ConfigError(f"prior {prior.name!r} allows {prior.max_items} items but a "
                              f"{layout.grid}x{layout.grid} grid has {layout.cells} cells; use a "
                              "larger grid or shorten item_counts")
        self.prior = prior
        self.layout = layout
        device = images.device

        # Items sorted by class, so "a random item of class k" is one index into a block.
        self._class_size = torch.bincount(labels, minlength=NUM_CLASSES)  # (K,)
        self._class_start = torch.cumsum(self._class_size, 0) - self._class_size  # (K,)
        self._by_class = torch.argsort(labels, stable=True)  # (N,)
        needed = prior.class_marginal().to(device) > 0
        missing = [CLASSES[k] for k in range(NUM_CLASSES)
                   if needed[k] and self._class_size[k] == 0]
        if missing:
            raise DataError(f"the item pool has no images of {', '.join(missing)}, which prior "
                            f"{prior.name!r} draws; give a pool with every class")
        # Row N of the pool is a black cell, so empty cells are filled by the same gather.
        self._pool = torch.cat([images, images.new_zeros(1, CELL, CELL)])  # (N + 1, 28, 28)
        self._blank = len(images)

        f64 = dict(dtype=torch.float64, device=device)
        self._theme_w = torch.tensor(prior.theme_weights, **f64)  # (T,)
        self._count_w = torch.tensor(prior.item_counts, **f64)  # (M,)
        probs = torch.tensor(prior.class_probs, **f64)  # (T, K)
        cdf = torch.cumsum(probs, 1)  # (T, K)
        # From each theme's last class of positive weight on, the CDF is exactly 1, so rounding
        # can never hand a u in [0.99999..., 1) to a class of zero weight (maybe absent here).
        for t, row in enumerate(probs):
            cdf[t, int(torch.nonzero(row).max()):] = 1.0
        self._class_cdf = cdf

    @property
    def device(self) -> torch.device:
        """Where the item pool lives, and so where mosaics are built."""
        return self._pool.device

    def to(self, device: torch.device | str) -> MosaicGenerator:
        """The same generator with its pool and tables on `device` (a GPU's memory), so its
        mosaics are built there; `sample` then needs a generator on that device."""
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(moved, name, value.to(device))
        return moved

    def sample(self, n: int, generator: torch.Generator, return_items: bool = False
               ) -> tuple[torch.Tensor, ...]:
        """Draw n mosaics; the same generator state gives the same mosaics. The generator
        must be on `self.device` (a CUDA generator draws other numbers than a CPU one).

        Returns:
            images: (n, S, S) uint8 with S = grid * 28.
            labels: (n, 10) uint8 multi-hot set of the classes present.
            items (only if return_items): (n, cells) int64 pool index of the item in each cell,
                cells in row-major order, -1 where the cell is empty.
        """
        if n < 1:
            raise ConfigError(f"number of mosaics must be at least 1, got {n}")
        g, C, device = generator, self.layout.cells, self._pool.device
        theme = torch.multinomial(self._theme_w, n, replacement=True, generator=g)  # (n,)
        m = torch.multinomial(self._count_w, n, replacement=True, generator=g) + 1  # (n,)
        # The m cells with the smallest random keys: every set of m cells is equally likely.
        keys = torch.rand(n, C, generator=g, device=device)  # (n, C)
        occupied = keys.argsort(1).argsort(1) < m[:, None]  # (n, C)
        # Class per cell by inverse CDF of its mosaic's theme; zero-weight classes never win.
        u = torch.rand(n, C, generator=g, dtype=torch.float64, device=device)  # (n, C)
        cls = torch.searchsorted(self._class_cdf[theme], u, right=True)  # (n, C)
        v = torch.rand(n, C, generator=g, dtype=torch.float64, device=device)  # (n, C)
        size = self._class_size[cls]  # (n, C)
        offset = torch.minimum((v * size).long(), size - 1)  # v * size can round up to size
        item = self._by_class[self._class_start[cls] + offset]  # (n, C)

        tiles = self._pool[torch.where(occupied, item, self._blank)]  # (n, C, 28, 28)
        if not self.layout.pastes_as_is:
            tiles[occupied] = self._place(tiles[occupied], g)  # empty cells stay black as they are
        G = self.layout.grid
        images = (tiles.view(n, G, G, CELL, CELL).permute(0, 1, 3, 2, 4)  # (n, G, 28, G, 28)
                  .reshape(n, G * CELL, G * CELL))
        present = torch.where(occupied, cls, NUM_CLASSES)  # (n, C); K marks an empty cell
        labels = F.one_hot(present, NUM_CLASSES + 1)[..., :NUM_CLASSES].amax(1)  # (n, K)
        labels = labels.to(torch.uint8)
        if return_items:
            return images, labels, torch.where(occupied, item, -1)
        return images, labels

    def _place(self, tiles: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Shrink and shift each item inside its own cell: (B, 28, 28) uint8 -> same."""
        B, device, lay = len(tiles), tiles.device, self.layout
        scale = lay.scale_min + (lay.scale_max - lay.scale_min) * torch.rand(
            B, generator=g, device=device)  # (B,)
        # Top-left corner of the shrunk item, pixels: anywhere it fits, then the integer jitter.
        free = CELL * (1.0 - scale)  # (B,)
        corner = torch.rand(B, 2, generator=g, device=device) * free[:, None]  # (B, 2) as (x, y)
        corner = corner + torch.randint(-lay.jitter, lay.jitter + 1, (B, 2), generator=g,
                                        device=device)
        # Affine map from output to input coordinates in grid_sample's [-1, 1] convention
        # (align_corners=False): x_in = (x_out + 1 - 2 corner / 28) / scale - 1.
        theta = torch.zeros(B, 2, 3, device=device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
        theta[:, :, 2] = (1.0 - 2.0 * corner / CELL) / scale[:, None] - 1.0
        grid = F.affine_grid(theta, [B, 1, CELL, CELL], align_corners=False)  # (B, 28, 28, 2)
        x = tiles[:, None].float()  # (B, 1, 28, 28)
        # Zero padding: pixels shifted out of the cell are cut off, uncovered ones stay black.
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)[:, 0]


def split_pool(fmnist: FashionMNIST, split: str, val_size: int = 5000
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The items a split's mosaics may use.

    train and val take disjoint parts of the training images, split by
    `train_val_split(60000, val_size, seed=0)`; test takes the test images.

    Returns:
        images (P, 28, 28) uint8, labels (P,) int64, and source (P,) int64: each item's index
        into fmnist.train_images (train, val) or fmnist.test_images (test).
    """
    if split == "test":
        source = torch.arange(len(fmnist.test_images))
        return fmnist.test_images, fmnist.test_labels, source
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    train_idx, val_idx = train_val_split(len(fmnist.train_images), val_size, seed=0)
    source = train_idx if split == "train" else val_idx
    return fmnist.train_images[source], fmnist.train_labels[source], source


def split_seed(seed: int, split: str) -> int:
    """The generator seed of a split's mosaics: distinct per (seed, split), so train and val
    mosaics made with the same --seed do not share their label sets."""
    return seed * len(SPLITS) + SPLITS.index(split)


def make_split_mosaics(fmnist: FashionMNIST, split: str, n: int, prior: Prior | str, seed: int,
                       layout: MosaicLayout = MosaicLayout(), val_size: int = 5000,
                       return_items: bool = False) -> tuple[torch.Tensor, ...]:
    """n mosaics of a split ('train', 'val' or 'test') under a prior (a Prior or its name).

    Returns images (n, S, S) uint8 and labels (n, 10) uint8, and with return_items the
    (n, cells) int64 index of each cell's item into fmnist.train_images (train, val) or
    fmnist.test_images (test), -1 for an empty cell.
    """
    if isinstance(prior, str):
        prior = load_prior(prior)
    images, labels, source = split_pool(fmnist, split, val_size)
    gen = MosaicGenerator(images, labels, prior, layout)
    out = gen.sample(n, torch.Generator().manual_seed(split_seed(seed, split)), return_items)
    if return_items:
        items = out[2]
        out = (out[0], out[1], torch.where(items >= 0, source[items.clamp(min=0)], -1))
    return out


def cell_classes(fmnist: FashionMNIST, split: str, items: torch.Tensor) -> torch.Tensor:
    """The class in each cell: items (n, cells) as `make_split_mosaics(return_items=True)`
    gives them (indices into fmnist.train_images for train and val, fmnist.test_images for
    test) -> (n, cells) int64, row-major, -1 for an empty cell."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    labels = fmnist.test_labels if split == "test" else fmnist.train_labels
    return torch.where(items >= 0, labels[items.clamp(min=0)], -1)


def make_split_mosaics_with_cells(fmnist: FashionMNIST, split: str, n: int, prior: Prior | str,
                                  seed: int, layout: MosaicLayout = MosaicLayout(),
                                  val_size: int = 5000) -> tuple[torch.Tensor, ...]:
    """`make_split_mosaics` (the very same images and labels) with what sits in each cell.

    Returns images (n, S, S) uint8, labels (n, 10) uint8, cells (n, C) int64 (the class in
    each cell, row-major, -1 if empty) and items (n, C) int64 (as `make_split_mosaics` with
    return_items gives them).
    """
    images, labels, items = make_split_mosaics(fmnist, split, n, prior, seed, layout, val_size,
                                               return_items=True)
    return images, labels, cell_classes(fmnist, split, items), items


def check_cells(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                cells: torch.Tensor | np.ndarray, items: torch.Tensor | np.ndarray,
                where: str, pool: torch.Tensor | np.ndarray | None = None) -> None:
    """Raise a DataError unless `cells` and `items` (N, C) describe the mosaics.

    Checked: shapes and ranges; an empty cell (-1) has no item and only black pixels; the set
    of classes in a mosaic's cells is its label set. With `pool`, the (P, 28, 28) uint8 images
    that `items` index, every filled cell must equal its item pixel for pixel (true for
    layouts that paste items as is).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    cells, items = np.asarray(cells), np.asarray(items)
    n, side = images.shape[0], images.shape[1] // CELL
    C = side * side
    for name, a in (("cells", cells), ("items", items)):
        if a.shape != (n, C) or not np.issubdtype(a.dtype, np.integer):
            raise DataError(f"{where}: {name} must be a ({n}, {C}) integer array (one entry per "
                            f"cell), got shape {a.shape} dtype {a.dtype}")
    if cells.size and not (-1 <= cells.min() and cells.max() < NUM_CLASSES):
        raise DataError(f"{where}: cells must hold classes 0..{NUM_CLASSES - 1} or -1 (empty)")
    empty = cells < 0  # (N, C)
    if ((items < 0) != empty).any() or (items < -1).any():
        raise DataError(f"{where}: items must be -1 exactly where a cell is empty")
    tiles = (images.reshape(n, side, CELL, side, CELL).transpose(0, 1, 3, 2, 4)
             .reshape(n, C, CELL, CELL))  # row-major cells
    if tiles[empty].any():
        raise DataError(f"{where}: a cell marked empty (-1) is not black")
    present = np.zeros((n, NUM_CLASSES + 1), dtype=np.uint8)
    np.put_along_axis(present, np.where(empty, NUM_CLASSES, cells), 1, axis=1)
    if (present[:, :NUM_CLASSES] != labels).any():
        bad = int(np.flatnonzero((present[:, :NUM_CLASSES] != labels).any(1))[0])
        raise DataError(f"{where}: mosaic {bad}: the classes in its cells {cells[bad].tolist()} "
                        f"are not its label set {np.flatnonzero(labels[bad]).tolist()}")
    if pool is not None:
        pool = np.asarray(pool)
        if not np.array_equal(tiles[~empty], pool[items[~empty]]):
            raise DataError(f"{where}: a filled cell differs from the item it names")


def write_mosaics_with_cells(out: str | Path, fmnist: FashionMNIST, split: str, n: int,
                             prior: Prior | str, seed: int) -> Path:
    """`cnnrnn data mosaics --with-cells`: the mosaics `make_split_mosaics` draws (the same
    images as without cells), saved with their cells and items after `check_cells` (the
    default layout pastes items as is, so every filled cell is compared with its item)."""
    images, labels, cells, items = make_split_mosaics_with_cells(fmnist, split, n, prior, seed)
    pool = fmnist.test_images if split == "test" else fmnist.train_images
    return save_mosaics(out, images, labels, cells, items, pool=pool)


def save_mosaics(path: str | Path, images: torch.Tensor | np.ndarray,
                 labels: torch.Tensor | np.ndarray, cells: torch.Tensor | np.ndarray | None = None,
                 items: torch.Tensor | np.ndarray | None = None,
                 pool: torch.Tensor | np.ndarray | None = None) -> Path:
    """Write mosaics to an .npz with arrays images (N, S, S) uint8 and labels (N, 10) uint8.

    With `cells` and `items` (both or neither; see `make_split_mosaics_with_cells`) the file
    also holds them, (N, C) int64 each, after `check_cells` (against the item images `pool`
    too when given). The file is written atomically
    (`cnnrnn.files.atomic_write`): a crash leaves no half file.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    path = Path(path)
    _check_mosaics(images, labels, str(path))
    arrays = {"images": images, "labels": labels}
    if cells is not None or items is not None:
        if cells is None or items is None:
            raise DataError("save_mosaics: give both cells and items, or neither")
        arrays.update(cells=np.asarray(cells, dtype=np.int64),
                      items=np.asarray(items, dtype=np.int64))
        check_cells(images, labels, arrays["cells"], arrays["items"], str(path), pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a file object, so numpy does not append ".npz" to the name
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def load_mosaic_cells(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells (N, C) and items (N, C) int64 of a file written with `--with-cells`, checked
    against its images and labels."""
    images, labels = load_mosaics(path)  # checks the file and its images
    with np.load(path, allow_pickle=False) as npz:
        if "cells" not in npz.files or "items" not in npz.files:
            raise DataError(f"{path} holds no cells; write it with `cnnrnn data mosaics "
                            "--with-cells`")
        cells, items = npz["cells"], npz["items"]
    check_cells(images, labels, cells, items, str(path))
    return torch.from_numpy(cells.astype(np.int64)), torch.from_numpy(items.astype(np.int64))


def load_mosaics(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an .npz written by save_mosaics: images (N, S, S) uint8, labels (N, 10) uint8."""
    images, labels = load_mosaic_images(path)
    if labels is None:
        raise DataError(f"{path} holds images without labels (a .npy array); pass the .npz "
                        "that `cnnrnn data mosaics` writes")
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_mosaic_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The mosaics of an .npz written by save_mosaics (images and labels), or of a .npy array
    of images (N, S, S) uint8 alone, whose labels are then None."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mosaic file {path} not found; write one with `cnnrnn data mosaics`")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy: images alone
            images, labels = loaded, None
        else:
            with loaded as npz:
                missing = [k for k in ("images", "labels") if k not in npz.files]
                if missing:
                    raise DataError(f"{path}: missing array {missing[0]!r}; a mosaic file holds "
                                    "'images' and 'labels' (write it with `cnnrnn data "
                                    "mosaics`)")
                images, labels = npz["images"], npz["labels"]
    except DataError:
        raise
    except (OSError, ValueError) as e:  # not a zip, truncated, or an object array
        raise DataError(f"{path}: not a readable .npz of mosaics ({e}); write it again with "
                        "`cnnrnn data mosaics`") from None
    _check_mosaics(images, labels, str(path))
    return images, labels


def _check_mosaics(images: np.ndarray, labels: np.ndarray | None, where: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{where}: images must be a (N, S, S) uint8 array, got shape "
                        f"{images.shape} dtype {images.dtype}")
    S = images.shape[1]
    if images.shape[2] != S or S == 0 or S % CELL:
        raise DataError(f"{where}: images must be square with a side that is a multiple of "
                        f"{CELL}, got shape {images.shape}")
    if labels is None:
        return
    if labels.dtype != np.uint8 or labels.shape != (len(images), NUM_CLASSES):
        raise DataError(f"{where}: labels must be a ({len(images)}, {NUM_CLASSES}) uint8 array, "
                        f"got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and labels.max() > 1:
        raise DataError(f"{where}: labels must be multi-hot (0 or 1), found {labels.max()}")
