"""The live loss plot draws only while shown: its canvas comes a turn after the plot's first show."""

from types import SimpleNamespace


def _progress(iteration, total=10):
    return SimpleNamespace(iteration=iteration, total=total, loss=1.0 / iteration, terms={"cac": 0.1})


def test_the_loss_plot_draws_only_once_shown_and_catches_up_then(qtbot):
    from napari_cinuseg.ui.plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    draws = []
    plot.canvas.mpl_connect("draw_event", lambda _: draws.append(1))
    plot.add(_progress(10, total=10))  # the last point: drawn at once, were the plot shown
    assert plot.canvas.isHidden() and draws == [] and set(plot.lines) == {"loss", "cac"}
    plot.show()
    assert plot.canvas.isHidden()  # not in the turn of the plot's first show
    qtbot.waitUntil(lambda: plot.canvas.isVisible() and bool(draws), timeout=5000)
    plot.hide()
    before = len(draws)
    plot.clear()
    qtbot.wait(50)
    assert len(draws) == before  # hidden: no draw for nothing
    plot.show()
    qtbot.waitUntil(lambda: len(draws) > before, timeout=5000)  # the change, drawn at the show
