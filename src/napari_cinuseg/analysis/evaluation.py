"""Evaluate a model on labelled images: Dice per class the model and the data share."""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from ..datasets.labelled import IGNORE, LabelledSet
from ..runtime.devices import resolve_device
from .metrics import ConfusionMatrix
from ..model.segmenter import CiNuSegModel


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
            + (f"; the data's {', '.join(ignored)} pixels are ignored (the model does not know them)" if ignored else ""),
            UserWarning,
            stacklevel=2,
        )
    cm = ConfusionMatrix(model.num_channels)
    dev = resolve_device(device)
    with torch.inference_mode():
        for n, item in enumerate(data.items):
            cm.update(lut[item.labels], model.predict(item.image, dev))
            if on_image:
                on_image(n + 1, len(data.items))
    dice = cm.dice()
    return {name: float(dice[model.channel_of(name)] * 100) for name in shared}
