"""Per-class masks to TIFF: page 0 the class map, then one binary page per class, named.

Every page is tiled (256 × 256) and deflate-compressed, so large slides stay small and open
quickly; the class names, colours and the model's identity travel in page 0's description (JSON)
and each page's PageName. The file is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .atomic import atomic_path

TILE = 256
PAGE_NAME = 285  # TIFF tag PageName


def _tiles(source, value: int | None, h: int, w: int) -> Iterator[np.ndarray]:
    """Tiles of ``source`` in row-major order (``value``: binary mask of that class, 0/255)."""
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            block = np.asarray(source[y : y + TILE, x : x + TILE])
            if value is not None:
                block = np.where(block == value, 255, 0).astype(np.uint8)
            tile = np.zeros((TILE, TILE), np.uint8)
            tile[: block.shape[0], : block.shape[1]] = block
            yield tile


def export_masks(
    class_map,
    path: str | os.PathLike,
    class_names: list[str],
    colours: list[str] | None = None,
    model_id: str | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``class_map`` ((H, W) uint8 array or zarr array; 0 = background, i = class_names[i-1])."""
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist")
    h, w = class_map.shape
    meta = {
        "software": "napari-cinuseg",
        "classes": {str(i + 1): n for i, n in enumerate(class_names)},
        "colours": {str(i + 1): c for i, c in enumerate(colours or [])},
        "model_id": model_id,
        "pages": ["class map"] + [f"mask: {n}" for n in class_names],
        **(extra or {}),
    }
    bigtiff = h * w * (len(class_names) + 1) > 2**31
    common = dict(shape=(h, w), dtype=np.uint8, tile=(TILE, TILE), compression="zlib", photometric="minisblack", metadata=None)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        tw.write(_tiles(class_map, None, h, w), description=json.dumps(meta), extratags=[(PAGE_NAME, "s", 0, "class map", True)], **common)
        for i, name in enumerate(class_names, start=1):
            tw.write(_tiles(class_map, i, h, w), extratags=[(PAGE_NAME, "s", 0, f"mask: {name}", True)], **common)
    return path


def read_masks(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """(class map, {class name: binary mask}, metadata) of a file written by :func:`export_masks`."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        meta = json.loads(pages[0].description)
        class_map = pages[0].asarray()
        masks = {}
        for page in list(pages)[1:]:
            name = page.tags[PAGE_NAME].value.removeprefix("mask: ")
            masks[name] = page.asarray() > 0
    return class_map, masks, meta
