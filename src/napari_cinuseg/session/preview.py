"""A live preview of the painted regions while a step trains (:func:`with_preview`): the model's
prediction, made in the job's thread between two iterations, that the panel only shows."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence

import numpy as np

from ..io.pixel_size import resampling_factor
from ..runtime.events import Preview, Progress, StepStarted, tap
from ..runtime.names import IGNORE
from .review import painted_region

PREVIEW_EVERY_S = 3.0  # seconds of training between two previews
PREVIEW_MAX_SIDE = 512  # a preview covers at most this much of each painted region (around its nuclei)


def _box_around(target: np.ndarray, side: int) -> tuple[int, int, int, int]:
    """The region the review will look at (:func:`~.review.painted_region`) where it is at most
    ``side`` px a side, so that the step's result takes the preview's place; else a box of ``side``
    px a side inside the image, centred where the painted nuclei are (the median of the pixels
    painted with a class), else on the image's centre."""
    region = painted_region(target)
    if region[2] - region[0] <= side and region[3] - region[1] <= side:
        return region
    h, w = target.shape[:2]
    ys, xs = np.nonzero((target != 0) & (target != IGNORE))
    cy, cx = (int(np.median(ys)), int(np.median(xs))) if ys.size else (h // 2, w // 2)
    y0 = min(max(cy - side // 2, 0), max(h - side, 0))
    x0 = min(max(cx - side // 2, 0), max(w - side, 0))
    return y0, x0, min(y0 + side, h), min(x0 + side, w)


def preview_boxes(pairs: Sequence, max_side: int = PREVIEW_MAX_SIDE) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) in each pair's image of what the live preview covers: at most ``max_side``
    px a side, around the painted nuclei (background strokes spread wide do not move it)."""
    return [_box_around(np.asarray(p.target), max_side) for p in pairs]


def predict_while_training(model, image: np.ndarray, image_pixel_size: float | None = None) -> np.ndarray:
    """The class map of ``image`` by a model in training, on the device its weights are on,
    leaving every module's train/eval mode (frozen batch norms too) and the weights as they were;
    resampled from ``image_pixel_size`` to the model's pixel size as segmentation resamples, the
    map back at the image's size."""
    scale = resampling_factor(model.pixel_size, image_pixel_size)
    return model.predict(image, next(model.network.parameters()).device, scale=scale)


def with_preview(
    job: Generator,
    pairs: Sequence,
    every_s: float = PREVIEW_EVERY_S,
    max_side: int = PREVIEW_MAX_SIDE,
    image_pixel_size: float | None = None,
) -> Generator:
    """``job``'s events and result, and every ``every_s`` seconds of training a
    :class:`~napari_cinuseg.runtime.events.Preview`: the model's prediction around the painted
    nuclei (at most ``max_side`` px a side) of each pair's image, made in the job's thread between two
    iterations, so the viewer only shows it. The images (``image_pixel_size`` µm per pixel;
    unknown: the model's assumed) are seen at the model's pixel size, as Segment image sees them,
    and the maps come back at their own size. Closing this closes ``job``."""
    boxes = preview_boxes(pairs, max_side)
    last, model = time.perf_counter(), None

    def after(ev):
        nonlocal last, model
        if isinstance(ev, StepStarted):
            model = ev.model  # the model being trained, read only between two events
        if not isinstance(ev, Progress) or ev.iteration >= ev.total or time.perf_counter() - last < every_s:
            return None
        shown = None
        if model is not None:
            maps = tuple(
                predict_while_training(model, np.asarray(p.image)[y0:y1, x0:x1], image_pixel_size)
                for p, (y0, x0, y1, x1) in zip(pairs, boxes)
            )
            shown = [Preview(ev.iteration, ev.total, maps, tuple((y0, x0) for y0, x0, _, _ in boxes))]
        last = time.perf_counter()
        return shown

    return (yield from tap(job, after))
