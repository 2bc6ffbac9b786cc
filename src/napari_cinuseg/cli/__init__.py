"""The ``cinuseg`` command: ``parser.py`` (its options), ``commands.py`` (what each one runs),
``console.py`` (progress bars and messages)."""

from .parser import main

__all__ = ["main"]
