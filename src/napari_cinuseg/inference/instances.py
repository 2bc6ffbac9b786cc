"""Nuclei as objects: an instance map beside the class map, one id per nucleus.

A class map says which class each pixel is; touching nuclei merge into one region. Here the
foreground (every pixel of any class) is split into nuclei by a marker-controlled watershed on its
distance transform (scikit-image): each nucleus is a basin around a local maximum of the
(slightly smoothed) distance to the background, the markers at least ``min_distance_um`` apart.
``method="components"`` keeps the plain connected components instead (no split of touching
nuclei). ``method="distance"`` splits the same foreground on a model's learned distance map (its
separation head, model/network.py: each pixel's distance to its nucleus's border, normalised per
nucleus to 0..1): markers are the h-maxima of the map (regional maxima at least ``h`` above
every path to a higher one; Soille, "Morphological Image Analysis", 2003, §6.3.5) and the basins
its watershed, as in Naylor et al. 2019 (IEEE TMI 38(2)); two touching nuclei meet at a low
distance, so they split where the foreground does not pinch. Each nucleus takes the class most
of its pixels have in the class map. Objects smaller than ``min_area_um2`` are dropped (specks,
not nuclei). :func:`object_classes` paints each nucleus whole in its one class: the class map of
the nuclei, where no object holds two classes. :func:`instance_method` is the one rule of which
split a model's nuclei get (``cinuseg segment``, the panel, napari's writer): its learned distance
where it has a separation head, else the watershed.

Large or lazy class maps (zarr, dask) are split block by block in bounded memory, with the
ownership rule of :mod:`napari_cinuseg.analysis.measurements`: each core block is read with a halo,
split there, and keeps the nuclei whose bounding box's top-left corner lies in its core; they are
written whole (halo pixels included, where no earlier block wrote) under ids that are unique over
the whole map. Exact for nuclei smaller than the halo, as the class statistics are.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

from ..analysis.measurements import block_windows
from ..runtime.names import DEFAULT_MIN_AREA_UM2, INSTANCE_METHODS

#: Markers of the watershed at least this far apart: about the radius of a small lymphocyte.
DEFAULT_MIN_DISTANCE_UM = 1.5
#: The pixel size assumed where an image's is unknown: 40×, as CoNSeP, MoNuSeg and MoNuSAC.
ASSUMED_PIXEL_SIZE_UM = 0.25
METHODS = INSTANCE_METHODS
#: h of the learned distance's h-maxima (``method="distance"``), in the map's units (0..1): a dip
#: of at least this much between two peaks splits them. Chosen on the nuclei benchmark's
#: validation split (docs/benchmarks-nuclei.md: of 0.05, 0.1, 0.2 and 0.3, the only one whose
#: F1, AJI and PQ all beat the class map's watershed on MoNuSeg and CoNSeP for a head trained
#: 600 iterations; after 300 it was 0.05: the better the head, the higher its peaks and the h).
DEFAULT_MARKER_H = 0.1
#: Above this many pixels (or for any non-numpy map) the map is split blockwise.
BLOCK = 2048
MARGIN = 128


@dataclass
class Nuclei:
    """An instance map and each nucleus's class.

    ``labels``: (H, W) uint32, 0 background, 1..N the nuclei (a numpy array, or the path of a zarr
    array on disk for a large map); ``classes[i]``: the class value (1..K) of nucleus i
    (``classes[0]`` = 0). ``min_area_px``: the area below which objects were dropped; ``note``: how
    the minimum area was converted, said when the pixel size was unknown.
    """

    labels: object
    classes: np.ndarray
    min_area_px: int
    method: str
    note: str = ""

    @property
    def count(self) -> int:
        return int(len(self.classes) - 1)


def object_classes(labels, classes, *, out: str | os.PathLike | None = None, block: int = BLOCK):
    """The class map of the nuclei: every pixel of nucleus i in its class ``classes[i]``, 0 where
    no nucleus is (background, and the specks under the minimum area). So no object holds two
    classes, and a nucleus's fragments of other classes are its own class.

    ``labels``: an instance map (numpy, zarr or dask); ``classes``: :class:`Nuclei`'s. A numpy map
    without ``out`` is mapped whole and returned; a lazy one is read in core blocks of ``block``
    pixels (memory bounded by the block), into numpy, or with ``out`` (a ``.zarr`` folder, written
    under a temporary name and renamed at the end) to disk, and then its path is returned.
    """
    lut = np.asarray(classes)
    lut = lut.astype(np.uint8 if lut.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16)
    if isinstance(labels, np.ndarray) and out is None:
        return lut[labels]
    h, w = (int(s) for s in labels.shape)
    out_path = Path(out) if out is not None else None
    result, tmp = (np.zeros((h, w), lut.dtype), None) if out_path is None else _zarr_output(out_path, (h, w), lut.dtype)
    try:
        for r0, r1, c0, c1, *_ in block_windows(h, w, block, 0):
            part = np.asarray(labels[r0:r1, c0:c1])
            if part.any():
                result[r0:r1, c0:c1] = lut[part]
        if out_path is None:
            return result
        os.replace(tmp, out_path)
        return out_path
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _zarr_output(out_path: Path, shape: tuple[int, int], dtype) -> tuple[object, Path]:
    """A zarr array of ``shape`` to fill, under a temporary name beside ``out_path`` (refused if
    ``out_path`` exists): (array, temporary path), renamed to ``out_path`` by the caller when whole."""
    import zarr  # noqa: PLC0415 - zarr (+150 ms) loads only for a map written to disk: the napari writer and the panel work in memory

    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; choose another output or delete it")
    tmp = out_path.with_name(f".{out_path.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    h, w = shape
    return zarr.open_array(str(tmp), mode="w", shape=shape, chunks=(min(h, 1024), min(w, 1024)), dtype=dtype), tmp


def instance_method(has_separation: bool, choice: str = "auto") -> str:
    """How nuclei are split, the one rule of ``cinuseg segment``, the panel and the writer:
    ``choice`` "auto" is the learned distance (``"distance"``) where the model has a separation
    head, so that its distance map is at hand, else the watershed on the class map's distance
    transform; any other choice is one of :data:`METHODS`, ``"distance"`` only with a head."""
    if choice == "auto":
        return "distance" if has_separation else "watershed"
    if choice not in METHODS:
        raise ValueError(f"unknown instance method {choice!r}: choose auto or one of {', '.join(METHODS)}")
    if choice == "distance" and not has_separation:
        raise ValueError(
            "instances by the learned distance need a model with a separation head; this one has none: "
            "choose auto or watershed"
        )
    return choice


def min_area_pixels(min_area_um2: float, pixel_size_um: float | None) -> tuple[int, str]:
    """``min_area_um2`` in pixels of an image of ``pixel_size_um`` µm/px, and a note where the pixel
    size is unknown (then 0.25 µm/px, 40×, is assumed)."""
    if min_area_um2 < 0:
        raise ValueError(f"the minimum nucleus area must be 0 µm² or more, got {min_area_um2}")
    note = ""
    if not pixel_size_um:
        pixel_size_um = ASSUMED_PIXEL_SIZE_UM
        note = (
            f"pixel size unknown: objects under {min_area_um2:g} µm² dropped assuming {ASSUMED_PIXEL_SIZE_UM:g} µm/px "
            "(40×); give the image's pixel size for areas in µm²"
        )
    return int(np.ceil(min_area_um2 / pixel_size_um**2)), note


def split_nuclei(
    class_map: np.ndarray,
    *,
    method: str = "watershed",
    min_area_px: int = 0,
    min_distance_px: int = 6,
    foreground: np.ndarray | None = None,
    separation: np.ndarray | None = None,
    marker_h: float = DEFAULT_MARKER_H,
) -> tuple[np.ndarray, np.ndarray]:
    """(instance map uint32, classes) of an in-memory class map: see the module's docstring.
    ``foreground``: a boolean mask to split instead of ``class_map > 0`` (the class map still gives
    the classes). ``separation``: the learned distance map (float 0..1, or uint8 0..255) of the
    same size, which ``method="distance"`` needs, ``marker_h`` its h-maxima's h. Ids run 1..N in
    raster order of the nuclei's first pixel."""
    if method not in METHODS:
        raise ValueError(f"unknown instance method {method!r}: choose one of {', '.join(METHODS)}")
    cm = np.asarray(class_map)
    if cm.ndim != 2:
        raise ValueError(f"an instance map needs a 2-D class map, got shape {cm.shape}")
    if method == "distance":
        if separation is None:
            raise ValueError(
                "instances by the learned distance need the model's separation map; a model without a "
                "separation head splits its nuclei by the watershed"
            )
        separation = as_distance(separation)
        if separation.shape != cm.shape:
            raise ValueError(f"the separation map {separation.shape} and the class map {cm.shape} must agree")
    fg = (cm > 0) if foreground is None else np.asarray(foreground, bool)
    if not fg.any():
        return np.zeros(cm.shape, np.uint32), np.zeros(1, np.uint8)
    components, n = ndi.label(fg)
    if method == "components":
        labels = components
    elif method == "distance":
        labels = _distance_watershed(fg, components, n, separation, marker_h)
    else:
        labels = _watershed(fg, components, n, max(1, int(min_distance_px)))
    return _finish(labels, cm, min_area_px)


