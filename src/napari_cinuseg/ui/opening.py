"""What napari docks when a user opens CiNuSeg: a light widget that appears at once and says it is
loading, while a worker thread imports PyTorch and the engine (a few seconds the first time) and
reads the last model used; the panel (``panel.py``) then takes its place.

This module imports neither PyTorch nor the engine: napari imports it on the Plugins menu's
click, in the viewer's thread.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import glob
import importlib
import importlib.util
import os
import sys
import time

from napari.qt.threading import create_worker
from qtpy.QtCore import QSettings, QThreadPool, QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from .widgets import PANEL_WIDTH

#: the module of the panel, imported by the worker (it imports PyTorch and the engine)
PANEL_MODULE = "napari_cinuseg.ui.panel"
DEVICES_MODULE = "napari_cinuseg.runtime.devices"
METHODS_MODULE = "napari_cinuseg.methods"
#: native libraries loaded ahead of the panel's import, with Python's lock released: (package,
#: file patterns in its folder). PyTorch's C++ libraries (not libtorch_python, whose loading is
#: Python's), torchvision's operators and numcodecs' codecs (zarr's): their loading held the
#: viewer's thread for 200-300 ms at a time when Python's import loaded them (docs/performance.md)
NATIVE = (
    ("torch", ("lib/libc10.so", "lib/libtorch_cpu.so", "lib/libtorch.so")),
    ("torchvision", ("_C*.so",)),
    ("numcodecs", ("*.so",)),
)
_RTLD_NOW, _RTLD_GLOBAL = 0x2, 0x100
#: Python's switch interval while the engine loads (its default is 5 ms): every return of the
#: viewer's thread from Qt waits for Python's lock, which the loading worker then holds for up to
#: the interval; at 1 ms the worst gap while loading fell from 46-55 ms to 35-48 (docs/performance.md)
LOADING_SWITCH_INTERVAL = 0.001


def preload_native_libraries() -> int:
    """Load :data:`NATIVE`'s libraries through the C library's ``dlopen``, which ctypes calls with
    Python's lock released, so that the viewer's thread runs meanwhile; the imports that follow
    find them loaded. Linux only (elsewhere, and on any failure, nothing is done: the imports load
    them as usual). Returns how many were loaded."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    except (OSError, AttributeError):
        return 0
    loaded = 0
    for package, patterns in NATIVE:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            continue
        folder = os.path.dirname(spec.origin)
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(folder, pattern))):
                mode = _RTLD_NOW | (_RTLD_GLOBAL if package == "torch" else 0)
                loaded += bool(dlopen(path.encode(), mode))
    return loaded


_loading = {"docks": 0, "switch_interval": None}


@atexit.register
def _let_loading_end() -> None:
    """At exit, wait for a dock still loading (a few seconds at most): its worker, stopped in the
    middle of PyTorch's import while Qt goes away, would end the process with an abort."""
    if _loading["docks"]:
        QThreadPool.globalInstance().waitForDone(60_000)


def _load(settings_file: str | None):
    """In the worker: the panel's module (PyTorch, the engine) and the last model the panel used,
    if it still opens; returns (panel module, model or None, seconds)."""
    t0 = time.perf_counter()
    preload_native_libraries()
    panel = importlib.import_module(PANEL_MODULE)
    settings = QSettings(settings_file, QSettings.Format.IniFormat) if settings_file else panel.user_settings()
    model = panel.last_model(settings)
    # the first look for GPUs (the CUDA driver, slow once) and the methods' registry (every
    # method's module, for the panel's advanced fields) here, not in the viewer's thread
    importlib.import_module(DEVICES_MODULE).device_choices()
    importlib.import_module(METHODS_MODULE).available()
    return panel, model, time.perf_counter() - t0


