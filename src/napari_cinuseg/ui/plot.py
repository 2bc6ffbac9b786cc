"""The loss terms of the running step, plotted live (matplotlib in Qt)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget


class LossPlot(QWidget):
    """The loss terms of the running step, live."""

    def __init__(self, parent=None):
        super().__init__(parent)
        # fixed margins, not tight_layout: a layout pass on every redraw costs the event loop
        self.figure = Figure(figsize=(3.2, 1.8), dpi=80)
        self.figure.subplots_adjust(left=0.14, right=0.98, top=0.97, bottom=0.2)
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
        self.lines: dict = {}  # one line per loss term, updated in place
        self.ax.clear()
        self.ax.set_xlabel("iteration", fontsize=8)
        self.ax.tick_params(labelsize=7)
        self.canvas.draw_idle()

    REDRAW_MS = 500  # redraw at most twice a second: a matplotlib redraw costs the event loop tens of ms

    def add(self, ev) -> None:
        self.iterations.append(ev.iteration)
        for k, v in {"loss": ev.loss, **ev.terms}.items():
            self.history.setdefault(k, []).append(v)
        if ev.iteration >= ev.total:
            self._redraw()  # the last point, at once
        elif not self._timer.isActive():
            self._timer.start(self.REDRAW_MS)

    def _redraw(self) -> None:
        """Update the lines in place (a new term adds a line and rebuilds the legend, at a fixed
        place: matplotlib's "best" place searches the data on every draw)."""
        self._timer.stop()
        new_term = False
        for k, ys in self.history.items():
            xs = self.iterations[-len(ys) :]
            if k in self.lines:
                self.lines[k].set_data(xs, ys)
            else:
                (self.lines[k],) = self.ax.plot(xs, ys, label=k, lw=1.5 if k == "loss" else 0.8)
                new_term = True
        if new_term:
            self.ax.legend(fontsize=6, ncol=3, loc="upper right")
        self.ax.relim()
        self.ax.autoscale_view()
        self.canvas.draw_idle()
