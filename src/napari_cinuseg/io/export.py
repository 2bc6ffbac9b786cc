"""Per-class masks to a pyramidal OME-TIFF that reopens fast, and a per-nucleus CSV beside it.

The masks file holds one image series per map, each a pyramid (level 0 the full size, then
halves, down to at most ``SMALLEST`` pixels a side) in reduced-resolution sub-images:

- series 0, "class map": 0 = background, i = the i-th class;
- series i, "mask: <class>": 255 where the class map is i, else 0.

Every level is tiled (256 × 256) and deflate-compressed, and is written tile by tile, reading the
class map a tile at a time (a numpy or zarr array), so memory stays bounded for any slide; a
level's pixel is the class map's pixel at its top-left (labels are picked, never averaged).
The OME-XML names each series and gives the pixel size when it is known (PhysicalSizeX/Y, and
the TIFF resolution tags); the class names, colours and the model's identity travel as JSON in a
private tag of the first page (``META_TAG``). The file is written under a temporary name and
renamed at the end. Files of the earlier single-level layout (JSON in page 0's description) are
still read.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from .atomic import atomic_path

TILE = 256
SMALLEST = 512  # the pyramid stops at the first level at most this many pixels a side
PAGE_NAME = 285  # TIFF tag PageName
META_TAG = 65001  # private TIFF tag: napari-cinuseg's JSON (class names, colours, model, …)


def pyramid_factors(h: int, w: int, smallest: int = SMALLEST) -> list[int]:
    """Downsampling factor of each level: 1, 2, 4, … until the level fits in ``smallest``."""
    factors = [1]
    while max(-(-h // factors[-1]), -(-w // factors[-1])) > smallest:
        factors.append(factors[-1] * 2)
    return factors


def _tiles(source, value: int | None, h: int, w: int, f: int, tick: Callable[[], None]) -> Iterator[np.ndarray]:
    """Tiles of level ``f`` of ``source`` in row-major order (``value``: that class's 0/255 mask)."""
    lh, lw = -(-h // f), -(-w // f)
    for y in range(0, lh, TILE):
        for x in range(0, lw, TILE):
            block = np.asarray(source[y * f : (y + TILE) * f, x * f : (x + TILE) * f])[::f, ::f]
            if value is not None:
                block = np.where(block == value, 255, 0).astype(np.uint8)
            tile = np.zeros((TILE, TILE), np.uint8)
            tile[: block.shape[0], : block.shape[1]] = block
            tick()
            yield tile


def count_tiles(h: int, w: int, n_classes: int) -> int:
    """How many tiles :func:`export_masks` writes (for a progress bar)."""
    per_map = 0
    for f in pyramid_factors(h, w):
        lh, lw = -(-h // f), -(-w // f)
        per_map += -(-lh // TILE) * -(-lw // TILE)
    return per_map * (n_classes + 1)


def export_masks(
    class_map,
    path: str | os.PathLike,
    class_names: list[str],
    colours: list[str] | None = None,
    model_id: str | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
    pixel_size: float | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``class_map`` ((H, W) uint8 array or zarr array; 0 = background, i =
    class_names[i-1]) as a pyramidal OME-TIFF (see the module's docstring). ``pixel_size``: µm
    per pixel of the class map, written where known. ``on_tile(done, total)`` is called after each
    tile written."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist")
    h, w = (int(s) for s in class_map.shape)
    meta = {
        "software": "napari-cinuseg",
        "classes": {str(i + 1): n for i, n in enumerate(class_names)},
        "colours": {str(i + 1): c for i, c in enumerate(colours or [])},
        "model_id": model_id,
        "series": ["class map"] + [f"mask: {n}" for n in class_names],
        **({"pixel_size_um": float(pixel_size)} if pixel_size else {}),
        **(extra or {}),
    }
    factors = pyramid_factors(h, w)
    total, done = count_tiles(h, w, len(class_names)), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_tile is not None:
            on_tile(done, total)

    def physical(f: int) -> dict:
        if not pixel_size:
            return {}
        per_cm = 1e4 / (pixel_size * f)  # pixels per centimetre
        return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}

    common = dict(dtype=np.uint8, tile=(TILE, TILE), compression="zlib", photometric="minisblack")
    series = [("class map", None)] + [(f"mask: {n}", i) for i, n in enumerate(class_names, start=1)]
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
        for k, (name, value) in enumerate(series):
            ome = {"axes": "YX", "Name": name}
            if pixel_size:
                ome.update(
                    PhysicalSizeX=pixel_size, PhysicalSizeXUnit="µm", PhysicalSizeY=pixel_size, PhysicalSizeYUnit="µm"
                )
            tags = [(PAGE_NAME, "s", 0, name, True)] + ([(META_TAG, "s", 0, json.dumps(meta), True)] if k == 0 else [])
            tw.write(
                _tiles(class_map, value, h, w, 1, tick),
                shape=(h, w),
                subifds=len(factors) - 1,
                metadata=ome,
                extratags=tags,
                **physical(1),
                **common,
            )
            for f in factors[1:]:
                tw.write(
                    _tiles(class_map, value, h, w, f, tick),
                    shape=(-(-h // f), -(-w // f)),
                    subfiletype=1,
                    metadata=None,
                    **physical(f),
                    **common,
                )
    return path


def masks_metadata(tif) -> dict | None:
    """napari-cinuseg's JSON of a masks TIFF (either layout), or None for any other TIFF."""
    page = tif.pages[0]
    text = None
    if META_TAG in page.tags:
        text = page.tags[META_TAG].value
    elif (page.description or "").lstrip().startswith("{"):
        text = page.description  # the earlier single-level layout
    if not text:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        return None
    if isinstance(meta, dict) and meta.get("software") == "napari-cinuseg" and isinstance(meta.get("classes"), dict):
        return meta
    return None


def masks_pyramidal(tif) -> bool:
    """Whether a masks file has the pyramidal layout (one series a map) rather than the earlier
    one page a map."""
    return META_TAG in tif.pages[0].tags


def read_masks(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """(class map, {class name: binary mask}, metadata) of a file written by :func:`export_masks`,
    all at full resolution (for tests and small maps; the napari reader opens them lazily)."""
    with tifffile.TiffFile(path) as tif:
        meta = masks_metadata(tif)
        if meta is None:
            raise ValueError(f"{path} is not a napari-cinuseg masks file")
        if masks_pyramidal(tif):
            maps = [s.levels[0].asarray() for s in tif.series]
            names = [s.name for s in tif.series]
        else:  # the earlier layout: one page per map, named by PageName
            pages = list(tif.pages)
            maps = [p.asarray() for p in pages]
            names = [p.tags[PAGE_NAME].value for p in pages]
    masks = {n.removeprefix("mask: "): m > 0 for n, m in zip(names[1:], maps[1:])}
    return maps[0], masks, meta


class ExportStopped(Exception):
    """The caller of :func:`export_masks_job` stopped it (closed, cancelled, interrupted)."""


def export_masks_job(class_map, path, *args, poll: float = 0.1, **kwargs):
    """:func:`export_masks` as a job: a generator that yields ``(done, total)`` tiles about every
    ``poll`` seconds while the file is written (in a thread of its own, so the caller's loop
    stays free) and returns the path. The file appears only when complete. A job that is closed
    or interrupted (Ctrl-C, SIGTERM) before it ends stops its writer at the next tile and waits
    for it, so that its temporary file is removed and no masks file appears afterwards."""
    state = {"done": 0, "total": 0}
    box: dict = {}
    stop, finished = threading.Event(), threading.Event()

    def on_tile(done: int, total: int) -> None:
        if stop.is_set():
            raise ExportStopped
        state.update(done=done, total=total)

    def write() -> None:
        try:
            box["path"] = export_masks(class_map, path, *args, on_tile=on_tile, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=write, name="cinuseg-export", daemon=True).start()
    # waited on through an Event, not Thread.join: a join that a signal interrupts (Ctrl-C,
    # SIGTERM) can leave the thread marked as ended while it still writes (Python 3.11)
    try:
        while True:
            ended = finished.wait(poll)
            yield state["done"], state["total"]
            if ended:
                break
    finally:
        if not finished.is_set():  # stopped early: the writer ends at its next tile and removes its file
            stop.set()
            finished.wait()
    if "error" in box:
        raise box["error"]
    return box["path"]
