"""Images as people have them, read into the uint8 arrays that `cnnrnn predict` feeds a model.

Four kinds of input: a .npy array, the `images` array of an .npz (what `cnnrnn data mosaics`
writes), one PNG or JPEG file, or a folder of them. Arrays must already have the model's shape
and dtype: they are checked, never resized, and never unpickled. Image files are turned upright
(EXIF), converted to grey and resized to the model's size, since a photo rarely comes at 28x28;
with `fit`, framed first as Fashion-MNIST framed its items (trimmed, fitted, centred).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cnnrnn.errors import CnnrnnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
KINDS = "a .npy or .npz array, a PNG or JPEG file, or a folder of them"


# A Fashion-MNIST image's outer ring of pixels is dark: its mean is at most 95 of 255 over the
# 10,000 test images (99.9 % of them under 59). A photo whose ring (at the model's size, after
# --invert) is brighter on average than this is most likely a dark item on a light background.
LIGHT_BORDER = 128
# --fit: after autocontrast, the item is the pixels brighter than this (about an eighth of the
# scale): a photo's background is rarely exactly black, and its noise must not count as item.
ITEM_LEVEL = 32


def read_inputs(path: str | Path, size: int, invert: bool = False, fit: bool = False,
                say: Callable[[str], None] | None = None) -> tuple[torch.Tensor, list[str]]:
    """The images in `path`, checked, with one name per image.

    Args:
        path: a .npy array (N, size, size) or (size, size); an .npz with such an `images`
            array; a PNG or JPEG file (any mode, any size); or a folder of PNG and JPEG files,
            read in the order of their names (files of other extensions are ignored).
        size: the side, pixels, of the square images the model takes (28 or 56).
        invert: return 255 - x, to turn dark-on-light photos into Fashion-MNIST's light items
            on a black background.
        fit: make each image as Fashion-MNIST made its items (`fit_item`): stretch its
            contrast, trim it to the item, fit the item's longer side to `size` and centre it.
        say: hears one warning line naming the images whose border is light (the mean of their
            outer ring of pixels, at `size` after `invert`, above LIGHT_BORDER): they are most
            likely dark items on a light background, which the model was never shown.

    Returns:
        images (N, size, size) uint8 raw pixels 0-255, N >= 0, and names: "FILE[i]" for the
        rows of an array, the file name for an image file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CnnrnnError(f"{path} holds no PNG or JPEG files (.png, .jpg, .jpeg); give "
                              f"{KINDS}")
    elif not path.is_file():
        raise CnnrnnError(f"{path} not found")
    elif suffix in IMAGE_SUFFIXES:
        files = [path]
    elif suffix in ARRAY_SUFFIXES:
        files = []
    else:
        raise CnnrnnError(f"cannot read {path}: its extension is not .npy, .npz, .png, .jpg or "
                          f".jpeg; give {KINDS}")
    if files:
        grey: Iterable[Image.Image] = (_read_image(p) for p in files)  # one photo at a time
        names = [p.name for p in files]
    else:
        array = _read_array(path, size)
        grey = (Image.fromarray(row) for row in array)
        names = [f"{path.name}[{i}]" for i in range(len(array))]
    plain, fitted = [], []
    for image in grey:
        plain.append(_as_model_input(image, size, invert))
        if fit:
            fitted.append(fit_item(ImageOps.invert(image) if invert else image, size))
    light = [name for name, pixels in zip(names, plain, strict=True)
             if border_mean(pixels) > LIGHT_BORDER]
    if light and say is not None:
        shown = ", ".join(light[:3]) + (f" and {len(light) - 3} more" if len(light) > 3 else "")
        say(f"warning: {len(light)} of {len(names)} images have a light border ({shown}; mean "
            f"of the outer pixels above {LIGHT_BORDER} of 255): Fashion-MNIST items are light "
            f"on black, so these likely need {'no ' if invert else ''}--invert")
    images = np.stack(fitted if fit else plain) if names else np.zeros((0, size, size), np.uint8)
    return torch.from_numpy(np.ascontiguousarray(images)), names


