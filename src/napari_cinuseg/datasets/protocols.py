"""Incremental protocols ("overlapped" setting): which classes each step learns.

``X-Y``: X classes at step 0, Y more at each later step, in a given class order. The training
data of step t are the images holding a pixel of a class of C^t, with every other pixel labelled
background (:func:`napari_cinuseg.datasets.labelled.step_pairs`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# The paper's class orders (its MoNuSAC 1-1: Epithelial, then Lymphocyte, Neutrophil, Macrophage).
CLASS_ORDERS = {
    "consep": ("Epithelial", "Spindle-shaped", "Other"),
    "monusac": ("Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"),
}


@dataclass(frozen=True)
class Protocol:
    name: str  # "1-1"
    steps: tuple[tuple[str, ...], ...]  # classes learned at each step

    @property
    def base_classes(self) -> tuple[str, ...]:
        return self.steps[0]

    @property
    def added_classes(self) -> tuple[str, ...]:
        return tuple(c for step in self.steps[1:] for c in step)

    @property
    def all_classes(self) -> tuple[str, ...]:
        return tuple(c for step in self.steps for c in step)

    def seen_after(self, t: int) -> tuple[str, ...]:
        return tuple(c for step in self.steps[: t + 1] for c in step)


def make_protocol(spec: str, class_order: Sequence[str], known: Sequence[str] | None = None) -> Protocol:
    """``make_protocol("2-1", ["Epithelial", "Spindle-shaped", "Other"])`` → steps (E, S), (O).

    ``known`` are the data set's classes: a class order naming another class is an error. The
    class order may leave classes out; the protocol must use every class of the order, with the
    last step allowed to be smaller than Y.
    """
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
    if not m:
        raise ValueError(f"protocol {spec!r} is not of the form X-Y, e.g. 1-1 or 2-1")
    x, y = int(m.group(1)), int(m.group(2))
    order = [c.strip() for c in class_order if c.strip()]
    if known is not None:
        lower = {k.lower(): k for k in known}
        unknown = [c for c in order if c.lower() not in lower]
        if unknown:
            raise ValueError(
                f"the class order names {', '.join(unknown)}, which the data set lacks; it has {', '.join(known)}"
            )
        order = [lower[c.lower()] for c in order]
    if len({c.lower() for c in order}) != len(order):
        raise ValueError("the class order names a class twice")
    if x < 1 or y < 1:
        raise ValueError(f"protocol {spec}: X and Y must be at least 1")
    if x + y > len(order):
        raise ValueError(
            f"protocol {spec} needs at least {x + y} classes but the class order has {len(order)} ({', '.join(order)})"
        )
    steps = [tuple(order[:x])]
    rest = order[x:]
    while rest:
        steps.append(tuple(rest[:y]))
        rest = rest[y:]
    return Protocol(f"{x}-{y}", tuple(steps))
