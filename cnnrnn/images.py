"""Images as people have them, read into the uint8 arrays that `cnnrnn predict` feeds a model.

Four kinds of input: a .npy array, the `images` array of an .npz (what `cnnrnn data mosaics`
writes), one PNG or JPEG file, or a folder of them. Arrays must already have the model's shape
and dtype: they are checked, never resized, and never unpickled. Image files are turned upright
(EXIF), converted to grey and resized to the model's size, since a photo rarely comes at 28x28.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cnnrnn.errors import CnnrnnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
KINDS = "a .npy or .npz array, a PNG or JPEG file, or a folder of them"


def read_inputs(path: str | Path, size: int, invert: bool = False
                ) -> tuple[torch.Tensor, list[str]]:
    """The images in `path`, checked, with one name per image.

    Args:
        path: a .npy array (N, size, size) or (size, size); an .npz with such an `images`
            array; a PNG or JPEG file (any mode, any size); or a folder of PNG and JPEG files,
            read in the order of their names (files of other extensions are ignored).
        size: the side, pixels, of the square images the model takes (28 or 56).
        invert: return 255 - x, to turn dark-on-light photos into Fashion-MNIST's light items
            on a black background.

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
        images = np.stack([_read_image(p, size) for p in files])
        names = [p.name for p in files]
    elif not path.is_file():
        raise CnnrnnError(f"{path} not found")
    elif suffix in ARRAY_SUFFIXES:
        images = _read_array(path, size)
        names = [f"{path.name}[{i}]" for i in range(len(images))]
    elif suffix in IMAGE_SUFFIXES:
        images = _read_image(path, size)[None]
        names = [path.name]
    else:
        raise CnnrnnError(f"cannot read {path}: its extension is not .npy, .npz, .png, .jpg or "
                          f".jpeg; give {KINDS}")
    if invert:
        images = 255 - images  # stays uint8
    return torch.from_numpy(np.ascontiguousarray(images)), names


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


def _read_image(path: Path, size: int) -> np.ndarray:
    """One PNG or JPEG file as grey (size, size) uint8, resized with a Lanczos filter."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways
            if image.mode.startswith("I"):  # 16-bit grey PNG: scale 0-65535 to 0-255, not clip
                pixels = np.asarray(image, dtype=np.float64) / 257
                image = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
            image = image.convert("L")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            return np.array(image, dtype=np.uint8)  # (size, size)
    except Exception as e:  # Pillow raises many kinds for a truncated or foreign file
        raise CnnrnnError(f"cannot read image {path}: corrupt, or not a PNG or JPEG "
                          f"({type(e).__name__}: {_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