def _as_model_input(image: Image.Image, size: int, invert: bool) -> np.ndarray:
    """A grey image resized to (size, size) with a Lanczos filter, then inverted if asked."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.array(image, dtype=np.uint8)
    return 255 - pixels if invert else pixels  # stays uint8


def border_mean(pixels: np.ndarray) -> float:
    """The mean of an image's outer ring of pixels (H, W), 0-255."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return float(ring.mean())


def fit_item(image: Image.Image, size: int) -> np.ndarray:
    """A light item on a dark background framed as Fashion-MNIST frames its items: contrast
    stretched to 0-255 (PIL's autocontrast, the 1 % darkest and brightest pixels clipped),
    trimmed to the bounding box of the pixels above ITEM_LEVEL, resized so the longer side
    fills `size` (Lanczos) and centred on black. Returns (size, size) uint8. An image with no
    such pixel (blank) is only resized."""
    image = ImageOps.autocontrast(image.convert("L"), cutoff=1)
    box = image.point(lambda v: 255 if v > ITEM_LEVEL else 0).getbbox()
    if box is not None:
        image = image.crop(box)
    fitted = ImageOps.pad(image, (size, size), Image.Resampling.LANCZOS, color=0)
    return np.array(fitted, dtype=np.uint8)


def _read_array(path: Path, size: int) -> np.ndarray:
    """A .npy array, or an .npz's `images`, checked to be uint8 (N, size, size)."""
    kind = "an .npz archive" if path.suffix.lower() == ".npz" else "a .npy array"
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                stored = loaded.files
                arr = loaded["images"] if "images" in stored else None
            what = f"{path}['images']"
        else:
            arr, what = loaded, str(path)
    except Exception as e:  # whatever numpy raises for a truncated, foreign or pickled file
        raise CnnrnnError(f"cannot read {path} as {kind} ({type(e).__name__}: {_one_line(e)})"
                          ) from None
    if arr is None:
        held = ", ".join(stored) or "no arrays"
        raise CnnrnnError(f"{path} has no 'images' array (it holds {held}); save one with "
                          "np.savez(FILE, images=arr), as `cnnrnn data mosaics` does")
    return check_array(arr, size, what)


def check_array(arr: np.ndarray, size: int, what: str = "the images") -> np.ndarray:
    """`arr` checked to be uint8 raw pixels (N, size, size), or one (size, size) image made
    (1, size, size); `what` names it in the error."""
    if arr.dtype != np.uint8:
        # An all-zero array says nothing about its scale; any other in [0, 1] is a float image.
        if arr.dtype.kind == "f" and arr.size and 0 <= arr.min() and 0 < arr.max() <= 1:
            raise CnnrnnError(f"{what} has dtype {arr.dtype} with values in [0, 1]; expected "
                              "uint8 raw pixels 0-255: save (arr * 255).round().astype(np.uint8)")
        raise CnnrnnError(f"{what} has dtype {arr.dtype}; expected uint8 raw pixels 0-255 "
                          "(e.g. arr.astype(np.uint8))")
    if arr.shape == (size, size):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (size, size):
        raise CnnrnnError(f"{what} has shape {arr.shape}; expected (N, {size}, {size})")
    return arr


def _read_image(path: Path) -> Image.Image:
    """One PNG or JPEG file, upright, as 8-bit grey at its own size."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways
            if image.mode.startswith("I"):  # 16-bit grey PNG: scale 0-65535 to 0-255, not clip
                pixels = np.asarray(image, dtype=np.float64) / 257
                image = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
            image = image.convert("L")
            image.load()
            return image
    except Exception as e:  # Pillow raises many kinds for a truncated or foreign file
        raise CnnrnnError(f"cannot read image {path}: corrupt, or not a PNG or JPEG "
                          f"({type(e).__name__}: {_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
