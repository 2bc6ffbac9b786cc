"""The loss terms of the running step, plotted live (matplotlib in Qt), in the colours of napari's
theme."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget


class LossPlot(QWidget):
    """The loss terms of the running step, live; :meth:`follow_theme` gives it napari's colours
    (matplotlib's white figure until then)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.colours = {"background": "#ffffff", "text": "#000000", "frame": "#cccccc"}
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
        self._start(clear_axes=False)  # the axes are new: clearing them again costs the viewer's thread

    def follow_theme(self, theme) -> None:
        """The figure in the colours of a napari theme (``napari.utils.theme.get_theme(name)``):
        its background behind the plot, its text for the axes, ticks and legend."""
        self.colours = {
            "background": theme.background.as_hex(),
            "text": theme.text.as_hex(),
            "frame": theme.primary.as_hex(),
        }
        self._paint()
        if self.lines:
            self._legend()
        self.canvas.draw_idle()

    def _paint(self) -> None:
        bg, text, frame = self.colours["background"], self.colours["text"], self.colours["frame"]
        self.figure.set_facecolor(bg)
        self.ax.set_facecolor(bg)
        self.ax.tick_params(labelsize=7, colors=text)
        self.ax.xaxis.label.set_color(text)
        for spine in self.ax.spines.values():
            spine.set_color(frame)

    def _legend(self) -> None:
        self.ax.legend(
            fontsize=6,
            ncol=3,
            loc="upper right",
            facecolor=self.colours["background"],
            edgecolor=self.colours["frame"],
            labelcolor=self.colours["text"],
        )

    def clear(self) -> None:
        self._start(clear_axes=True)

    def _start(self, clear_axes: bool) -> None:
        self._timer.stop()
        self.history: dict[str, list[float]] = {}
        self.iterations: list[int] = []
        self.lines: dict = {}  # one line per loss term, updated in place
        if clear_axes:
            self.ax.clear()
        self.ax.set_xlabel("iteration", fontsize=8)
        self._paint()
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
            self._legend()
        self.ax.relim()
        self.ax.autoscale_view()
        self.canvas.draw_idle()
