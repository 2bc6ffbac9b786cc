"""Atomic file writes: write a temporary file beside the target, flush it to disk, rename.

A crash, a kill or a cancel at any moment leaves either the old file or the new one, never half
of one, and no temporary file survives a failure that Python sees. The temporary file is named
``.<name>.<pid>-<random>.tmp``: a later write of the same target removes those of writers that no
longer run (a killed save), and names, in an :class:`StaleFileNotice`, one it cannot tell about.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StaleFileNotice(UserWarning):
    """A temporary file left by an interrupted run was removed, or is named for the user to remove."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.<pid>-*.tmp`` beside ``path`` whose writing process is gone (a save that
    was killed); name in a :class:`StaleFileNotice` those of the older form without a process id.
    Returns the files removed."""
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-[^.]*\.tmp$")
    for tmp in siblings:
        m = pattern.match(tmp.name)
        if m is None:
            warnings.warn(
                f"{tmp} looks like the temporary file of an interrupted save of {path.name}; "
                "delete it if no other program is writing that file",
                StaleFileNotice,
                stacklevel=3,
            )
            continue
        if pid_alive(int(m.group(1))):
            continue  # another run is saving right now
        try:
            size = tmp.stat().st_size
            tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
        warnings.warn(
            f"removed {tmp} ({size / 1e6:.1f} MB), left by a save of {path.name} that was killed",
            StaleFileNotice,
            stacklevel=3,
        )
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yields a temporary path to write; on success it becomes ``path`` in one step.

    ``replace=False``: an existing ``path`` is never replaced, even one that another process
    created while this one wrote (the last step is a hard link, which fails if the name exists,
    where the file system has them): FileExistsError, and the temporary file is removed.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions of an ordinary new file
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _place_new(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _place_new(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` only if ``path`` does not exist (FileExistsError otherwise)."""
    try:
        os.link(tmp, path)  # atomic: fails if the name exists
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists: written by another run meanwhile", str(path)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # no hard links here: the check and the rename are two steps
            raise FileExistsError(errno.EEXIST, "exists: written by another run meanwhile", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def describe_write_failure(exc: BaseException, path: str | os.PathLike) -> str:
    """Why writing ``path`` failed, in words, with what to do: a full disk and a folder that
    cannot be written are recognised also where PyTorch's zip writer hides them ("enforce fail
    at inline_container.cc")."""
    folder = Path(path).parent
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in str(exc):
        return f"the disk is full (no space left on device); free space in {folder} or choose another place"
    if isinstance(exc, PermissionError) or isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS):
        return f"{folder} cannot be written (permission denied or read-only); choose a folder you may write to"
    if "inline_container" in str(exc) or "PytorchStreamWriter" in str(exc):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if free is not None and free < 64 * 2**20:
            return f"the disk is full ({free / 2**20:.1f} MB free in {folder}); free space or choose another place"
        return f"PyTorch's writer failed ({str(exc).splitlines()[0]}); is the disk full or the folder unwritable?"
    cause = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return f"{cause}; choose another place"


def atomic_json(path: str | os.PathLike, obj, **dumps) -> None:
    """``obj`` as JSON at ``path`` (indented, keys sorted, unless ``dumps`` says otherwise: it
    goes to ``json.dumps``), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, **{"indent": 1, "sort_keys": True, **dumps}))
