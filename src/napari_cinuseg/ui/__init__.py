"""The napari panel: the only part of the package that imports Qt or napari.

- ``panel.py``: the panel, a composition of the four sections, and what each button starts;
- ``sections.py``: the model, new-class and segment sections; ``train_section.py``: the training
  section with the review of a step's result; ``widgets.py``: the small Qt pieces they share;
- ``annotating.py``, ``segmenting.py``, ``clicking.py``: the panel's annotation, segmentation and
  click-a-nucleus parts (mixins);
- ``layers.py``: what the panel shows as napari layers;
- ``workers.py``: how a job runs in a napari worker, and how its failure is said;
- ``plot.py``: the live loss plot; ``memory.py``: the fields remembered between sessions.

What the panel decides lives in the headless session (:mod:`napari_cinuseg.session`), shared
with the command line.
"""

import sys


def keep_triton_out() -> None:
    """Make ``import triton`` fail in this process unless it is already imported.

    The panel is opened after napari's canvas has loaded OpenGL, and with Mesa that OpenGL
    carries its own LLVM. Triton's LLVM, which PyTorch's compiler imports on first use of
    ``torch._dynamo`` (torchvision imports it), then crashes the process. The panel never
    compiles, so PyTorch runs without Triton here (``torch.utils._triton.has_triton_package()``
    is then False)."""
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError


# Done on importing the panel's package, before any of its modules imports PyTorch (see above).
keep_triton_out()
