"""``python -m napari_cinuseg``: the ``cinuseg`` command."""

from .cli import main

raise SystemExit(main())
