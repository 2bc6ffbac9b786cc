"""Evaluate a model on labelled images: Dice per class the model and the data share (and the
counts of each image behind it), and where each labelled class's pixels went (the pixel
confusion of data classes against model channels)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..datasets.labelled import IGNORE, LabelledSet
from ..model.segmenter import CiNuSegModel
from ..runtime.devices import resolve_device
from .metrics import ConfusionMatrix


def evaluate(
    model: CiNuSegModel,
    data: LabelledSet,
    device: str = "auto",
    on_image: Callable[[int, int], None] | None = None,
    say_unscored: bool = True,
) -> dict[str, float]:
    """Dice (0..100) per model class, matched to the data's classes by name.

    Pixels of data classes the model does not know are ignored, as in the paper's per-step curve.
    Each image is predicted whole. ``say_unscored``: warn when some classes of the model or the
    data are not scored (off where that is the protocol, as in the benchmark's per-step curve).
    """
    return score(model, data, device, on_image, say_unscored).dice


@dataclass
class Scores:
    """Dice per class over all the images, and per image the counts it is made of."""

    dice: dict[str, float]  # 0..100, NaN for a class without pixels in the images
    #: per image name, per class: [pixels of the class predicted as it, pixels of the class,
    #: pixels predicted as it]; summed over the images they give ``dice``
    per_image: dict[str, dict[str, list[int]]]


def score(
    model: CiNuSegModel,
    data: LabelledSet,
    device: str = "auto",
    on_image: Callable[[int, int], None] | None = None,
    say_unscored: bool = True,
) -> Scores:
    """:func:`evaluate`'s Dice and, per image, the counts behind it (what a bootstrap over the
    images resamples: ``benchmark/bootstrap.py``)."""
    lut = np.full(256, IGNORE, np.uint8)
    lut[0] = 0
    shared = []
    for i, name in enumerate(data.class_names, start=1):
        try:
            lut[i] = model.channel_of(name)
            shared.append(name)
        except KeyError:
            pass
    if not shared:
        raise ValueError(
            f"the model's classes ({', '.join(model.class_names)}) and the data's "
            f"({', '.join(data.class_names)}) share no name; evaluate on data annotated with the "
            "model's classes"
        )
    unscored = [n for n in model.class_names if n.lower() not in {c.lower() for c in shared}]
    ignored = [n for n in data.class_names if n not in shared]
    if say_unscored and (unscored or ignored):
        warnings.warn(
            "only the classes the model and the data share are scored ("
            + ", ".join(shared)
            + ")"
            + (f"; the model's {', '.join(unscored)} not (the data has no such class)" if unscored else "")
            + (
                f"; the data's {', '.join(ignored)} pixels are ignored (the model does not know them)"
                if ignored
                else ""
            ),
            UserWarning,
            stacklevel=3,
        )
    cm = ConfusionMatrix(model.num_channels)
    channels = [model.channel_of(name) for name in shared]
    per_image = {}
    for name, counts in _image_confusions(model, data, device, on_image):
        image = np.zeros_like(cm.counts)
        rows = lut[: counts.shape[0]]
        known = rows != IGNORE
        np.add.at(image, rows[known], counts[known])  # a pixel of a class the model does not know is skipped
        cm.counts += image
        truth, called = image.sum(1), image.sum(0)
        per_image[name] = {c: [int(image[ch, ch]), int(truth[ch]), int(called[ch])] for c, ch in zip(shared, channels)}
    dice = cm.dice()
    return Scores({name: float(dice[ch] * 100) for name, ch in zip(shared, channels)}, per_image)


@dataclass
class PixelConfusion:
    """Pixels of each labelled class (rows: background, then the data's classes in its order)
    predicted as each model channel (columns: background, then the model's classes)."""

    truth_names: list[str]
    predicted_names: list[str]
    counts: np.ndarray  # int64 (len(truth_names), len(predicted_names))

    def record(self) -> dict:
        """Readable: for each labelled class, its pixels per predicted channel; for each predicted
        channel, the share of its pixels on each labelled class (what it was called on)."""
        called = self.counts.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(called > 0, self.counts / called, np.nan)
        return {
            "truth": {
                t: {p: int(n) for p, n in zip(self.predicted_names, row)}
                for t, row in zip(self.truth_names, self.counts)
            },
            "predicted_pixels": {p: int(n) for p, n in zip(self.predicted_names, called)},
            "predicted_on": {
                p: {t: round(float(share[i, j]), 4) for i, t in enumerate(self.truth_names)}
                for j, p in enumerate(self.predicted_names)
            },
        }


def pixel_confusion(
    model: CiNuSegModel,
    data: LabelledSet,
    device: str = "auto",
    on_image: Callable[[int, int], None] | None = None,
) -> PixelConfusion:
    """Count every labelled pixel (label ``IGNORE`` skipped) by its class in the data and the
    channel the model predicts there, each image predicted whole: where a class's pixels are lost
    to, and what an over-called class is called on."""
    counts = np.zeros((len(data.class_names) + 1, model.num_channels), np.int64)
    for _, image in _image_confusions(model, data, device, on_image):
        counts += image
    return PixelConfusion(["background", *data.class_names], ["background", *model.class_names], counts)


def _image_confusions(
    model: CiNuSegModel, data: LabelledSet, device: str, on_image: Callable[[int, int], None] | None
) -> Iterator[tuple[str, np.ndarray]]:
    """Per image, its name and :func:`pixel_confusion`'s counts on it alone."""
    truth_names = ["background", *data.class_names]
    dev = resolve_device(device)
    with torch.inference_mode():
        for n, item in enumerate(data.items):
            truth = np.asarray(item.labels)
            top = int(truth[truth != IGNORE].max(initial=0))
            if top >= len(truth_names):
                raise ValueError(
                    f"image {item.name}: label {top} but the data set names {len(data.class_names)} classes"
                )
            cm = ConfusionMatrix(len(truth_names), model.num_channels)
            cm.update(truth, model.predict(item.image, dev))
            yield item.name, cm.counts
            if on_image:
                on_image(n + 1, len(data.items))
