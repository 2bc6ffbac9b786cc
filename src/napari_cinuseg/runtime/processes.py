"""A step of a job run in a process of its own, for work that would hold the GIL.

Measuring every nucleus of a map (scikit-image's ``regionprops``: thousands of short numpy calls
per block) in a thread of the viewer's process delayed napari's event loop by 0.1-0.4 s at a time,
9-16 times in one 8192² export on two cores, whatever the thread's priority: the viewer's thread
waits for the GIL. In a separate process it competes for a core only.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

#: numpy arguments of at least this many bytes go through shared memory, not the pipe: pickling
#: one copies it in a single call that holds the GIL (0.1 s for a 64-megapixel map)
SHARED_MIN_BYTES = 1 << 20
_TRACK_ARG = sys.version_info >= (3, 13)


@dataclass(frozen=True)
class _Shared:
    """A numpy argument placed in shared memory: what the child needs to map it."""

    name: str
    shape: tuple
    dtype: str


@dataclass(frozen=True)
class _Saved:
    """A numpy argument written to a temporary .npy file (where shared memory has no room)."""

    path: str


def shared_memory_room(nbytes: int) -> bool:
    """Whether shared memory can hold ``nbytes`` more. On Linux it is /dev/shm, a tmpfs that a
    container may cap at 64 MB; writing past its end kills the process (SIGBUS), so it is
    checked first. Elsewhere the system's shared memory is backed by the page file."""
    shm = "/dev/shm"
    if not (sys.platform.startswith("linux") and os.path.isdir(shm)):
        return True
    st = os.statvfs(shm)
    return st.f_bavail * st.f_frsize > 2 * nbytes


def _share(value, blocks: list, files: list):
    if not (isinstance(value, np.ndarray) and value.nbytes >= SHARED_MIN_BYTES and value.dtype != object):
        return value
    if not shared_memory_room(value.nbytes):
        fd, path = tempfile.mkstemp(prefix="cinuseg-", suffix=".npy")
        files.append(path)
        with os.fdopen(fd, "wb") as f:
            np.save(f, value)
        return _Saved(path)
    block = shared_memory.SharedMemory(create=True, size=value.nbytes)
    blocks.append(block)
    np.copyto(np.ndarray(value.shape, value.dtype, buffer=block.buf), value)  # numpy copies without the GIL
    return _Shared(block.name, value.shape, value.dtype.str)


def _unshare(value, opened: list):
    if isinstance(value, _Saved):
        return np.load(value.path, mmap_mode="r")
    if not isinstance(value, _Shared):
        return value
    # the parent owns the block and unlinks it: not tracked here as well
    if _TRACK_ARG:
        block = shared_memory.SharedMemory(name=value.name, track=False)
    else:
        block = shared_memory.SharedMemory(name=value.name)
        resource_tracker.unregister(block._name, "shared_memory")
    opened.append(block)
    return np.ndarray(value.shape, np.dtype(value.dtype), buffer=block.buf)


def _child_main() -> int:
    """``python -m napari_cinuseg.runtime.processes``: read (fn, args, kwargs) from stdin, write
    (ok, result or exception) to stdout; anything printed goes to stderr."""
    result_out = sys.stdout.buffer
    sys.stdout = sys.stderr
    fn, args, kwargs = pickle.load(sys.stdin.buffer)
    opened: list = []
    try:
        args = tuple(_unshare(a, opened) for a in args)
        kwargs = {k: _unshare(v, opened) for k, v in kwargs.items()}
        reply = (True, fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - sent back and re-raised in the caller
        reply = (False, exc)
    try:
        payload = pickle.dumps(reply)
    except Exception:  # an exception or result that does not pickle: its text
        payload = pickle.dumps((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))
    result_out.write(payload)
    result_out.flush()
    return 0


def run_in_process(fn: Callable, *args, poll: float = 0.1, **kwargs) -> Generator[None, None, Any]:
    """Run ``fn(*args, **kwargs)`` in a new Python process, as a job: yields about every ``poll``
    seconds while it runs, and returns its result or raises its exception. ``fn`` must be a
    module-level function; it, its arguments and its result must pickle (large numpy arguments go
    through shared memory, or a temporary file where it has no room). Keep the result small: it is
    unpickled here in one call that holds the GIL. The process is
    ``python -m napari_cinuseg.runtime.processes``, not a multiprocessing child, so a script that
    imported this package is never run again. Closing the generator (a
    cancelled job) ends the process."""
    blocks: list = []
    files: list = []
    try:
        args = tuple(_share(a, blocks, files) for a in args)
        kwargs = {k: _share(v, blocks, files) for k, v in kwargs.items()}
        return (yield from _run(pickle.dumps((fn, args, kwargs)), poll))
    finally:
        for block in blocks:
            block.close()
            block.unlink()
        for path in files:
            with contextlib.suppress(OSError):
                os.remove(path)


def _run(payload: bytes, poll: float):
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_cinuseg.runtime.processes"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # sent whole before reading: communicate() drops the rest of an input when it times out
        stdin, proc.stdin = proc.stdin, None  # (communicate() leaves stdin alone)
        try:
            stdin.write(payload)
        except BrokenPipeError:  # the process ended at once; its stderr says why
            pass
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass
        while True:
            try:
                out, err = proc.communicate(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if not out:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(
            f"the separate process ended without a result (exit code {proc.returncode}): " + " / ".join(tail)
        )
    ok, value = pickle.loads(out)
    if not ok:
        raise value
    return value


if __name__ == "__main__":  # the module as imported (its classes are the ones the parent pickled)
    from napari_cinuseg.runtime.processes import _child_main as main

    sys.exit(main())
