"""Typed progress events yielded by every long job (training now; segmentation later).

The GUI wraps a job's generator in a napari ``thread_worker`` and turns events into widgets and
layers; the CLI drains it with a progress bar; tests drain it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import threading
from typing import Any, Callable

CancelFlag = threading.Event | Callable[[], bool] | None


def is_cancelled(cancel: CancelFlag) -> bool:
    """A job's cancel flag: a ``threading.Event`` that is set, or a callable that returns True."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


@dataclass(frozen=True)
class StepStarted:
    step: int
    method: str
    device: str
    total_iterations: int
    iterations_per_epoch: int
    num_images: int
    classes: tuple[str, ...]  # the classes this step learns


@dataclass(frozen=True)
class CropStats:
    """Where one training crop came from and what ATT made of it (eqs. 14-16)."""

    image_index: int
    top: int
    left: int
    size: int
    r: float
    t_o: float
    t_n: float


@dataclass(frozen=True)
class Progress:
    step: int
    epoch: int
    iteration: int  # 1-based, of total
    total: int
    loss: float
    terms: dict[str, float]
    lr: float
    seconds: float  # since the step started
    crops: tuple[CropStats, ...] = field(default_factory=tuple)

    @property
    def fraction(self) -> float:
        return self.iteration / max(self.total, 1)

    @property
    def seconds_left(self) -> float:
        return self.seconds / max(self.iteration, 1) * (self.total - self.iteration)


@dataclass(frozen=True)
class MemoryReduced:
    """The device ran out of memory; the job goes on with a smaller batch (training) or fewer
    tiles at a time (segmentation). ``message`` says so in words for the user."""

    what: str  # "batch" or "tiles"
    before: int
    after: int
    message: str


@dataclass(frozen=True)
class IterationSkipped:
    """An iteration whose loss or gradient was not finite: the optimiser did not step, the
    weights are as before it. ``message`` says so in words for the user."""

    step: int
    iteration: int
    reason: str  # "loss" or "gradient"
    value: float
    skipped: int  # iterations skipped so far in this step
    message: str


@dataclass(frozen=True)
class Cancelled:
    step: int
    iteration: int
    message: str = "training was cancelled; nothing was saved and the prior model is unchanged"


@dataclass(frozen=True)
class Saved:
    path: str


@dataclass(frozen=True)
class StepFinished:
    step: int
    model: Any  # CiNuSegModel; Any keeps the dataclass free of a runtime import
    seconds: float
    path: str | None = None


Event = StepStarted | Progress | MemoryReduced | IterationSkipped | Cancelled | Saved | StepFinished

__all__ = ["CropStats", "Cancelled", "Event", "ExportProgress", "IterationSkipped", "MemoryReduced", "Progress", "Saved", "StepFinished", "StepStarted"]


@dataclass(frozen=True)
class ExportProgress:
    """Tiles of a masks file written so far (``export.export_masks_job``)."""

    done: int
    total: int
