"""Training pairs at a model's pixel size: a step learns from its images as segmentation will show
them to the network, resampled to the prior's µm per pixel by the rule segmentation follows
(:func:`~napari_cinuseg.io.pixel_size.resampling_factor`: sizes within 5 % are left alone).

The image is resampled bilinearly (anti-aliased when it shrinks), the target and the instance
map (where the pair has one) by nearest neighbour, so their values (0 background, 1..n the step's
classes, 255 unlabelled; the nucleus ids) stay exactly those values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.transform import resize

from ..datasets.labelled import TrainingPair
from ..io.pixel_size import resampling_factor


def resampled_pair(pair: TrainingPair, factor: float) -> TrainingPair:
    """``pair`` with both sides ``factor`` times as many pixels (at least one); itself at 1."""
    if factor == 1.0:
        return pair
    image, target = np.asarray(pair.image), np.asarray(pair.target)
    h, w = target.shape
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    img = resize(image, (*size, image.shape[2]), order=1, preserve_range=True, anti_aliasing=factor < 1)
    tgt = resize(target, size, order=0, preserve_range=True, anti_aliasing=False)
    inst = None
    if pair.instances is not None:  # nucleus ids, by nearest neighbour as the target
        inst = np.asarray(pair.instances)
        inst = resize(inst, size, order=0, preserve_range=True, anti_aliasing=False).astype(inst.dtype)
    return TrainingPair((img + 0.5).astype(np.uint8), tgt.astype(target.dtype), pair.name, inst)


def pairs_at_pixel_size(
    pairs: Sequence[TrainingPair], pixel_size: float | None, model_pixel_size: float | None
) -> tuple[list[TrainingPair], float]:
    """The pairs, whose images are ``pixel_size`` µm per pixel, resampled to ``model_pixel_size``,
    and the factor applied (model pixels per image pixel; 1 where either size is unknown or they
    differ by at most 5 %)."""
    factor = resampling_factor(model_pixel_size, pixel_size)
    return [resampled_pair(p, factor) for p in pairs], factor