def as_distance(separation) -> np.ndarray:
    """A separation map as float32 0..1: a uint8 one (as segmentation stores it) is divided by 255."""
    sep = np.asarray(separation)
    if sep.ndim != 2:
        raise ValueError(f"a separation map is 2-D, got shape {sep.shape}")
    if sep.dtype == np.uint8:
        return sep.astype(np.float32) / 255.0
    if not np.issubdtype(sep.dtype, np.floating):
        raise ValueError(f"a separation map is float 0..1 or uint8 0..255, got {sep.dtype}")
    return sep.astype(np.float32, copy=False)


def h_maxima_in(d: np.ndarray, fg: np.ndarray, h: float) -> np.ndarray:
    """``skimage.morphology.h_maxima(d, h) & fg`` for a map ``d`` that is 0 off ``fg``, computed
    on each 8-connected part of ``fg`` in its own box: the same pixels (a maximum of height h > 0
    never spans the zeros between two parts), in a twentieth of the time on a slide, since the
    grey reconstruction behind it sorts every pixel it is given."""
    parts, _ = ndi.label(fg, structure=np.ones((3, 3), bool))
    out = np.zeros(fg.shape, bool)
    for k, box in enumerate(ndi.find_objects(parts), start=1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        own = parts[box] == k
        out[box] |= h_maxima(np.where(own, d[box], 0), h).astype(bool) & own
    return out


def _distance_watershed(fg: np.ndarray, components: np.ndarray, n: int, distance: np.ndarray, h: float) -> np.ndarray:
    """Watershed of ``fg`` on the learned ``distance`` (lightly smoothed), from its h-maxima; a
    component without one keeps a marker at its highest pixel, so no nucleus is lost."""
    if not 0 < h < 1:
        raise ValueError(f"the markers' h must lie between 0 and 1 (the distance map's range), got {h}")
    d = ndi.gaussian_filter(distance, 1.0) * fg
    markers, _ = ndi.label(h_maxima_in(d, fg, h))
    found = int(markers.max())
    have = np.zeros(n + 1, bool)
    have[components[markers > 0]] = True
    missing = np.flatnonzero(~have[1:]) + 1
    if missing.size:
        for k, pos in enumerate(ndi.maximum_position(d, components, missing), start=found + 1):
            markers[pos] = k
    return watershed(-d, markers, mask=fg)


def _watershed(fg: np.ndarray, components: np.ndarray, n: int, min_distance: int) -> np.ndarray:
    """Marker-controlled watershed of ``fg`` on its distance transform; every component keeps at
    least one marker (its deepest point), so no nucleus is lost for want of a peak."""
    dist = ndi.distance_transform_edt(fg)
    smooth = ndi.gaussian_filter(dist, 1.0) * fg
    peaks = peak_local_max(smooth, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (small or flat): one marker at their deepest pixel
    have = np.zeros(n + 1, bool)
    have[components[tuple(peaks.T)]] = True
    missing = np.flatnonzero(~have[1:]) + 1
    if missing.size:
        deepest = ndi.maximum_position(dist, components, missing)
        for k, pos in enumerate(deepest, start=len(peaks) + 1):
            markers[pos] = k
    return watershed(-smooth, markers, mask=fg)


def _finish(labels: np.ndarray, cm: np.ndarray, min_area_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop objects under ``min_area_px``, renumber 1..N, and give each its majority class."""
    labels = labels.astype(np.int64, copy=False)
    n = int(labels.max())
    area = np.bincount(labels.ravel(), minlength=n + 1)
    small = area < max(int(min_area_px), 1)
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    labels, _, _ = relabel_sequential(labels)
    n = int(labels.max())
    k = int(cm.max()) + 1
    votes = np.bincount(labels.ravel() * k + cm.ravel().astype(np.int64), minlength=(n + 1) * k).reshape(n + 1, k)
    votes[:, 0] = 0  # a nucleus's class is one of the classes, never background
    classes = votes.argmax(1).astype(np.uint8 if k <= 256 else np.uint16)
    classes[0] = 0
    return labels.astype(np.uint32), classes


def nuclei_of(
    class_map,
    *,
    pixel_size_um: float | None = None,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    min_distance_um: float = DEFAULT_MIN_DISTANCE_UM,
    method: str = "auto",
    out: str | os.PathLike | None = None,
    blockwise: bool | None = None,
    block: int = BLOCK,
    margin: int = MARGIN,
    separation=None,
    marker_h: float = DEFAULT_MARKER_H,
) -> Nuclei:
    """The nuclei of a class map (numpy, zarr or dask; 0 background, i class i) as :class:`Nuclei`.

    ``separation``: the model's learned distance map of the same size (numpy, zarr or dask; float
    0..1 or uint8 0..255, read block by block with the class map), for ``method="distance"``.
    ``method="auto"`` (:func:`instance_method`) splits by it where it is given, else by the
    watershed.

    ``pixel_size_um``: µm per pixel of the map (unknown: 0.25 assumed, and the note says so).
    A numpy map of at most ``block``² × 4 pixels is split whole; a larger or lazy one blockwise
    (``blockwise`` forces the choice), its instance map then a zarr array at ``out`` (a ``.zarr``
    folder, written under a temporary name and renamed at the end; in memory without ``out``).
    """
    if method == "auto":
        method = instance_method(separation is not None)
    min_px, note = min_area_pixels(min_area_um2, pixel_size_um)
    dist_px = max(1, int(round(min_distance_um / (pixel_size_um or ASSUMED_PIXEL_SIZE_UM))))
    if blockwise is None:
        blockwise = not isinstance(class_map, np.ndarray) or class_map.size > 4 * block * block
    if not blockwise:
        labels, classes = split_nuclei(
            np.asarray(class_map),
            method=method,
            min_area_px=min_px,
            min_distance_px=dist_px,
            separation=None if separation is None else np.asarray(separation),
            marker_h=marker_h,
        )
        return Nuclei(labels, classes, min_px, method, note)
    if method == "distance" and separation is None:
        raise ValueError("instances by the learned distance need the model's separation map")
    if separation is not None and tuple(separation.shape) != tuple(class_map.shape):
        raise ValueError(
            f"the separation map {tuple(separation.shape)} and the class map {tuple(class_map.shape)} must agree"
        )
    labels, classes = _blockwise(class_map, method, min_px, dist_px, block, margin, out, separation, marker_h)
    return Nuclei(labels, classes, min_px, method, note)


def _blockwise(class_map, method, min_px, dist_px, block, margin, out, separation=None, marker_h=DEFAULT_MARKER_H):
    h, w = (int(s) for s in class_map.shape)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        result, tmp = _zarr_output(out_path, (h, w), "uint32")
    else:
        result = np.zeros((h, w), np.uint32)
    classes = [np.zeros(1, np.uint8)]
    next_id = 1
    try:
        for r0, r1, c0, c1, er0, er1, ec0, ec1 in block_windows(h, w, block, margin):
            ext = np.asarray(class_map[er0:er1, ec0:ec1])
            if not (ext > 0).any():
                continue
            sep = None if separation is None else np.asarray(separation[er0:er1, ec0:ec1])
            lab, cls = split_nuclei(
                ext, method=method, min_area_px=min_px, min_distance_px=dist_px, separation=sep, marker_h=marker_h
            )
            n = len(cls) - 1
            if n == 0:
                continue
            objs = ndi.find_objects(lab)
            top = np.array([(s[0].start + er0, s[1].start + ec0) for s in objs], np.int64)
            owned = (top[:, 0] >= r0) & (top[:, 0] < r1) & (top[:, 1] >= c0) & (top[:, 1] < c1)
            keep = np.flatnonzero(owned) + 1
            if keep.size == 0:
                continue
            new_ids = np.zeros(n + 1, np.uint32)
            new_ids[keep] = np.arange(next_id, next_id + keep.size, dtype=np.uint32)
            mapped = new_ids[lab]
            region = np.asarray(result[er0:er1, ec0:ec1])
            free = (region == 0) & (mapped > 0)
            region[free] = mapped[free]
            result[er0:er1, ec0:ec1] = region
            classes.append(cls[keep])
            next_id += keep.size
        classes = np.concatenate(classes)
        if out_path is not None:
            os.replace(tmp, out_path)
            return out_path, classes
        return result, classes
    finally:
        if out_path is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
