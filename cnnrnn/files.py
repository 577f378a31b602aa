"""Files written so that a crash, a kill or a full disk never leaves a half-written one behind.

Every file of a run folder and every checkpoint goes through `atomic_write`: the bytes go to a
temporary file with a unique name in the target's own folder, then one rename puts it in place.
Recipes and mosaic priors ship inside the package (`recipe_root`), so an installed wheel finds
them as a checkout does.
"""

from __future__ import annotations

import errno
import importlib.resources
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from cnnrnn.errors import CnnrnnError, DiskFullError


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Write `content` (text, bytes, or a function that writes to a binary file) to `path`.

    The temporary file is created with a unique name (no fixed `*.tmp` that a planted link
    could redirect) and removed if the write fails; a failure is one line naming the path.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on the device of {path.parent}; free some space "
                              f"and run again ({path.name} was not written)") from None
        raise CnnrnnError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def recipe_root() -> Path:
    """The shipped configs: <task>/<model>.toml recipes and mosaics/<prior>.toml priors."""
    return Path(str(importlib.resources.files("cnnrnn") / "configs"))
