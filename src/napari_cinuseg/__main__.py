"""``python -m napari_cinuseg``: the ``cinuseg`` command."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line itself loads (numpy): a cancel, not a traceback
    print("\ncancelled: nothing was written", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
