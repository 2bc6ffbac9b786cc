"""How the panel runs a job: the engine's generator in a napari worker, each failure said once."""

from __future__ import annotations

import gc
import threading

from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QWidget

from ..runtime import devices


class JobFailed(Exception):
    """A panel job's failure, said once; never a RuntimeError, which superqt's worker drops
    without any signal (and CUDA's out-of-memory is one)."""


def describe_failure(exc: BaseException) -> str:
    """One sentence for a failed job, with advice where there is one."""
    if devices.is_out_of_memory(exc):
        return "the device ran out of memory; choose a smaller crop or tile size, or the CPU"
    text = " ".join(str(exc).split())
    return text if isinstance(exc, (ValueError, OSError, MemoryError)) and text else f"{type(exc).__name__}: {text}"


_frozen = {"jobs": 0}


def freeze_heap(start: bool) -> None:
    """While a job runs, keep the garbage collector off the viewer's heap: a full collection of a
    napari process scans every tracked object (660k in the benchmark) and held the GIL for 0.28 s
    during an export. ``gc.freeze`` moves the objects alive now out of the collector's reach; the
    last job to end hands them back (``gc.unfreeze``), so nothing stays uncollected afterwards."""

    if start:
        _frozen["jobs"] += 1
        gc.freeze()
    else:
        _frozen["jobs"] = max(0, _frozen["jobs"] - 1)
        if _frozen["jobs"] == 0:
            gc.unfreeze()


def start_job(job_fn, *, on_event, on_returned, on_error, on_finished):
    """Start ``job_fn()`` (a generator) in a napari worker. Every exception becomes one
    :class:`JobFailed` (one ``errored`` signal), napari is told not to notify again
    (``_ignore_errors``), and ``finished`` always fires."""

    def guarded():
        try:
            return (yield from job_fn())
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear error
            raise JobFailed(describe_failure(exc)) from exc

    worker = create_worker(guarded, _ignore_errors=True)
    worker.yielded.connect(on_event)
    worker.returned.connect(on_returned)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finished)
    worker.finished.connect(lambda: freeze_heap(False))
    freeze_heap(True)
    worker.start()
    return worker


class JobHost(QWidget):
    """A widget that runs one job at a time: busy while it runs, one error for a failure, and
    the job cancelled when the widget is closed. Subclasses give ``_set_busy`` and ``_say``."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.worker = None
        self.cancel_event = threading.Event()

    def _start_job(self, job_fn, on_event, on_returned):
        self._set_busy(True)
        self.worker = start_job(
            job_fn,
            on_event=on_event,
            on_returned=on_returned,
            on_error=self._on_error,
            on_finished=lambda: self._set_busy(False),
        )
        return self.worker

    def _on_error(self, exc) -> None:
        self._say(f"Stopped: {exc}", error=True)
        self._set_busy(False)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Closing the panel (or the viewer) cancels a running job: a training stops between
        iterations and saves nothing, so the prior and the annotations stay as they were."""
        self.shutdown()
        super().closeEvent(event)

    def event(self, ev) -> bool:
        # napari closes a dock widget by taking the panel out of it (its parent becomes None),
        # without a close event: that too ends the running job.
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.shutdown(wait=False)
        return super().event(ev)

    def shutdown(self, wait: bool = True) -> None:
        """Cancel the running job (it stops between iterations, saving nothing)."""
        if getattr(self, "cancel_event", None) is not None:
            self.cancel_event.set()
        worker = getattr(self, "worker", None)
        if worker is not None and getattr(worker, "is_running", False):
            worker.quit()
            if wait:
                worker.await_workers(60_000)
