"""Make the screenshots of docs/usage.md from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out docs/images]

Opens the sample image, loads the bundled base model, paints a new class ("Other", on the
sample's darkest nuclei inside one exhaustively annotated rectangle), trains a short step,
segments and exports, saving a picture after each step. Trains on the CPU for about a minute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def wait(app, worker, timeout=900):
    done = []
    worker.finished.connect(lambda: done.append(True))
    t0 = time.time()
    while not done:
        app.processEvents()
        time.sleep(0.05)
        if time.time() - t0 > timeout:
            raise TimeoutError("the worker did not finish")


def settle(app, seconds=0.5):
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--iterations", type=int, default=60)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.morphology import disk, opening

    from napari_cinuseg.plugin.sample_data import sample_he
    from napari_cinuseg.ui.panel import CiNuSegWidget
    from napari_cinuseg.workflows import Storage

    scratch = Path(tempfile.mkdtemp(prefix="cinuseg-shots-"))
    from qtpy.QtCore import QSettings

    # keep the user's model folder and settings clean
    storage, settings = Storage(scratch, scratch / "results"), QSettings(str(scratch / "settings.ini"), QSettings.IniFormat)
    viewer = napari.Viewer(title="napari-cinuseg")
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    data, meta = sample_he()[0]
    viewer.add_image(data, **meta)
    widget = CiNuSegWidget(viewer, storage=storage, settings=settings)
    viewer.window.add_dock_widget(widget, name="CiNuSeg", area="right")
    settle(app, 1.5)

    def shot(name):
        settle(app)
        viewer.screenshot(str(out / name), canvas_only=False)
        print("saved", out / name)

    shot("01-sample-open.png")
    widget.bundled_btn.click()
    shot("02-model-loaded.png")

    widget.class_name.setText("Other")
    widget.colour.setText("#f58231")
    widget.exhaustive.setChecked(True)  # everything unpainted inside the rectangle is background
    layer = widget.add_annotation_layer()
    regions = viewer.layers[f"{layer.metadata['cinuseg_annotation']['image']} · exhaustive regions"]
    regions.add_rectangles(np.array([[80, 80], [420, 420]]))
    # paint the dark, round nuclei inside the rectangle as the new class
    img = np.asarray(data)
    dark = opening(img.mean(axis=2) < 90, disk(2))
    inside = np.zeros(dark.shape, bool)
    inside[80:420, 80:420] = True
    layer.data[dark & inside] = 1
    layer.refresh()
    viewer.layers.selection.active = layer
    viewer.camera.zoom = 1.5
    viewer.camera.center = (250, 250)
    shot("03-painted.png")

    widget.iterations.setValue(args.iterations)
    widget.crop.setValue(128)
    worker = widget.start_training()
    settle(app, 8)
    shot("04-training.png")
    wait(app, worker)
    shot("05-trained.png")

    viewer.camera.zoom = 0.8
    viewer.camera.center = (512, 512)
    widget.tile.setValue(512)
    wait(app, widget.start_segmentation())
    shot("06-segmented.png")
    wait(app, widget.export_to(scratch / "sample.masks.tif"))
    shot("07-exported.png")
    viewer.close()


if __name__ == "__main__":
    main()
