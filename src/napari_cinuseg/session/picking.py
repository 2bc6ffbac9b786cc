"""Clicking a nucleus: the model's nucleus object under a point becomes a painted nucleus.

A pathologist labels nuclei faster by clicking them than by painting them pixel by pixel: a
click (or a short stroke, given as its points) on a nucleus the model found takes that whole
object (its instance, :func:`napari_cinuseg.inference.instances.split_nuclei`) as the painted
nucleus. A click where the model found no nucleus takes nothing; the caller says so, and the
user paints that one by hand.
"""

from __future__ import annotations

import numpy as np


def objects_at(instances: np.ndarray, points, radius: int = 0) -> np.ndarray:
    """The ids of the objects of ``instances`` (H, W; 0 none) under each of ``points`` ((N, 2)
    row, col in pixels of the instance map), one per point, 0 where a point hits no object.

    ``radius`` (pixels): a point that misses every object by at most this takes the nearest
    object's id within it, so a click just off a small nucleus still finds it. Points outside the
    map hit nothing.
    """
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise ValueError(f"an instance map must be 2-D, got shape {inst.shape}")
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ids = np.zeros(len(pts), np.int64)
    h, w = inst.shape
    for k, (r, c) in enumerate(np.rint(pts).astype(np.int64)):
        if not (0 <= r < h and 0 <= c < w):
            continue
        if inst[r, c]:
            ids[k] = int(inst[r, c])
            continue
        if radius <= 0:
            continue
        r0, r1, c0, c1 = max(r - radius, 0), min(r + radius + 1, h), max(c - radius, 0), min(c + radius + 1, w)
        window = inst[r0:r1, c0:c1]
        rr, cc = np.nonzero(window)
        if rr.size:
            d2 = (rr + r0 - r) ** 2 + (cc + c0 - c) ** 2
            best = int(np.argmin(d2))
            if d2[best] <= radius * radius:
                ids[k] = int(window[rr[best], cc[best]])
    return ids


def paint_objects(annotation: np.ndarray, instances: np.ndarray, ids, label: int, *, over: bool = False) -> int:
    """Paint the objects ``ids`` of ``instances`` into ``annotation`` with ``label``, in place.

    Pixels the user already painted keep their paint unless ``over``: a click never erases a
    stroke. Returns the number of pixels painted.
    """
    ann = np.asarray(annotation)
    inst = np.asarray(instances)
    if ann.shape != inst.shape:
        raise ValueError(f"the annotation {ann.shape} and the instance map {inst.shape} cover different pixels")
    wanted = np.unique(np.asarray(ids, dtype=np.int64))
    wanted = wanted[wanted > 0]
    if not wanted.size:
        return 0
    mask = np.isin(inst, wanted)
    if not over:
        mask &= ann == 0
    ann[mask] = label
    return int(mask.sum())
