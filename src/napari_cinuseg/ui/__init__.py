"""The napari panel: the only part of the package that imports Qt or napari.

- ``panel.py``: the panel, a composition of the four sections, and what each button starts;
- ``sections.py``: the sections' widgets (model, new class, train, segment and export);
- ``workers.py``: how a job runs in a napari worker, and how its failure is said;
- ``plot.py``: the live loss plot.

What the panel decides lives in the headless session (``napari_cinuseg.session``), shared with
the command line.

Importing this package keeps Triton out of the napari process (``keep_triton_out``): the panel
is opened after napari's canvas has loaded OpenGL, and with Mesa that OpenGL carries its own
LLVM. Triton's LLVM, which PyTorch's compiler imports on first use of ``torch._dynamo``
(torchvision imports it), then crashes the process. The panel never compiles, so PyTorch runs
without Triton here: ``torch.utils._triton.has_triton_package()`` is then False.
"""

import sys


def keep_triton_out() -> None:
    """Make ``import triton`` fail in this process unless it is already imported."""
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError


keep_triton_out()
