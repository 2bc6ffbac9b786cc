"""A resolution pyramid of a class map on disk, so that a whole slide's masks can be shown
(napari multiscale Labels) and browsed without ever loading the full-resolution map.

Each level halves the one before by taking every second pixel (labels must not be blended),
block by block, so memory stays bounded by the block size whatever the slide's size.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr


def build_pyramid(level0_path: str | os.PathLike, min_size: int = 1024, block: int = 4096) -> list:
    """Levels 1.. of the class map stored as a zarr array at ``level0_path``, written beside it
    as ``<name>.level<k>.zarr``, until the longer side is at most ``min_size``.

    Returns [level0, level1, …] as zarr arrays opened read-only. A level already on disk with the
    expected shape is reused, so an interrupted build resumes; each is written under a temporary
    name and renamed when complete.
    """
    if min_size < 1 or block < 2 or block % 2:
        raise ValueError("min_size must be positive and block an even number of pixels")
    level0_path = Path(level0_path)
    levels = [zarr.open_array(str(level0_path), mode="r")]
    k = 0
    while max(levels[-1].shape) > min_size:
        k += 1
        src = levels[-1]
        h, w = (src.shape[0] + 1) // 2, (src.shape[1] + 1) // 2
        path = level0_path.with_name(f"{level0_path.stem}.level{k}.zarr")
        if path.exists():
            existing = zarr.open_array(str(path), mode="r")
            if existing.shape == (h, w):
                levels.append(existing)
                continue
            shutil.rmtree(path)
        tmp = path.with_name(f".{path.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        dst = zarr.open_array(str(tmp), mode="w", shape=(h, w), chunks=(min(h, 1024), min(w, 1024)), dtype=src.dtype)
        try:
            for y in range(0, src.shape[0], block):
                for x in range(0, src.shape[1], block):
                    part = np.asarray(src[y : y + block : 2, x : x + block : 2])
                    dst[y // 2 : y // 2 + part.shape[0], x // 2 : x // 2 + part.shape[1]] = part
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        levels.append(zarr.open_array(str(path), mode="r"))
    return levels
