"""What the command line prints: progress, notes, messages and errors, all on standard error.

- On a terminal a progress bar redraws itself in place (tqdm), and every message is written
  through the bar (``tqdm.write``) so it never lands on top of it.
- Elsewhere (a log file, a pipe, CI) nothing is redrawn: a plain line every tenth of the way,
  so a log holds no carriage-return updates.
- ``quiet`` turns off progress, notes and messages; errors and warnings are always printed.
"""

from __future__ import annotations

import sys


class Console:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream
        self._bar = None

    @property
    def out(self):
        return self.stream or sys.stderr

    @property
    def tty(self) -> bool:
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text: str) -> None:
        if self._bar is not None and self._bar.live:
            from tqdm import tqdm  # noqa: PLC0415 - tqdm loads only for a bar on a terminal (+20 ms on `cinuseg --help`)

            tqdm.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def say(self, text: str) -> None:
        """An informational message ("saved …"); not with --quiet."""
        if not self.quiet:
            self._write(text)

    def note(self, text: str) -> None:
        if not self.quiet:
            self._write(f"cinuseg: note: {text}")

    def warn(self, text: str) -> None:
        self._write(f"cinuseg: warning: {text}")

    def error(self, text: str) -> None:
        self._write(f"cinuseg: error: {text}")

    def bar(self, total: int, unit: str = "it", desc: str = "") -> Bar:
        self._bar = Bar(self, total, unit, desc)
        return self._bar


class Bar:
    """A progress bar: tqdm on a terminal, a line per tenth elsewhere, nothing with --quiet."""

    def __init__(self, console: Console, total: int, unit: str, desc: str):
        self.console, self.total, self.unit, self.desc = console, max(int(total), 0), unit, desc
        self.n = 0
        self.postfix = ""
        self._tqdm = None
        self._printed = -1  # the last tenth printed, without a terminal
        if not console.quiet and console.tty:
            from tqdm import tqdm  # noqa: PLC0415 - tqdm loads only for a bar on a terminal (+20 ms on `cinuseg --help`)

            self._tqdm = tqdm(total=self.total, unit=unit, desc=desc or None, file=console.out, dynamic_ncols=True)

    @property
    def live(self) -> bool:
        return self._tqdm is not None

    def reset(self, total: int) -> None:
        self.total, self.n, self._printed = int(total), 0, -1
        if self._tqdm is not None:
            self._tqdm.reset(total=self.total)

    def update_to(self, n: int, **postfix) -> None:
        self.n = int(n)
        if postfix:
            self.postfix = " ".join(f"{k}={v}" for k, v in postfix.items())
        if self._tqdm is not None:
            self._tqdm.update(self.n - self._tqdm.n)
            if postfix:
                self._tqdm.set_postfix(**postfix)
        elif not self.console.quiet and self.total:
            tenth = min(10, self.n * 10 // self.total)
            if tenth > self._printed:
                self._printed = tenth
                self._line()

    def _line(self) -> None:
        head = f"{self.desc}: " if self.desc else ""
        tail = f" {self.postfix}" if self.postfix else ""
        print(
            f"{head}{self.n}/{self.total} {self.unit} ({self.n * 100 // max(self.total, 1)}%){tail}",
            file=self.console.out,
            flush=True,
        )

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif not self.console.quiet and self.total and self._printed < 10 and self.n:
            self._printed = 10
            self._line()
        if self.console._bar is self:
            self.console._bar = None


# The command line's console; ``cinuseg --quiet`` sets its ``quiet``.
CONSOLE = Console()
