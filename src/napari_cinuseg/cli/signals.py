"""How the command line takes signals: SIGTERM (what ``timeout``, systemd and SLURM send) as Ctrl-C
is taken, and both held while PyTorch loads, whose C++ import a signal would abort."""

from __future__ import annotations

import contextlib
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, systemd and SLURM send), raised where the program is, as Ctrl-C
    is: every clean-up a Ctrl-C runs (the claim, scratch folders, temporary files, a table
    without its masks) runs for it too."""


def _terminate(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM raises :class:`Terminated` for the block (in the main thread; elsewhere, as in
    a test's thread, the handler cannot be set and is left as it is)."""
    try:
        before = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM held for the block and raised after it: PyTorch's import, interrupted
    inside its C++ (pybind11) code, aborts the process ("terminate called after throwing …")
    instead of raising, so a signal while it loads waits until it has loaded (a second or two)."""
    got: list[int] = []
    try:
        before = {
            s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
        }
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if got:
        raise Terminated if got[0] == signal.SIGTERM else KeyboardInterrupt
