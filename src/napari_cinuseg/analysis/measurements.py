"""Nuclei counts and areas per class, from a class map (connected components) or an instance map.

Small in-memory class maps are labelled whole. Large or lazy ones (a whole-slide class map as a
zarr or dask array) are measured block by block in bounded memory; see :func:`class_statistics`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import find_objects
from skimage.measure import label as connected_components
from skimage.measure import regionprops, regionprops_table

from ..io.atomic import atomic_path
from ..io.images import IN_MEMORY_LIMIT_PX

#: Above this many pixels a numpy class map is measured blockwise, like a lazy one.
IN_MEMORY_MAX_PX = IN_MEMORY_LIMIT_PX

#: Core block side of the blockwise rule. scikit-image's labelling and scipy's find_objects hold
#: the GIL for a whole block: 2048 (2560 px with the halo) keeps each such call under about 0.1 s
#: on a slow core (4096 took 0.3 s), so a viewer that shares the process stays responsive while
#: an export measures its nuclei.
BLOCK = 2048


def class_statistics(
    class_map,
    class_names: list[str],
    pixel_size_um: float | None = None,
    *,
    block: int = BLOCK,
    margin: int = 256,
    blockwise: bool | None = None,
) -> list[dict]:
    """One row per class: nuclei (connected components of that class), total and mean area.

    Row keys: ``class``, ``nuclei``, ``area_px``, ``mean_area_px``, ``median_area_px``, and
    ``area_um2``, ``mean_area_um2`` when ``pixel_size_um`` is given. Class ``i`` (1-based) of
    ``class_names`` is the value ``i`` in ``class_map``; nuclei are its connected components with
    4-connectivity (``connectivity=1``).

    ``class_map`` is a numpy array or anything 2-D with ``.shape`` and slicing (a zarr or dask
    array: each block slice is read with ``np.asarray``). A numpy map of at most
    ``IN_MEMORY_MAX_PX`` pixels is labelled whole (exact). A larger or non-numpy 2-D map is
    measured blockwise (``blockwise=True``/``False`` forces the choice):

    - the map is cut into core blocks of ``block`` × ``block`` pixels; each is read with a halo of
      ``margin`` pixels on every side (clipped at the map's edges), and connected components are
      labelled in that extended block;
    - a component is counted by exactly one block: the one whose core contains the top-left corner
      (min row, min col, in global coordinates) of the component's bounding box as seen in the
      extended block, and it contributes its area as seen there;
    - ``area_px`` is exact in any case (the class's pixel count over the core blocks);
      ``mean_area_px`` and ``median_area_px`` are over the counted components.

    Limit: this is exact (same rows as labelling the whole map) for every component whose bounding
    box is smaller than ``margin`` in both directions. A bigger component (not a single nucleus)
    may be cut by the halo's edge and counted in pieces, with the pieces' areas; ``nuclei``,
    ``mean_area_px`` and ``median_area_px`` are then approximate. Memory is bounded by one
    extended block (its labels are int64: about 8 × (block + 2·margin)² bytes, ~52 MB at the
    defaults) plus one float per counted nucleus.
    """
    if not hasattr(class_map, "shape"):
        class_map = np.asarray(class_map)
    if blockwise is None:
        small = isinstance(class_map, np.ndarray) and class_map.size <= IN_MEMORY_MAX_PX
        blockwise = not small and len(class_map.shape) == 2
    if blockwise:
        areas, totals = _blockwise_areas(class_map, len(class_names), block, margin)
    else:
        areas, totals = _whole_areas(np.asarray(class_map), len(class_names))
    return [_class_row(name, areas[i], int(totals[i]), pixel_size_um) for i, name in enumerate(class_names)]


def _class_row(name: str, areas: np.ndarray, total_px: int, pixel_size_um: float | None) -> dict:
    """One class's row of the statistics: its nuclei (their areas ``areas``) and total area."""
    row = {
        "class": name,
        "nuclei": int(areas.size),
        "area_px": int(total_px),
        "mean_area_px": float(areas.mean()) if areas.size else 0.0,
        "median_area_px": float(np.median(areas)) if areas.size else 0.0,
    }
    if pixel_size_um:
        px = pixel_size_um**2
        row["area_um2"] = row["area_px"] * px
        row["mean_area_um2"] = row["mean_area_px"] * px
    return row


def _whole_areas(cm: np.ndarray, n: int) -> tuple[list[np.ndarray], list[int]]:
    """Exact: label the whole map, one class at a time."""
    areas, totals = [], []
    for i in range(1, n + 1):
        comps = connected_components(cm == i, connectivity=1)
        a = np.array([r.area for r in regionprops(comps)], dtype=float)
        areas.append(a)
        totals.append(int(a.sum()))
    return areas, totals


def _class_values(ext: np.ndarray, n: int) -> np.ndarray:
    """``ext`` as unsigned ints where a pixel is ``i`` if it equals class ``i`` (1..n), else 0."""
    dtype = np.uint8 if n < 256 else np.uint16 if n < 65536 else np.uint32
    if ext.dtype.kind in "bu":
        if ext.size and ext.max() > n:
            ext = np.where(ext <= n, ext, 0)
        return ext.astype(dtype, copy=False)
    out = np.zeros(ext.shape, dtype)
    for i in range(1, n + 1):
        out[ext == i] = i
    return out


@dataclass
class _Block:
    """A core block [r0, r1) × [c0, c1) read with its halo: ``ext`` starts at (er0, ec0)."""

    ext: np.ndarray
    r0: int
    r1: int
    c0: int
    c1: int
    er0: int
    ec0: int

    def owns(self, rows, cols) -> np.ndarray:
        """Which components (by their bounding box's top-left corner in ``ext``) this block counts."""
        gr, gc = np.asarray(rows) + self.er0, np.asarray(cols) + self.ec0
        return (gr >= self.r0) & (gr < self.r1) & (gc >= self.c0) & (gc < self.c1)


def block_windows(h: int, w: int, block: int, margin: int) -> Iterator[tuple[int, ...]]:
    """Row by row, each core block (r0, r1, c0, c1) of an (h, w) map with its halo of ``margin``
    clipped at the map's edges (er0, er1, ec0, ec1): the blockwise rule's windows, shared by the
    measurements here and the instance split (inference.instances)."""
    for r0 in range(0, h, block):
        r1 = min(r0 + block, h)
        er0, er1 = max(r0 - margin, 0), min(r1 + margin, h)
        for c0 in range(0, w, block):
            c1 = min(c0 + block, w)
            yield r0, r1, c0, c1, er0, er1, max(c0 - margin, 0), min(c1 + margin, w)


def _blocks(class_map, n: int, block: int, margin: int) -> Iterator[_Block]:
    """The blockwise rule's blocks, row by row: each core block with its halo of ``margin``
    (clipped at the map's edges), read as class values 0..n."""
    h, w = (int(s) for s in class_map.shape)
    for r0, r1, c0, c1, er0, er1, ec0, ec1 in block_windows(h, w, block, margin):
        yield _Block(_class_values(np.asarray(class_map[er0:er1, ec0:ec1]), n), r0, r1, c0, c1, er0, ec0)


def _blockwise_areas(class_map, n: int, block: int, margin: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Blockwise rule of :func:`class_statistics`: per class, the counted components' areas and
    the exact pixel count."""
    if len(class_map.shape) != 2:
        raise ValueError(f"blockwise class statistics need a 2-D class map, got shape {tuple(class_map.shape)}")
    if block < 1 or margin < 0:
        raise ValueError(f"need block >= 1 and margin >= 0, got block={block}, margin={margin}")
    totals = np.zeros(n + 1, np.int64)
    pieces: list[list[np.ndarray]] = [[] for _ in range(n + 1)]
    for b in _blocks(class_map, n, block, margin):
        core = b.ext[b.r0 - b.er0 : b.r1 - b.er0, b.c0 - b.ec0 : b.c1 - b.ec0]
        totals += np.bincount(core.ravel(), minlength=n + 1)[: n + 1]
        if not b.ext.any():
            continue
        # Equal-valued 4-connected pixels: each class's components, labelled in one pass.
        lab, num = connected_components(b.ext, background=0, connectivity=1, return_num=True)
        area = np.bincount(lab.ravel(), minlength=num + 1)[1:]
        cls = np.zeros(num + 1, b.ext.dtype)
        cls[lab.ravel()] = b.ext.ravel()
        top_left = np.array([(s[0].start, s[1].start) for s in find_objects(lab)], np.int64).reshape(-1, 2)
        counted = b.owns(top_left[:, 0], top_left[:, 1])
        cls, area = cls[1:][counted], area[counted]
        for i in np.unique(cls):
            pieces[i].append(area[cls == i].astype(float))
    areas = [np.concatenate(p) if p else np.zeros(0) for p in pieces[1:]]
    return areas, totals[1:]


# The per-nucleus table's shape features (scikit-image's regionprops names), in pixels.
NUCLEUS_FEATURES = ("perimeter", "eccentricity", "solidity", "axis_major_length", "axis_minor_length", "orientation")


def nucleus_table(
    class_map, class_names: list[str], pixel_size_um: float | None = None, *, block: int = BLOCK, margin: int = 256
) -> dict[str, list]:
    """One row per nucleus (a 4-connected component of one class), as columns:
    ``nucleus`` (1..N), ``class``, ``centroid_y``, ``centroid_x`` (pixels of the map),
    ``area_px``, ``area_um2`` (where ``pixel_size_um`` is known), and ``NUCLEUS_FEATURES``
    (scikit-image's ``regionprops_table``; lengths in pixels, orientation in radians).

    A map is read in core blocks of ``block`` pixels, each with a halo of ``margin`` (the rule of
    :func:`class_statistics`' blockwise path): a nucleus belongs to the block whose core holds the
    top-left corner of its bounding box, and is measured whole in the extended block. So memory
    stays bounded on a slide, and the table is exact for nuclei smaller than ``margin``.
    """
    if len(class_map.shape) != 2:
        raise ValueError(f"a per-nucleus table needs a 2-D class map, got shape {tuple(class_map.shape)}")
    n = len(class_names)
    cols: dict[str, list] = {k: [] for k in ("class", "centroid_y", "centroid_x", "area_px", *NUCLEUS_FEATURES)}
    for b in _blocks(class_map, n, block, margin):
        if not b.ext.any():
            continue
        lab = connected_components(b.ext, background=0, connectivity=1)
        props = regionprops_table(
            lab, intensity_image=b.ext, properties=("bbox", "centroid", "area", "intensity_max", *NUCLEUS_FEATURES)
        )
        keep = b.owns(props["bbox-0"], props["bbox-1"])
        cols["class"] += [class_names[int(v) - 1] for v in props["intensity_max"][keep]]
        cols["centroid_y"] += (props["centroid-0"][keep] + b.er0).tolist()
        cols["centroid_x"] += (props["centroid-1"][keep] + b.ec0).tolist()
        cols["area_px"] += props["area"][keep].astype(int).tolist()
        for k in NUCLEUS_FEATURES:
            cols[k] += props[k][keep].tolist()
    table = {"nucleus": list(range(1, len(cols["class"]) + 1)), **cols}
    if pixel_size_um:
        table["area_um2"] = [a * pixel_size_um**2 for a in cols["area_px"]]
    return table


def write_nucleus_csv(table: dict[str, list], path) -> None:
    """The per-nucleus table as CSV (one header row, one row per nucleus), written atomically."""
    keys = list(table)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([spreadsheet_safe(k) for k in keys])
        for row in zip(*(table[k] for k in keys)):
            out.writerow([f"{v:.4f}" if isinstance(v, float) else spreadsheet_safe(v) for v in row])


#: What a spreadsheet reads as the start of a formula (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell):
    """A text cell that a spreadsheet would run as a formula (a class named ``=HYPERLINK(…)``)
    prefixed with a single quote, as OWASP advises, so that it is shown as text; numbers and
    other text as they are."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def measure_nuclei_to_csv(class_map, class_names: list[str], pixel_size_um: float | None, path) -> int:
    """:func:`nucleus_table` written to ``path`` (:func:`write_nucleus_csv`); returns the number of
    nuclei. One call with a small result, so that it can run in a separate process."""
    table = nucleus_table(class_map, class_names, pixel_size_um)
    write_nucleus_csv(table, path)
    return len(table["nucleus"])


# Nuclei as objects: the same rows and table from an instance map (inference/instances.py), one
# nucleus per instance id instead of per connected component of one class.


def _core_blocks(shape, block: int):
    h, w = (int(s) for s in shape)
    for r0 in range(0, h, block):
        for c0 in range(0, w, block):
            yield r0, min(r0 + block, h), c0, min(c0 + block, w)


def instance_areas(labels, n: int, *, block: int = BLOCK) -> np.ndarray:
    """Pixel count of each instance id 0..n of an instance map (numpy or lazy), exact, read in
    core blocks of ``block`` pixels."""
    if isinstance(labels, np.ndarray):
        return np.bincount(labels.ravel().astype(np.int64), minlength=n + 1)[: n + 1]
    area = np.zeros(n + 1, np.int64)
    for r0, r1, c0, c1 in _core_blocks(labels.shape, block):
        area += np.bincount(np.asarray(labels[r0:r1, c0:c1]).ravel().astype(np.int64), minlength=n + 1)[: n + 1]
    return area


def instance_statistics(
    labels, classes, class_names: list[str], pixel_size_um: float | None = None, *, block: int = BLOCK
) -> list[dict]:
    """:func:`class_statistics`' rows (same keys) counted per instance: ``nuclei`` is the number
    of instances of the class, areas are theirs. ``classes[i]`` is instance i's class (1-based
    index into ``class_names``; ``classes[0]`` the background)."""
    classes = np.asarray(classes)
    area = instance_areas(labels, len(classes) - 1, block=block).astype(float)
    per_class = [area[1:][classes[1:] == i] for i in range(1, len(class_names) + 1)]
    return [_class_row(name, a, int(a.sum()), pixel_size_um) for name, a in zip(class_names, per_class)]


def instance_table(
    labels,
    classes,
    class_names: list[str],
    pixel_size_um: float | None = None,
    *,
    block: int = BLOCK,
    margin: int = 256,
) -> dict[str, list]:
    """:func:`nucleus_table`'s columns, one row per instance: ``nucleus`` is the instance id of the
    instance map (so a row finds its object in the map and in the GeoJSON). A map is read in core
    blocks with a halo (the same rule: an instance is measured by the block whose core holds the
    top-left corner of its bounding box), exact for nuclei smaller than ``margin``."""
    if len(labels.shape) != 2:
        raise ValueError(f"a per-nucleus table needs a 2-D instance map, got shape {tuple(labels.shape)}")
    classes = np.asarray(classes)
    cols: dict[str, list] = {
        k: [] for k in ("nucleus", "class", "centroid_y", "centroid_x", "area_px", *NUCLEUS_FEATURES)
    }
    h, w = (int(s) for s in labels.shape)
    for r0, r1, c0, c1 in _core_blocks(labels.shape, block):
        er0, ec0 = max(r0 - margin, 0), max(c0 - margin, 0)
        ext = np.asarray(labels[er0 : min(r1 + margin, h), ec0 : min(c1 + margin, w)])
        if not ext.any():
            continue
        props = regionprops_table(
            ext.astype(np.int64), properties=("label", "bbox", "centroid", "area", *NUCLEUS_FEATURES)
        )
        gr, gc = props["bbox-0"] + er0, props["bbox-1"] + ec0
        keep = (gr >= r0) & (gr < r1) & (gc >= c0) & (gc < c1)
        ids = props["label"][keep]
        cols["nucleus"] += ids.astype(int).tolist()
        cols["class"] += [class_names[int(classes[i]) - 1] for i in ids]
        cols["centroid_y"] += (props["centroid-0"][keep] + er0).tolist()
        cols["centroid_x"] += (props["centroid-1"][keep] + ec0).tolist()
        cols["area_px"] += props["area"][keep].astype(int).tolist()
        for k in NUCLEUS_FEATURES:
            cols[k] += props[k][keep].tolist()
    order = np.argsort(cols["nucleus"], kind="stable")
    table = {k: [v[i] for i in order] for k, v in cols.items()}
    if pixel_size_um:
        table["area_um2"] = [a * pixel_size_um**2 for a in table["area_px"]]
    return table


def measure_instances_to_csv(labels, classes, class_names: list[str], pixel_size_um: float | None, path) -> int:
    """:func:`instance_table` written to ``path``; returns the number of nuclei."""
    table = instance_table(labels, classes, class_names, pixel_size_um)
    write_nucleus_csv(table, path)
    return len(table["nucleus"])
