"""A claim on an output file: at most one run writes a given output at a time.

A run takes the claim before it does any work (training, segmentation), by creating
``.<name>.lock`` beside the output with ``O_EXCL`` (one step: two runs cannot both succeed) and
writing its process id in it. Another run that wants the same output is refused at once, with
the process named. A claim left by a run that was killed (its process is gone) is taken over,
and said. Creating the lock also shows, before any work, that the folder can be written.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .atomic import StaleFileNotice, describe_write_failure, pid_alive


class OutputClaimed(ValueError):
    """Another running process is writing the same output."""


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in ``lock``, or None when it cannot be read (being written)."""
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None


@contextmanager
def claim(path: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Hold the claim on ``path`` for the block; refuse (:class:`OutputClaimed`) if a live
    process holds it; a folder that cannot be written is a ValueError naming it."""
    path = Path(path)
    lock = lock_path(path)
    me = f"{os.getpid()} {socket.gethostname()}"
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            here = holder is not None and holder[1] in ("", socket.gethostname())
            if attempt == 0 and holder is not None and here and not pid_alive(holder[0]):
                lock.unlink(missing_ok=True)  # its run was killed: take the claim over
                warnings.warn(
                    f"{path.name}: took over the claim of run {holder[0]}, which is no longer running",
                    StaleFileNotice,
                    stacklevel=3,
                )
                continue
            who = (
                f"process {holder[0]}" + (f" on {holder[1]}" if holder and not here else "")
                if holder
                else "another process"
            )
            raise OutputClaimed(
                f"{path} is being written by another cinuseg run ({who}); wait for it to finish or choose "
                f"another {option} (if no such run exists, delete {lock})"
            ) from None
        except OSError as exc:
            raise ValueError(f"cannot write {path}: {describe_write_failure(exc, path)}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    try:
        yield lock
    finally:
        if _holder(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)
