"""napari first, then the panel: the order a user opens it in, in a process of its own."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "gui_scripts" / "open_panel_like_a_user.py"


def test_panel_opens_in_a_running_napari_and_segments_the_sample():
    if not os.environ.get("DISPLAY"):
        if os.environ.get("CI"):
            pytest.fail("no DISPLAY: run the tests under xvfb-run")
        pytest.skip("no DISPLAY: run the tests under xvfb-run")
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}  # a real OpenGL (Mesa) context, as a user has
    run = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"napari ended with {run.returncode}:\n{output[-4000:]}"
    assert "panel opened" in run.stdout
    assert "segmented ['H&E sample (CMU-1, CC0) · classes']" in run.stdout, output[-4000:]


def test_the_dock_napari_opens_imports_neither_pytorch_nor_the_engine():
    """napari imports the widget's module in the viewer's thread: it must load nothing heavy."""
    code = (
        "import sys, napari_cinuseg.ui.opening\n"
        "heavy = [m for m in ('torch', 'torchvision', 'napari_cinuseg.session', 'napari_cinuseg.training') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
