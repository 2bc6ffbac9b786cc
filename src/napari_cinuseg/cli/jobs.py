"""How the command line runs a job and keeps what it makes: under torchrun only rank 0
reports (``MAIN_RANK``); a progress bar per training step and Ctrl-C as a clean cancel
(:func:`drain`); a new model's file claimed before any work, its disk's room checked, and the
trained model saved or, where that fails, kept elsewhere and said (:func:`save_or_rescue`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..io.claims import claim
from .console import CONSOLE

MAIN_RANK = int(os.environ.get("RANK", "0")) == 0


def drain(job, show=None) -> object:
    """Run a job (runtime.events.drain) with a progress bar per training step; Ctrl-C cancels it
    cleanly. ``show`` sees the events this does not report itself."""
    from ..runtime.events import (  # noqa: PLC0415 - runtime.events' event classes take +10 ms to define, on `cinuseg --help` too
        Cancelled,
        IterationSkipped,
        MemoryReduced,
        Progress,
        Saved,
        StepFinished,
        StepStarted,
        drain,
    )

    bar = None

    def report(ev) -> None:
        nonlocal bar
        if not MAIN_RANK:
            return  # under torchrun only rank 0 reports
        if isinstance(ev, StepStarted):
            CONSOLE.say(f"step {ev.step} ({ev.method}) on {ev.device}: {', '.join(ev.classes)}, {ev.num_images} images")
            bar = CONSOLE.bar(ev.total_iterations, "it", f"step {ev.step}")
        elif isinstance(ev, Progress) and bar is not None:
            bar.update_to(ev.iteration, loss=f"{ev.loss:.3f}", **{k: f"{v:.3f}" for k, v in ev.terms.items()})
        elif isinstance(ev, Cancelled):
            CONSOLE.say(ev.message)
        elif isinstance(ev, (MemoryReduced, IterationSkipped)):
            CONSOLE.note(ev.message)
        elif isinstance(ev, Saved):
            CONSOLE.say(f"saved {ev.path}")
        elif isinstance(ev, StepFinished) and bar is not None:
            bar.close()
        elif show is not None:
            show(ev)

    try:
        return drain(job, report)
    except KeyboardInterrupt:
        job.close()  # runs the engine's clean-up; nothing has been saved
        print("\ncancelled: nothing was saved and the prior model is unchanged", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if bar is not None:
            bar.close()


#: Room a new model needs where its size cannot be known before training (a base model).
BASE_MODEL_ROOM = 8 * 2**20


def check_room(out: Path, need: int) -> None:
    """Refuse before training when the disk of ``out`` has less than ``need`` bytes free."""
    try:
        free = shutil.disk_usage(out.parent).free
    except OSError:
        return
    if free < need:
        raise ValueError(
            f"{out} cannot be written: only {free / 1e6:.1f} MB are free on its disk and the model needs about "
            f"{need / 1e6:.1f} MB; free space or choose another --out (nothing was trained)"
        )


def model_bytes(model) -> int:
    """Bytes of ``model``'s weights as a new model file holds them (fp32)."""
    return sum(
        v.numel() * (4 if v.is_floating_point() else v.element_size()) for v in model.network.state_dict().values()
    )


def rescue_places(out: Path) -> list[Path]:
    """Where a trained model goes when ``out`` cannot be written: the temporary folder, then
    ~/.napari-cinuseg/rescued (another disk, often)."""
    name = f"{out.name.removesuffix('.cinuseg.pt')}-{os.getpid()}.cinuseg.pt"
    return [Path(tempfile.gettempdir()) / name, Path.home() / ".napari-cinuseg" / "rescued" / name]


def save_or_rescue(model, out: Path) -> Path:
    """Save the trained ``model`` at ``out``; if that fails, keep it elsewhere and say where,
    in one error line (the training is never lost to a full disk or a folder made read-only)."""
    from ..model.file import ModelFileError, save_model  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    try:
        path = save_model(model, out)
    except ModelFileError as exc:
        tried = []
        for place in rescue_places(out):
            tried.append(str(place.parent))
            try:
                place.parent.mkdir(parents=True, exist_ok=True)
                rescued = save_model(model, place)
            except (ModelFileError, OSError):
                continue
            raise ModelFileError(
                f"{exc}; the trained model was saved to {rescued} instead: move it where it belongs"
            ) from None
        raise ModelFileError(
            f"{exc}; it could not be saved in {' or '.join(tried)} either, so the trained model is lost"
        ) from None
    CONSOLE.say(f"saved {path}")
    return path


def claim_model(out: Path):
    """The claim on a new model's file; under torchrun rank 0 holds it (it alone saves)."""
    return claim(out) if MAIN_RANK else contextlib.nullcontext()
