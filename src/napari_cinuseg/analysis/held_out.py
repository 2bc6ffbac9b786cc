"""Whether the images a model is scored on are ones it learned from: every step of a model
records the names of its training images (``StepRecord.data["images"]``), so a score can say
which of its images a step trained on, by name, before anyone takes it for a held-out figure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..model.segmenter import CiNuSegModel


@dataclass(frozen=True)
class TrainedOn:
    """The images of a score that one step of the model trained on (by name)."""

    step: int
    method: str
    images: list[str]


def trained_on(model: CiNuSegModel, names: Iterable[str]) -> list[TrainedOn]:
    """Per step of ``model`` that trained on some of ``names``, those names (in their order);
    steps without a record of their images (made before it was kept) are not known to."""
    names = list(names)
    out = []
    for record in model.steps:
        seen = set(record.data.get("images") or ())
        hit = [n for n in names if n in seen]
        if hit:
            out.append(TrainedOn(record.step, record.method, hit))
    return out


def trained_images(found: list[TrainedOn]) -> set[str]:
    """The names of :func:`trained_on`'s images, whichever step trained on them."""
    return {n for f in found for n in f.images}


#: what ``cinuseg evaluate`` advises
EVALUATE_ADVICE = (
    "score images it has not seen (e.g. --split val with the --val-fraction and --split-seed its training used)"
)


def trained_on_warning(found: list[TrainedOn], scored: int, advice: str = EVALUATE_ADVICE) -> str | None:
    """One line for a user when a score stands on images the model trained on, ending with
    ``advice``; None when none."""
    if not found:
        return None
    images = len(trained_images(found))
    steps = "; ".join(f"step {f.step} ({f.method}) {len(f.images)}" for f in found)
    return (
        f"{images} of the {scored} images scored have the names of images this model trained on ({steps}), so "
        f"these Dice are not held-out figures; {advice}"
    )
