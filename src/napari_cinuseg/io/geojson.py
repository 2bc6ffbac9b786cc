"""Nucleus polygons as GeoJSON, in the FeatureCollection form QuPath imports (File ▸ Import
objects, or drag and drop).

One Feature per nucleus of an instance map::

    {"type": "Feature", "id": "<uuid>",
     "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...]]},
     "properties": {"objectType": "detection", "name": "nucleus 12", "nucleus": 12,
                    "classification": {"name": "Epithelial", "color": [r, g, b]}}}

Coordinates are level-0 pixels of the image (x right, y down, a pixel the unit square from its
top-left corner: QuPath's convention): a map made at
a lower pyramid level is scaled by ``downsample`` and shifted by ``origin``. The outline of each
nucleus is the 0.5 iso-line of its mask (``skimage.measure.find_contours``) around its pixels,
simplified to within ``tolerance`` pixels; ``nucleus`` is its id in the instance map and the
per-nucleus CSV. A large map is read in blocks with a halo (each nucleus outlined by the block
whose core holds its bounding box's top-left corner), so memory stays bounded.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from scipy.ndimage import find_objects
from skimage.measure import approximate_polygon, find_contours

from .atomic import atomic_path

BLOCK = 1024
MARGIN = 256


def rgb(colour: str) -> list[int]:
    """A colour (``#rrggbb``, or a name matplotlib knows, as a layer may carry) → [r, g, b] in 0..255."""
    try:
        return [int(round(255 * v)) for v in to_rgb(colour)]
    except ValueError:
        raise ValueError(f"colour {colour!r} is not a colour: give '#rrggbb' or a colour name") from None


def outline(mask: np.ndarray, tolerance: float = 0.5) -> np.ndarray | None:
    """The outer boundary (N, 2) as (row, col), closed, of a binary mask's largest part; None for
    an empty mask."""
    padded = np.pad(mask.astype(np.uint8), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    ring = max(contours, key=lambda c: _area(c)) - 1  # undo the padding
    if tolerance > 0 and len(ring) > 8:
        simple = approximate_polygon(ring, tolerance)
        if len(simple) >= 4:
            ring = simple
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring


def _area(ring: np.ndarray) -> float:
    y, x = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def nucleus_features(
    labels,
    classes,
    class_names: list[str],
    colours: list[str] | None = None,
    *,
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    tolerance: float = 0.5,
    block: int = BLOCK,
    margin: int = MARGIN,
) -> Iterator[dict]:
    """GeoJSON Features (see the module's docstring) of every nucleus of ``labels`` (an (H, W)
    instance map, numpy or lazy), in order of blocks. ``classes[i]`` is nucleus i's class (1-based
    into ``class_names``); ``origin`` (x, y) and ``downsample`` map the map's pixels to level 0."""
    classes = np.asarray(classes)
    colours = list(colours or [])
    ox, oy = origin
    h, w = (int(s) for s in labels.shape)
    for r0 in range(0, h, block):
        r1 = min(r0 + block, h)
        for c0 in range(0, w, block):
            c1 = min(c0 + block, w)
            er0, ec0 = max(r0 - margin, 0), max(c0 - margin, 0)
            ext = np.asarray(labels[er0 : min(r1 + margin, h), ec0 : min(c1 + margin, w)])
            if not ext.any():
                continue
            ids, local = np.unique(ext, return_inverse=True)
            local = local.reshape(ext.shape)
            if ids[0] != 0:  # no background in this block: local label 0 must still mean none
                ids, local = np.concatenate([[0], ids]), local + 1
            for k, sl in enumerate(find_objects(local), start=1):
                if sl is None or ids[k] == 0:
                    continue
                gy, gx = sl[0].start + er0, sl[1].start + ec0
                if not (r0 <= gy < r1 and c0 <= gx < c1):
                    continue
                ring = outline(local[sl] == k, tolerance)
                if ring is None:
                    continue
                nid = int(ids[k])
                cls = int(classes[nid]) if nid < len(classes) else 0
                # + 0.5: pixel (r, c) is the square [c, c + 1] × [r, r + 1] in QuPath's coordinates
                xy = np.round(
                    np.stack([(ring[:, 1] + gx + 0.5) * downsample + ox, (ring[:, 0] + gy + 0.5) * downsample + oy], 1),
                    2,
                )
                classification = {"name": class_names[cls - 1] if 1 <= cls <= len(class_names) else "Unclassified"}
                if 1 <= cls <= len(colours) and colours[cls - 1] is not None:  # a class without one: QuPath's own
                    classification["color"] = rgb(colours[cls - 1])
                yield {
                    "type": "Feature",
                    "id": str(uuid.uuid4()),
                    "geometry": {"type": "Polygon", "coordinates": [xy.tolist()]},
                    "properties": {
                        "objectType": "detection",
                        "name": f"nucleus {nid}",
                        "nucleus": nid,
                        "classification": classification,
                    },
                }


def write_geojson(
    path: str | os.PathLike,
    labels,
    classes,
    class_names: list[str],
    colours: list[str] | None = None,
    *,
    overwrite: bool = False,
    **kwargs,
) -> int:
    """Write the nuclei of an instance map to ``path`` as a GeoJSON FeatureCollection (written
    under a temporary name, renamed at the end; features streamed, one a line); returns how many.
    ``kwargs`` go to :func:`nucleus_features` (``downsample``, ``origin``, ``tolerance``)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist")
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for feature in nucleus_features(labels, classes, class_names, colours, **kwargs):
            f.write((",\n" if n else "") + json.dumps(feature, separators=(",", ":")))
            n += 1
        f.write("\n]}\n")
    return n
