"""The ``cinuseg`` command: ``entry.py`` (how it runs), ``parser.py`` (its options),
``commands.py`` and ``segmenting.py`` (what each one runs), ``console.py`` (progress bars and
messages), ``jobs.py``, ``options.py`` and ``signals.py``."""

from .entry import main

__all__ = ["main"]
