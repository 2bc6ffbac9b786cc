"""Typed progress events yielded by every long job: training, segmentation, export, benchmark.

The GUI wraps a job's generator in a napari ``thread_worker`` and turns events into widgets and
layers; the CLI drains it with a progress bar; tests drain it directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

CancelFlag = threading.Event | Callable[[], bool] | None


def drain(job: Generator, on_event: Callable[[Any], None] | None = None):
    """Run a job (a generator of events) to its end and return its result; ``on_event`` sees
    each event. The one loop that runs a job outside a napari worker: the command line, the
    writer, scripts and tests drain jobs with it."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def relay(job: Generator, convert: Callable[[Any], Any]) -> Generator:
    """Yield ``convert(event)`` for each event of ``job`` and return its result: a job that
    reports another's progress in its own events. Closing this closes ``job`` (a cancel or
    Ctrl-C reaches its clean-up at once, not when it is collected)."""
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            yield convert(event)
    finally:
        job.close()


def tap(job: Generator, after: Callable[[Any], Any]) -> Generator:
    """``job``'s events, each followed by the events ``after(event)`` yields (a generator
    function, or one returning None), and ``job``'s result: a job that watches another between
    its events (the live preview, a benchmark's training curve). Closing this closes ``job``."""
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            yield event
            extra = after(event)
            if extra is not None:
                yield from extra
    finally:
        job.close()


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
    # the model being trained (a CiNuSegModel; Any keeps this module free of PyTorch): read it
    # between two events only, as the live preview does, never while the job runs
    model: Any = field(default=None, repr=False, compare=False)


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

__all__ = [
    "BenchmarkStarted",
    "CancelFlag",
    "Cancelled",
    "CropStats",
    "CurvePoint",
    "Event",
    "ExportProgress",
    "IterationSkipped",
    "MemoryReduced",
    "Preview",
    "PriorUnconfident",
    "Progress",
    "Saved",
    "SegmentFinished",
    "SegmentStarted",
    "StepEvaluated",
    "StepFinished",
    "StepPlanned",
    "StepStarted",
    "TileProgress",
    "drain",
    "is_cancelled",
    "relay",
    "tap",
]


@dataclass(frozen=True)
class ExportProgress:
    """Tiles of a masks file written so far (``export.export_masks_job``)."""

    done: int
    total: int


@dataclass(frozen=True)
class Preview:
    """The running step's prediction of the painted regions, between two iterations: one class
    map per training pair (``maps[i]`` covers pair i's image from (``offsets[i]``) in it)."""

    iteration: int
    total: int
    maps: tuple[Any, ...]  # numpy uint8 class maps; Any keeps the module free of numpy
    offsets: tuple[tuple[int, int], ...]


# Segmentation's events (inference/segmentation.py).


@dataclass(frozen=True)
class SegmentStarted:
    height: int
    width: int
    tiles: int
    device: str


@dataclass(frozen=True)
class TileProgress:
    done: int
    total: int
    skipped: int
    seconds: float

    @property
    def fraction(self) -> float:
        return self.done / max(self.total, 1)


@dataclass(frozen=True)
class SegmentFinished:
    result: object  # np.ndarray, or the path of the zarr array on disk
    seconds: float
    tiles: int
    skipped: int


# The benchmark's own events (benchmark/run.py), besides the training events of each step it runs.


@dataclass(frozen=True)
class BenchmarkStarted:
    protocols: tuple[str, ...]
    methods: tuple[str, ...]
    train_images: int
    test_images: int
    device: str


@dataclass(frozen=True)
class StepPlanned:
    """A step model is about to be trained (``cached=False``) or was found on disk."""

    protocol: str
    method: str
    step: int
    classes: tuple[str, ...]
    cached: bool


@dataclass(frozen=True)
class StepEvaluated:
    protocol: str
    method: str
    step: int
    dice: dict[str, float]
    cached: bool


@dataclass(frozen=True)
class CurvePoint:
    """A base or offline model scored on the test images while it trains (the benchmark's
    ``curve_every``): Dice per class and their mean after ``iteration`` of ``total``."""

    protocol: str
    method: str
    iteration: int
    total: int
    dice: dict[str, float]
    mean: float


@dataclass(frozen=True)
class PriorUnconfident:
    """A step starts from a prior that scores few of an old class's test pixels above τ: every
    τ-based method (eq. 1's pseudo-labels) then sees little of that class, whatever it does."""

    protocol: str
    method: str
    step: int
    tau: float
    shares: dict[str, float]  # old class -> share of its test pixels above τ, those below the floor
