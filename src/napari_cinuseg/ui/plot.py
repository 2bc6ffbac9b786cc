"""The loss terms of the running step, plotted live (matplotlib in Qt)."""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget


class LossPlot(QWidget):
    """The loss terms of the running step, live."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=80, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.setMinimumHeight(150)
        self._timer = QTimer(self)  # one pending redraw at a time, dies with the widget
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._redraw)
        self.clear()

    def clear(self) -> None:
        self._timer.stop()
        self.history: dict[str, list[float]] = {}
        self.iterations: list[int] = []
        self.ax.clear()
        self.ax.set_xlabel("iteration", fontsize=8)
        self.canvas.draw_idle()

    REDRAW_MS = 500  # redraw at most twice a second: a matplotlib redraw costs tens of ms of the event loop

    def add(self, ev) -> None:
        self.iterations.append(ev.iteration)
        for k, v in {"loss": ev.loss, **ev.terms}.items():
            self.history.setdefault(k, []).append(v)
        if ev.iteration >= ev.total:
            self._redraw()  # the last point, at once
        elif not self._timer.isActive():
            self._timer.start(self.REDRAW_MS)

    def _redraw(self) -> None:
        self._timer.stop()
        self.ax.clear()
        for k, ys in self.history.items():
            self.ax.plot(self.iterations[-len(ys) :], ys, label=k, lw=1.5 if k == "loss" else 0.8)
        self.ax.legend(fontsize=6, ncol=3)
        self.ax.tick_params(labelsize=7)
        self.canvas.draw_idle()
