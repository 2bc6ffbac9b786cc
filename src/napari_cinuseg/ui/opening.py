"""What napari docks when a user opens CiNuSeg: a light widget that appears at once and says it is
loading, while a worker thread imports PyTorch and the engine (a few seconds the first time) and
reads the last model used; the panel (``panel.py``) then takes its place.

This module imports neither PyTorch nor the engine: napari imports it on the Plugins menu's
click, in the viewer's thread.
"""

from __future__ import annotations

import importlib
import time

from napari.qt.threading import create_worker
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

#: the module of the panel, imported by the worker (it imports PyTorch and the engine)
PANEL_MODULE = "napari_cinuseg.ui.panel"


def _load(settings_file: str | None):
    """In the worker: the panel's module (PyTorch, the engine) and the last model the panel used,
    if it still opens; returns (panel module, model or None, seconds)."""
    t0 = time.perf_counter()
    panel = importlib.import_module(PANEL_MODULE)
    settings = QSettings(settings_file, QSettings.Format.IniFormat) if settings_file else panel.user_settings()
    model = panel.last_model(settings)
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
        self._storage, self._settings = storage, settings
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
        self.worker = create_worker(_load, settings_file)
        self.worker.returned.connect(self._show_panel)
        self.worker.errored.connect(self._failed)
        self.worker.start()

    def _show_panel(self, loaded) -> None:
        panel_module, model, seconds = loaded
        self.load_seconds = seconds
        self.panel = panel_module.CiNuSegWidget(
            self.viewer, storage=self._storage, settings=self._settings, model=model
        )
        for w in (self.loading, self._busy):
            self._layout.removeWidget(w)
            w.deleteLater()
        self._layout.insertWidget(0, self.panel, 1)

    def _failed(self, exc) -> None:
        self._busy.setRange(0, 1)
        self.loading.setText(f"CiNuSeg could not load: {exc}. Check the installation of PyTorch (pip install torch).")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if self.panel is not None:
            self.panel.close()
        super().closeEvent(event)
