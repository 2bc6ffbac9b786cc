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


def test_the_dock_makes_the_panel_in_parts_and_shows_it_whole(make_napari_viewer, qtbot, tmp_path):
    """The dock's path: the panel is made a part per event-loop turn, hidden, as the dock's child;
    it is shown when every part is made, connected to the viewer, its remembered fields restored."""
    import numpy as np
    from qtpy.QtCore import QSettings
    from qtpy.QtWidgets import QFormLayout

    from napari_cinuseg.session.storage import Storage
    from napari_cinuseg.ui.opening import LOADING_SWITCH_INTERVAL, CiNuSegDock
    from napari_cinuseg.ui.widgets import PANEL_WIDTH

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    settings.setValue("iterations", 77)
    viewer = make_napari_viewer()
    switch_interval = sys.getswitchinterval()
    dock = CiNuSegDock(viewer, storage=Storage(tmp_path, tmp_path / "results"), settings=settings)
    viewer.window.add_dock_widget(dock)
    assert dock.width() == PANEL_WIDTH  # loading, at the panel's width already
    assert sys.getswitchinterval() <= LOADING_SWITCH_INTERVAL  # the viewer's thread gets the lock back sooner
    qtbot.waitUntil(lambda: dock._making is not None or dock.panel is not None, timeout=120_000)
    if dock.panel is None:  # caught while its parts are made: hidden, not yet connected
        making = dock._making
        assert making.parent() is dock and making.isHidden()
    qtbot.waitUntil(lambda: dock.panel is not None, timeout=10_000)
    panel = dock.panel
    assert panel.parent() is dock and not panel.isHidden() and dock._making is None
    assert sys.getswitchinterval() == switch_interval  # Python's own again once loaded
    assert panel.train_section.iterations.value() == 77  # restored, as a panel made at once is
    first = panel.train_section.details.form.itemAt(0, QFormLayout.ItemRole.SpanningRole)
    assert first.widget() is panel.train_section.advanced  # the method's settings first under Details
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="he", rgb=True)
    assert panel.class_section.image.currentText() == "he"  # connected to the viewer's layers
