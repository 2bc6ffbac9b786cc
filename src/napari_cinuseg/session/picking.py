"""Clicking a nucleus: the model's nucleus object under a point becomes a painted nucleus.

A pathologist labels nuclei faster by clicking them than by painting them pixel by pixel: a
click (or a short stroke, given as its points) on a nucleus the model found takes that whole
object (its instance, :func:`napari_cinuseg.inference.instances.split_nuclei`) as the painted
nucleus. A click where the model found no nucleus takes nothing; the caller says so, and the
user paints that one by hand.

The nuclei come from a :class:`SegmentedArea`: the image's whole segmentation where there is one
of the current model, else a window of ``CLICK_WINDOW`` model pixels segmented about the click
(:func:`segment_area`, in the caller's worker); :class:`NucleusClicks` keeps an image's windows
and the clicks waiting for the next one. A click paints the label chosen, as the brush would:
the new class, background, or a class of the model (a correction), and never over paint.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from ..inference.instances import ASSUMED_PIXEL_SIZE_UM
from ..inference.tiling import DEFAULT_TILE
from ..io.pixel_size import resampling_factor
from ..runtime.events import CancelFlag
from .nuclei import segment_nuclei_and_measure


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


# --- clicks on an image: where the model's nuclei come from, and what a click paints ---------------

#: How far about a click (µm) the model's instance map is read: a nucleus lies whole within it.
NUCLEUS_REACH_UM = 32.0
#: A click at most this far (µm) off the model's nucleus still takes it.
CLICK_RADIUS_UM = 2.0
#: The side (model pixels) of the window segmented about a click where the model has not segmented yet.
CLICK_WINDOW = 1024
#: The segmented windows one image keeps (the newest), each an instance map of at most CLICK_WINDOW².
KEPT_AREAS = 8
#: What the panel says for a click where the model found no nucleus.
NO_NUCLEUS = "no nucleus found here: paint it by hand"


@dataclass
class SegmentedArea:
    """Part of an image the model split into nuclei: ``box`` (top, left, bottom, right) in the
    image's pixels, ``labels`` the instance map over the box (numpy, or a slide's lazy zarr array:
    only the pixels about a click are read), ``classes[i]`` the model's class (1..K) of nucleus
    i, and ``image_shape`` (rows, cols) of the whole image."""

    box: tuple[int, int, int, int]
    labels: object
    classes: np.ndarray
    image_shape: tuple[int, int]

    def __post_init__(self):
        top, left, bottom, right = self.box
        h, w = self.image_shape
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise ValueError(f"the box {self.box} is not inside the image of {h} × {w} pixels")
        if tuple(self.labels.shape[:2]) != (bottom - top, right - left):
            raise ValueError(f"an instance map of shape {tuple(self.labels.shape)} does not cover the box {self.box}")

    def covers(self, point, reach: int) -> bool:
        """Whether a click at ``point`` (row, col in the image) lies in the box at least ``reach``
        pixels from each of its sides that is not an edge of the image: a nucleus under the click
        is then whole in the box."""
        r, c = _pixel(point)
        top, left, bottom, right = self.box
        h, w = self.image_shape
        if not (top <= r < bottom and left <= c < right):
            return False
        return (
            (top == 0 or r - top >= reach)
            and (bottom == h or bottom - 1 - r >= reach)
            and (left == 0 or c - left >= reach)
            and (right == w or right - 1 - c >= reach)
        )


@dataclass
class Pick:
    """What a click takes: ``rows``, ``cols`` (image pixels) of the nucleus to paint, those not
    painted yet; ``nucleus`` its id in its area's instance map (0: none under the click);
    ``nucleus_class`` the model's class of it (1..K); ``area`` its pixels. Its pixels painted
    before keep their paint (``kept``)."""

    rows: np.ndarray
    cols: np.ndarray
    nucleus: int = 0
    nucleus_class: int = 0
    area: int = 0

    @property
    def kept(self) -> int:
        return self.area - len(self.rows)


def _pixel(point) -> tuple[int, int]:
    r, c = np.rint(np.asarray(point, dtype=float).reshape(-1)[-2:]).astype(np.int64)
    return int(r), int(c)


def pick_nucleus(area: SegmentedArea, annotation, point, label: int, *, reach: int, radius: int = 0) -> Pick:
    """The nucleus of ``area`` under a click at ``point`` (row, col in the image's pixels), and its
    pixels a click paints with ``label`` into ``annotation`` (an array-like over the whole image,
    read only about the click; not written: the caller paints ``rows``, ``cols``, so that napari
    records the click for undo). :func:`objects_at` finds the nucleus (``radius``: a click that far
    off it still takes it), :func:`paint_objects` keeps every painted pixel. The instance map is
    read ``reach`` pixels about the click, and twice, then four times as far where the nucleus
    still touches the edge of what was read inside the area."""

    r, c = _pixel(point)
    top, left, bottom, right = area.box
    if not (top <= r < bottom and left <= c < right):
        raise ValueError(f"the click ({r}, {c}) lies outside the segmented box {area.box}")
    ann_shape = tuple(annotation.shape[:2])
    if ann_shape != tuple(area.image_shape):
        raise ValueError(f"the annotation {ann_shape} and the segmented image {area.image_shape} differ in size")
    nothing = Pick(np.zeros(0, np.int64), np.zeros(0, np.int64))
    for k in (reach, 2 * reach, 4 * reach):
        y0, y1, x0, x1 = max(r - k, top), min(r + k + 1, bottom), max(c - k, left), min(c + k + 1, right)
        inst = np.asarray(area.labels[y0 - top : y1 - top, x0 - left : x1 - left])
        (nucleus,) = objects_at(inst, [(r - y0, c - x0)], radius)
        if not nucleus:
            return nothing
        mask = inst == nucleus
        cut = (
            (y0 > top and mask[0].any())
            or (y1 < bottom and mask[-1].any())
            or (x0 > left and mask[:, 0].any())
            or (x1 < right and mask[:, -1].any())
        )
        if not cut:
            break
    painted = np.array(annotation[y0:y1, x0:x1])
    before = painted.copy()
    paint_objects(painted, inst, [nucleus], label)
    rows, cols = np.nonzero(painted != before)
    return Pick(rows + y0, cols + x0, int(nucleus), int(np.asarray(area.classes)[nucleus]), int(mask.sum()))


def checked_label(label: int, names: Sequence[str]) -> int:
    """``label`` if a click may paint it: one of an annotation layer's labels 1.. (``names``,
    label 0 first: :func:`napari_cinuseg.ui.annotation_layers.paint_names`'s); else a ValueError
    that says what to choose. A click paints, it never erases."""
    label = int(label)
    if 1 <= label < len(names):
        return label
    choices = ", ".join(f"{n} [{i}]" for i, n in enumerate(names) if i)
    if label == 0:
        why = "a click paints a whole nucleus, it does not erase"
    else:
        why = f"label {label} is none of this annotation layer's"
    raise ValueError(f"{why}: choose under Paint what a click paints ({choices})")


def pick_sentence(pick: Pick, paint: str, class_names: Sequence[str]) -> str:
    """What a click did, for the panel's status line: ``paint`` names the label it painted,
    ``class_names`` the model's classes."""
    if not pick.nucleus:
        return NO_NUCLEUS
    known = 1 <= pick.nucleus_class <= len(class_names)
    what = f"the model's {class_names[pick.nucleus_class - 1]} nucleus" if known else "the model's nucleus"
    if not len(pick.rows):
        return (
            f"{what[0].upper()}{what[1:]} here is painted already: a click never paints over paint "
            "(erase it with the brush's label 0 to paint it again)"
        )
    said = f"Painted {what} ({pick.area} px) as {paint}"
    if pick.kept:
        said += f"; its {pick.kept} px painted before keep their paint"
    return said + "."


def picks_sentence(picks: Sequence[tuple[Pick, str]], class_names: Sequence[str]) -> str:
    """What several clicks did at once (those that waited for the model's nuclei): each
    (pick, name of the label it painted)."""
    if len(picks) == 1:
        return pick_sentence(picks[0][0], picks[0][1], class_names)
    painted: dict[str, int] = {}
    for pick, paint in picks:
        if pick.nucleus and len(pick.rows):
            painted[paint] = painted.get(paint, 0) + 1
    missed = sum(1 for pick, _ in picks if not pick.nucleus)
    already = sum(1 for pick, _ in picks if pick.nucleus and not len(pick.rows))
    parts = [f"{n} nucle{'us' if n == 1 else 'i'} painted as {paint}" for paint, n in painted.items()]
    if already:
        parts.append(f"{already} painted already (a click never paints over paint)")
    if missed:
        parts.append(f"{missed} where the model found no nucleus: paint {'it' if missed == 1 else 'them'} by hand")
    return f"{len(picks)} clicks: " + "; ".join(parts) + "."


@dataclass
class Click:
    """A click waiting for the model's nuclei: ``point`` (row, col in the image), the ``label``
    chosen when it was made, and ``target``, what it paints into (the caller's: a layer)."""

    point: tuple[float, float]
    label: int
    target: object = None


class NucleusClicks:
    """The clicks on one image with one model: the areas the model segmented for them (a whole
    image's segmentation, or windows about clicks), and the clicks waiting for the next window.

    ``model_pixel_size``, ``image_pixel_size`` (µm/px; None unknown, then the model's is assumed,
    as segmentation does) size the window (``CLICK_WINDOW`` model pixels, in image pixels), how
    far about a click the nucleus is read (``reach``) and how far off a nucleus a click may be
    (``radius``). ``key`` says which model and pixel size the areas are of."""

    def __init__(self, image_shape, *, model_pixel_size=None, image_pixel_size=None, key=None):
        h, w = (int(s) for s in tuple(image_shape)[:2])
        if h <= 0 or w <= 0:
            raise ValueError(f"an image of {h} × {w} pixels has nothing to click")
        self.image_shape = (h, w)
        self.key = key
        px = image_pixel_size or model_pixel_size or ASSUMED_PIXEL_SIZE_UM
        self.reach = max(8, math.ceil(NUCLEUS_REACH_UM / px))
        self.radius = max(1, round(CLICK_RADIUS_UM / px))
        scale = resampling_factor(model_pixel_size, image_pixel_size)
        self.window = max(math.ceil(CLICK_WINDOW / scale), 4 * self.reach + 1)
        self.areas: list[SegmentedArea] = []
        self.pending: list[Click] = []

    def inside(self, point) -> bool:
        r, c = _pixel(point)
        return 0 <= r < self.image_shape[0] and 0 <= c < self.image_shape[1]

    def area_for(self, point) -> SegmentedArea | None:
        """The newest area where a click at ``point`` finds its nucleus whole, if any."""
        return next((a for a in self.areas if a.covers(point, self.reach)), None)

    def window_around(self, point) -> tuple[int, int, int, int]:
        """The box (top, left, bottom, right) to segment for a click at ``point``: ``window``
        pixels a side (the whole image where it is smaller), centred on the click and moved
        inside the image; it covers the click (:meth:`SegmentedArea.covers`)."""
        if not self.inside(point):
            raise ValueError(f"the click {tuple(point)} lies outside the image of {self.image_shape} pixels")
        box = []
        for p, n in zip(_pixel(point), self.image_shape):
            side = min(self.window, n)
            start = min(max(p - side // 2, 0), n - side)
            box.append((start, start + side))
        (top, bottom), (left, right) = box
        return top, left, bottom, right

    def add(self, area: SegmentedArea) -> None:
        if tuple(area.image_shape) != self.image_shape:
            raise ValueError(f"an area of an image of {area.image_shape} pixels, not {self.image_shape}")
        self.areas = [area, *self.areas][:KEPT_AREAS]

    def take_pending(self, area: SegmentedArea) -> list[Click]:
        """The waiting clicks ``area`` covers, in the order they were made (no longer waiting)."""
        taken = [k for k in self.pending if area.covers(k.point, self.reach)]
        self.pending = [k for k in self.pending if k not in taken]
        return taken


def segment_area(
    model,
    pixels,
    box: tuple[int, int, int, int],
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = 64,
    image_pixel_size: float | None = None,
    device: str = "auto",
    cancel: CancelFlag = None,
) -> Generator:
    """The model's nuclei in ``box`` (top, left, bottom, right) of ``pixels`` (an RGB array-like
    of the whole image: only the box is read), as Segment image finds them
    (:func:`~napari_cinuseg.session.nuclei.segment_nuclei_and_measure`, resampled to the model's
    pixel size and back, so the instance map is in the image's pixels): a :class:`SegmentedArea`,
    or None when cancelled. A generator of the segmentation's events."""
    top, left, bottom, right = box
    shape = tuple(pixels.shape[:2])
    window = np.ascontiguousarray(np.asarray(pixels[top:bottom, left:right])[..., :3])
    result = yield from segment_nuclei_and_measure(
        model,
        window,
        tile=tile,
        overlap=overlap,
        image_pixel_size=image_pixel_size,
        cancel=cancel,
        device=device,
    )
    if result is None:
        return None
    return SegmentedArea(tuple(box), result.nuclei.labels, result.nuclei.classes, shape)


def same_pixel_size(a: float | None, b: float | None) -> bool:
    """Whether two pixel sizes (µm/px; None or 0 unknown) are the same, both unknown included."""
    if not a or not b:
        return not a and not b
    return math.isclose(float(a), float(b), rel_tol=1e-6)