class CiNuSegDock(QWidget):
    """The dock napari shows: "Loading…" until the panel is ready, then the panel
    (:attr:`panel`, a :class:`~napari_cinuseg.ui.panel.CiNuSegWidget`). ``storage`` and
    ``settings`` go to the panel as they are."""

    def __init__(self, napari_viewer, storage=None, settings: QSettings | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.panel = None
        self.load_seconds: float | None = None
        self._closed = False  # closed while loading: the loaded panel is not made
        self._making = None  # the panel while its parts are made
        self._storage, self._settings = storage, settings
        # the panel's width from the start: the panel, when it comes, does not widen the dock
        # (which would resize napari's canvas and lay out the whole window again in that turn)
        self.setFixedWidth(PANEL_WIDTH)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.loading = QLabel("Loading PyTorch and the CiNuSeg engine… (a few seconds, the first time)")
        self.loading.setWordWrap(True)
        self._busy = QProgressBar()
        self._busy.setRange(0, 0)  # busy, with no count
        self._layout.addWidget(self.loading)
        self._layout.addWidget(self._busy)
        self._layout.addStretch(1)
        settings_file = settings.fileName() if settings is not None else None
        # No garbage collection while the engine loads: its imports make hundreds of thousands of
        # objects, and each full collection they set off scans the whole napari heap with
        # Python's lock held (100-300 ms at a time, measured); the loaded heap is then frozen
        # out of the collector's reach (gc.freeze), as a job's is (workers.freeze_heap).
        gc.disable()
        if _loading["switch_interval"] is None:
            _loading["switch_interval"] = sys.getswitchinterval()
            sys.setswitchinterval(min(LOADING_SWITCH_INTERVAL, _loading["switch_interval"]))
        _loading["docks"] += 1
        self.worker = create_worker(_load, settings_file)
        self.worker.finished.connect(self._loaded)
        self.worker.returned.connect(self._show_panel)
        self.worker.errored.connect(self._failed)
        self.worker.start()

    def _loaded(self) -> None:
        _loading["docks"] = max(0, _loading["docks"] - 1)
        if not _loading["docks"] and _loading["switch_interval"] is not None:
            sys.setswitchinterval(_loading["switch_interval"])
            _loading["switch_interval"] = None

    def _collect_again(self) -> None:
        gc.freeze()
        gc.enable()

    def _show_panel(self, loaded) -> None:
        self._collect_again()
        if self._closed:
            return
        panel_module, model, seconds = loaded
        self.load_seconds = seconds
        # made in parts, one per turn of the viewer's event loop (a zero-interval timer's turn, so
        # that the loop's other events and timers run between them), each part styled in its own
        # turn; hidden, as the dock's child from the start, so napari's stylesheet styles each
        # widget once, and shown whole when the last part is made
        panel = panel_module.CiNuSegWidget(
            self.viewer, storage=self._storage, settings=self._settings, model=model, parent=self, in_parts=True
        )
        panel.hide()
        self._making = panel
        self._part_timer = QTimer(self)
        self._part_timer.setInterval(0)
        self._part_timer.timeout.connect(self._make_part)
        self._part_timer.start()

    def _make_part(self) -> None:
        panel = self._making
        try:
            next(panel.parts)
        except StopIteration:
            self._part_timer.stop()
            self._place(panel)
            return
        except Exception as exc:
            self._part_timer.stop()
            self._making = None
            panel.deleteLater()
            self._busy.setRange(0, 1)
            self.loading.setText(f"The CiNuSeg panel could not be made: {exc}")
            raise  # and napari reports it, with its traceback
        # the part's new widgets styled in this turn, not by the requests Qt posts for a later
        # one, perhaps the next part's (a widget already styled returns at once)
        for widget in panel.findChildren(QWidget):
            widget.ensurePolished()

    def _place(self, panel) -> None:
        for w in (self.loading, self._busy):
            self._layout.removeWidget(w)
            w.deleteLater()
        self._layout.insertWidget(0, panel, 1)
        panel.show()
        self._making = None
        self.panel = panel

    def _failed(self, exc) -> None:
        self._collect_again()
        self._busy.setRange(0, 1)
        self.loading.setText(f"CiNuSeg could not load: {exc}. Check the installation of PyTorch (pip install torch).")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._closed = True
        if self._making is not None:
            self._part_timer.stop()
        for panel in (self.panel, self._making):
            if panel is not None:
                panel.close()
        super().closeEvent(event)
