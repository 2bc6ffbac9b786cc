"""Offline (joint) training, the upper bound: every class of the protocol learned at once, with
full labels, by the base step's BCE. It is not an incremental step: the benchmark trains it with
:func:`napari_cinuseg.training.steps.train_base` on all classes (``joint = True``)."""

from __future__ import annotations

from dataclasses import dataclass

from . import register
from .finetune import FineTune


@dataclass
class Offline(FineTune):
    name: str = "offline"
    joint: bool = True  # trained once on all classes, not step by step


register("offline")(Offline)
