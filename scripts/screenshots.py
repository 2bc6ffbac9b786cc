"""Make the screenshots of docs/usage.md from a real napari window, opened as a user opens it.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out docs/images]

Starts napari first, opens the sample (File > Open Sample > CiNuSeg), then the panel from the
Plugins menu (npe2's widget command), at the panel's own width. Loads the bundled base model,
clicks ten dark nuclei with "Click a nucleus to paint it whole" (mouse clicks on napari's canvas,
as a user's: the first one finds the model's nuclei in a window about it, in a worker, the others
wait for it), paints a new class ("Other", on the sample's darkest nuclei inside one exhaustively annotated
rectangle), trains a short step (a picture mid-training, with the live preview), shows the
step's result with the keep/discard question, keeps it, segments and exports, saving a picture
after each (the panel itself scrolls to what each shows). Trains on the CPU for about a minute.
Models and settings go to a scratch HOME. ``--until NAME`` stops after the picture NAME.
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--until", default=None, help="stop after saving this picture (e.g. 03-clicked.png)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    # keep the user's model folder and settings clean: the panel's defaults live under HOME
    scratch = Path(tempfile.mkdtemp(prefix="cinuseg-shots-"))
    os.environ["HOME"] = str(scratch)
    os.environ["XDG_CONFIG_HOME"] = str(scratch / ".config")

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-cinuseg")  # napari first, as a user starts it
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    (image,) = viewer.open_sample("napari-cinuseg", "he-cmu1")
    _, dock = viewer.window.add_plugin_dock_widget("napari-cinuseg", "CiNuSeg")
    settle(app, 0.3)
    viewer.screenshot(str(out / "00-loading.png"), canvas_only=False)  # the dock, at once, loading
    print("saved", out / "00-loading.png", flush=True)
    while dock.panel is None:  # PyTorch, the engine and the last model load in a worker
        settle(app, 0.1)
    widget = dock.panel
    data = image.data
    settle(app, 1.5)

    class Done(Exception):
        """The picture asked for with --until is saved."""

    def shot(name):
        settle(app)
        viewer.screenshot(str(out / name), canvas_only=False)
        print("saved", out / name, "panel width", widget.width(), flush=True)
        if name == args.until:
            raise Done

    try:
        shot("01-sample-open.png")
        widget.model_section.bundled_btn.click()
        shot("02-model-loaded.png")
        click_nuclei(viewer, widget, app, np.asarray(data), shot)
        paint_train_segment(viewer, widget, app, image, scratch, shot, args)
    except Done:
        pass
    viewer.close()


def click_nuclei(viewer, widget, app, img, shot) -> None:
    """Ten dark, round nuclei of the dermal band clicked as Lymphocyte on an annotation layer of
    its own (taken away afterwards with the layers made with it, so the pictures after it do not
    change)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from scipy import ndimage as ndi
    from skimage.measure import label, regionprops
    from skimage.morphology import disk, opening

    top, left, bottom, right = 180, 430, 420, 700  # the region shown
    dark = opening(img.mean(axis=2) < 90, disk(2))
    points = []
    for blob in regionprops(label(dark[top:bottom, left:right])):
        r, c = (int(v) for v in blob.centroid)
        if 40 <= blob.area <= 200 and blob.eccentricity < 0.8 and all(abs(r - p) + abs(c - q) > 30 for p, q in points):
            points.append((r, c))
    points = [(top + r, left + c) for r, c in points[:10]]
    shown = [id(layer) for layer in viewer.layers]
    widget.class_section.name.setText("Lymphocyte")
    layer = widget.add_annotation_layer()
    widget.class_section.click.setChecked(True)  # the layer goes to pan/zoom: a click takes a nucleus
    camera = viewer.scene.camera
    camera.zoom = 3.2
    camera.center = tuple(np.mean(points, axis=0))
    widget.scroll.ensureWidgetVisible(widget.class_section.click)
    settle(app, 1)
    canvas = viewer.window._qt_viewer.canvas
    for row, col in points:
        x, y = (canvas.view.transform * canvas.view.scene.transform).map([col, row])[:2]
        QTest.mouseClick(
            canvas.native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(round(x), round(y))
        )
        settle(app, 0.05)
    while widget._click_job:
        settle(app, 0.1)
    painted = ndi.label(np.asarray(layer.data) == 1)[1]
    print(f"{len(points)} clicks painted {painted} nuclei: {widget.status.text()}", flush=True)
    shot("03-clicked.png")
    widget.class_section.click.setChecked(False)
    for made in [ly for ly in viewer.layers if id(ly) not in shown]:  # the layer and the one reserved with it
        viewer.layers.remove(made)


def paint_train_segment(viewer, widget, app, image, scratch, shot, args) -> None:
    """A new class painted in an exhaustive rectangle, a step trained, kept, the image segmented
    and exported."""
    from skimage.morphology import disk, opening

    data = image.data

    widget.class_section.name.setText("Other")  # in the colour the panel offers: one no class of the model has
    widget.class_section.exhaustive.setChecked(True)  # everything unpainted inside the rectangle is background
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

    widget.train_section.iterations.setValue(args.iterations)
    widget.train_section.crop.setValue(128)
    worker = widget.start_training()
    settle(app, 12)  # a few previews in
    widget.scroll.ensureWidgetVisible(widget.train_section.plot)
    shot("04-training.png")
    wait(app, worker)
    settle(app, 1)
    shot("05-trained.png")  # the step's result over the painted region: keep or discard?
    widget.segment_section.tile.setValue(512)
    viewer.camera.zoom = 0.8
    viewer.camera.center = (512, 512)
    widget.keep_step()  # Keep segments the image again with the kept model
    wait(app, widget.worker)  # the panel scrolls its table of counts into sight
    shot("06-segmented.png")
    name = image.name
    objects = np.asarray(viewer.layers[f"{name} · nuclei"].data).astype(np.int64)
    for title in ("class map (pixels)", "classes"):
        classes = np.asarray(viewer.layers[f"{name} · {title}"].data).astype(np.int64)
        k = int(classes.max()) + 1
        votes = np.bincount(objects.ravel() * k + classes.ravel(), minlength=(objects.max() + 1) * k)
        two = int(((votes.reshape(-1, k)[1:, 1:] > 0).sum(1) > 1).sum())
        print(f"{title}: {two} of {objects.max()} nuclei hold two classes or more", flush=True)
    wait(app, widget.export_to(scratch / "sample.masks.tif"))
    shot("07-exported.png")


if __name__ == "__main__":
    main()
