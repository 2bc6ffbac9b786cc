"""How the panel runs a job: the engine's generator in a napari worker, each failure said once."""

from __future__ import annotations

from .. import devices


class JobFailed(Exception):
    """A panel job's failure, said once; never a RuntimeError, which superqt's worker drops
    without any signal (and CUDA's out-of-memory is one)."""


def describe_failure(exc: BaseException) -> str:
    """One sentence for a failed job, with advice where there is one."""
    if devices.is_out_of_memory(exc):
        return "the device ran out of memory; choose a smaller crop or tile size, or the CPU"
    text = " ".join(str(exc).split())
    return text if isinstance(exc, (ValueError, OSError, MemoryError)) and text else f"{type(exc).__name__}: {text}"


def start_job(job_fn, *, on_event, on_returned, on_error, on_finished):
    """Start ``job_fn()`` (a generator) in a napari worker. Every exception becomes one
    :class:`JobFailed` (one ``errored`` signal), napari is told not to notify again
    (``_ignore_errors``), and ``finished`` always fires."""
    from napari.qt.threading import create_worker

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
    worker.start()
    return worker
