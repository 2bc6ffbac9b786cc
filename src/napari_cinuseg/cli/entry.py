"""The ``cinuseg`` command as it runs: its arguments parsed (the parser is ``parser.py``), the
command called, an error said in one line (exit 2), a cancel (Ctrl-C or SIGTERM) said as one
(exit 130), a closed output pipe left quietly (exit 141), and warnings printed as notices."""

from __future__ import annotations

import importlib
import io
import os
import sys
import warnings

from ..io.images import ImageWarning
from .console import CONSOLE
from .parser import build_parser
from .signals import Terminated, signals_deferred, sigterm_as_ctrl_c


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    """Conversions of input images (and other warnings) as one line, not a source listing; what
    may make a result wrong (an ImageWarning) is a warning, printed even with --quiet."""
    if issubclass(category, ImageWarning):
        CONSOLE.warn(str(message))
    else:
        CONSOLE.note(str(message))


CANCELLED = "cancelled: nothing was written by the interrupted work; files saved before it are kept"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with sigterm_as_ctrl_c():
            # the parser loads the method registry (PyTorch) for `step` and `benchmark`: inside
            # the try, so that Ctrl-C while it loads is a cancel, not a traceback
            with signals_deferred():
                args = build_parser(argv).parse_args(argv)
                importlib.import_module("torch")  # every command's engine needs it
            CONSOLE.quiet = bool(getattr(args, "quiet", False))
            with warnings.catch_warnings():
                warnings.showwarning = _show_notice
                return args.func(args)
    except BrokenPipeError:  # the reader of the output left (`cinuseg info … | head`): quiet, as CLIs are
        _stdout_to_devnull()
        return 141
    except (ValueError, OSError, FloatingPointError, RuntimeError, MemoryError) as exc:  # ModelFileError too
        CONSOLE.error(_one_line(exc))
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C (or SIGTERM) before a job runs: loading PyTorch, a model, the data
        print(f"\n{CANCELLED}" + (" (terminated: SIGTERM)" if isinstance(exc, Terminated) else ""), file=sys.stderr)
        return 130


def _stdout_to_devnull() -> None:
    """Point standard output at /dev/null, so that flushing it at exit raises no second
    BrokenPipeError (Python's own advice for a closed pipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # no file descriptor (e.g. captured): nothing will be flushed to a closed pipe


def _one_line(exc: BaseException) -> str:
    """An error as one line; a file the system refused names the file and what to do."""
    if isinstance(exc, PermissionError):
        where = exc.filename or ""
        return (
            f"cannot write or read {where}: permission denied; choose a folder you may write to" if where else str(exc)
        )
    if (
        isinstance(exc, OSError)
        and exc.strerror
        and exc.filename
        and not isinstance(exc, (FileNotFoundError, FileExistsError))
    ):
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
