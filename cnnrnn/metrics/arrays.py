"""Input conversion shared by the metric modules."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnrnn.errors import CnnrnnError


def as_array(x: Any, name: str) -> np.ndarray:
    """A numpy copy of a numpy array, torch tensor (any device) or nested list."""
    if hasattr(x, "detach"):  # a torch tensor, perhaps on a GPU or requiring grad
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise CnnrnnError(f"{name} has dtype {arr.dtype}; pass a numeric array or tensor")
    return arr
