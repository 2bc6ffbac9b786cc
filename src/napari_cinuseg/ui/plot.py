"""The loss terms of the running step, plotted live (matplotlib in Qt), in the colours of napari's
theme."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget


class LossPlot(QWidget):
    """The loss terms of the running step, live; :meth:`follow_theme` gives it napari's colours
    (matplotlib's white figure until then).

    Drawn only while shown: while hidden (the panel while it is made, its dock tabbed away) a
    change waits for the next show; a hidden canvas's draw would cost the viewer's thread 20-60 ms
    for nothing. The canvas is shown one event-loop turn after the plot's first show, so that its
    first draw (20-60 ms) is not in the same turn as the first layout of the panel around it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.colours = {"background": "#ffffff", "text": "#000000", "frame": "#cccccc"}
        # fixed margins, not tight_layout: a layout pass on every redraw costs the event loop
        self.figure = Figure(figsize=(3.2, 1.8), dpi=80)
        self.figure.subplots_adjust(left=0.14, right=0.98, top=0.97, bottom=0.2)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.hide()  # until the turn after the plot's first show (_show_canvas)
        policy = self.canvas.sizePolicy()
        policy.setRetainSizeWhenHidden(True)  # its showing changes no layout: it only paints
        self.canvas.setSizePolicy(policy)
        self.ax = self.figure.add_subplot(111)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.setMinimumHeight(150)
        self._timer = QTimer(self)  # one pending redraw at a time, dies with the widget
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._redraw)
        self._stale = False  # changed while hidden: drawn at the next show
        self._canvas_timer = QTimer(self)  # a timer's turn, after the loop's pending events
        self._canvas_timer.setSingleShot(True)
        self._canvas_timer.setInterval(0)
        self._canvas_timer.timeout.connect(self._show_canvas)
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
        self._draw()

    def lay_out(self) -> None:
        """matplotlib's first draw without rendering (its ticks, its texts' fonts and layout), so
        that the canvas's first draw costs a redraw's 20 ms, not 35-60 ms: the panel calls it in
        a part of its own while it is made."""
        self.figure.draw_without_rendering()

    def _draw(self) -> None:
        if self.canvas.isVisible():
            self.canvas.draw_idle()
        else:
            self._stale = True

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if self.canvas.isHidden():
            self._canvas_timer.start()
        elif self._stale:
            self._stale = False
            self.canvas.draw_idle()

    def _show_canvas(self) -> None:
        self._stale = False
        self.canvas.show()  # its first resize asks for a draw, made at its first paint

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
        self._draw()

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
        self._draw()
