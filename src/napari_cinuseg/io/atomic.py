"""Atomic file writes: write a temporary file beside the target, flush it to disk, rename.

A crash, a kill or a cancel at any moment leaves either the old file or the new one, never half
of one, and no temporary file survives a failure that Python sees.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` in one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions of an ordinary new file
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_json(path: str | os.PathLike, obj, **dumps) -> None:
    """``obj`` as JSON at ``path`` (indented, keys sorted, unless ``dumps`` says otherwise: it
    goes to ``json.dumps``), written atomically."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, **{"indent": 1, "sort_keys": True, **dumps}))
