"""Click a nucleus, get the whole nucleus, in a real napari window (Xvfb): clicks reach the
annotation layer as a user's do (Qt mouse events on napari's canvas), and the current model's
whole nucleus under each is painted with the Paint label; at 20× too, in the image's pixels."""

import imageio.v3 as iio
import numpy as np
from qtpy.QtCore import QPoint, QSettings, Qt
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.measure import label, regionprops

from napari_cinuseg.model.file import BUNDLED_MODEL
from napari_cinuseg.runtime.events import drain
from napari_cinuseg.session.nuclei import segment_nuclei_and_measure
from napari_cinuseg.session.picking import NO_NUCLEUS
from napari_cinuseg.session.storage import Storage

TILE = 256  # the panel's Tile for these small images, and the reference segmentation's


def _open_panel(make_napari_viewer, tmp_path, image, name, pixel_size):
    """napari first (shown, so that clicks reach its canvas), the image, then the panel with
    the bundled model on the CPU."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name=name, rgb=True)
    from napari_cinuseg.ui.panel import CiNuSegWidget

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    widget = CiNuSegWidget(viewer, storage=Storage(tmp_path, tmp_path / "results"), settings=settings)
    viewer.window.add_dock_widget(widget)
    widget.class_section.pixel_size.setValue(pixel_size)
    widget.load_model(BUNDLED_MODEL)
    widget.segment_section.tile.setValue(TILE)
    widget.train_section.device_choice.setCurrentIndex(widget.train_section.device_choice.findData("cpu"))
    viewer.reset_view()
    return widget


def _reference(widget, image):
    """The model's nuclei in the whole image, as the panel segments it (its instance map)."""
    px = widget.image_pixel_size()
    found = segment_nuclei_and_measure(widget.model, image, tile=TILE, overlap=64, image_pixel_size=px, device="cpu")
    return np.asarray(drain(found).nuclei.labels)


def _click(widget, qtbot, row, col):
    """A left click on napari's canvas where the image's pixel (row, col) is shown."""
    canvas = widget.viewer.window._qt_viewer.canvas
    x, y = (canvas.view.transform * canvas.view.scene.transform).map([col, row])[:2]
    qtbot.mouseClick(canvas.native, Qt.MouseButton.LeftButton, pos=QPoint(int(round(x)), int(round(y))))


def _inside(mask) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its outline."""
    distance = ndi.distance_transform_edt(mask)
    return tuple(int(v) for v in np.unravel_index(distance.argmax(), distance.shape))


def _click_mode(widget, layer):
    widget.class_section.click.setChecked(True)
    assert layer.mode == "pan_zoom" and widget.viewer.layers.selection.active is layer


def _wait_for_clicks(widget, qtbot):
    qtbot.waitUntil(lambda: not widget._click_job, timeout=120_000)


def test_ten_clicked_nuclei_are_painted_whole_and_a_step_learns_them(make_napari_viewer, qtbot, tmp_path, shared_data):
    """On a CoNSeP patch (40×, the model's pixel size) dense in lymphocytes: the first click
    finds the model's nuclei in a worker while nine more wait; each click paints its whole
    nucleus as the new class, one undo step each; a click off every nucleus paints nothing and
    says so; background is clicked too, a stroke by hand still paints; then a step trains."""
    folder = shared_data / "consep" / "train"
    image = iio.imread(folder / "images" / "train_18_015.jpg")
    classes = iio.imread(folder / "labels" / "train_18_015.png")
    truth = iio.imread(folder / "instances" / "train_18_015.png")
    widget = _open_panel(make_napari_viewer, tmp_path, image, "consep", 0.25)
    model_nuclei = _reference(widget, image)

    # lymphocytes (CoNSeP's inflammatory nuclei), each clicked at its centre, on model nuclei that
    # touch none chosen before (so that each painted nucleus is a nucleus of the step's own count)
    points, ids = [], []
    taken = np.zeros(model_nuclei.shape, bool)
    for i in np.unique(truth[classes == 2]):
        point = _inside(truth == i)
        found = int(model_nuclei[point])
        if found and not ndi.binary_dilation(model_nuclei == found)[taken].any():
            points.append(point)
            ids.append(found)
            taken |= model_nuclei == found
    assert len(ids) >= 12
    widget.class_section.name.setText("Lymphocyte")
    layer = widget.add_annotation_layer()
    assert not widget.class_section.click.isChecked()  # a new layer starts with the brush
    _click_mode(widget, layer)

    _click(widget, qtbot, *points[0])
    assert widget._click_job and "Finding the model's nuclei in 256 × 256 px of consep" in widget.status.text()
    for row, col in points[1:10]:  # while the worker segments: they wait for it
        _click(widget, qtbot, row, col)
    _wait_for_clicks(widget, qtbot)
    painted = np.asarray(layer.data)
    np.testing.assert_array_equal(painted == 1, np.isin(model_nuclei, ids[:10]))  # ten whole nuclei, nothing else
    assert label(painted == 1).max() == 10 and set(np.unique(painted)) == {0, 1}
    assert "painted as Lymphocyte" in widget.status.text()

    # the image's nuclei are known now: an eleventh click paints at once, one undo step
    before = painted.copy()
    _click(widget, qtbot, *points[10])
    assert not widget._click_job and widget.status.text().startswith("Painted the model's")
    np.testing.assert_array_equal(np.asarray(layer.data) == 1, np.isin(model_nuclei, ids[:11]))
    layer.undo()
    np.testing.assert_array_equal(np.asarray(layer.data), before)

    # a click off every nucleus paints nothing, and says so
    off = _inside(ndi.binary_erosion(model_nuclei == 0, iterations=2, border_value=1))
    _click(widget, qtbot, *off)
    assert widget.status.text() == NO_NUCLEUS
    np.testing.assert_array_equal(np.asarray(layer.data), before)

    # background chosen under Paint: a click marks a nucleus as not Lymphocyte
    widget.class_section.paint.setCurrentIndex(widget.class_section.paint.findData(2))
    _click(widget, qtbot, *points[11])
    assert (np.asarray(layer.data)[model_nuclei == ids[11]] == 2).all()
    assert "as background" in widget.status.text()

    # the brush: choosing it unticks the box, and a click paints a dab, as in napari
    layer.mode = "paint"
    assert not widget.class_section.click.isChecked()
    qtbot.wait(50)
    _click(widget, qtbot, *off)
    assert np.asarray(layer.data)[off] == 2
    assert (np.asarray(layer.data) == 2).sum() < (model_nuclei == ids[11]).sum() + np.pi * 8**2

    widget.train_section.iterations.setValue(2)
    widget.train_section.crop.setValue(64)
    worker = widget.start_training()
    assert worker is not None, widget.status.text()
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    candidate = widget.candidate
    assert candidate is not None and candidate.model.class_names == ["Epithelial", "Spindle-shaped", "Lymphocyte"]
    assert candidate.review.painted == 10
    assert widget.train_section.review.keep_btn.isEnabled()


def test_a_click_on_a_20x_image_paints_the_nucleus_in_the_images_pixels(
    make_napari_viewer, qtbot, tmp_path, shared_data
):
    """A 20× crop (0.5 µm/px) and the bundled model (0.25 µm/px): the window about the click is
    resampled for the model and back, so the painted nucleus is the image's, where the click was
    and of its size (on a dark haematoxylin blob of the image); after Segment image a click takes
    the panel's own nuclei, at once; a correction label paints the model's class; the eraser's
    label, or no model, is said and paints nothing."""
    from napari_cinuseg.io.slides import Slide

    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        image = s.read(1000, 800, 1320, 1120)
    widget = _open_panel(make_napari_viewer, tmp_path, image, "he", 0.5)
    assert widget.model.pixel_size == 0.25
    model_nuclei = _reference(widget, image)
    haematoxylin = rgb2hed(image)[..., 0]
    blobs = label(haematoxylin > np.percentile(haematoxylin, 90))
    chosen = []  # (blob, point, model nucleus): dark blobs of a nucleus's size with a nucleus under them
    for blob in regionprops(blobs):
        point = _inside(blobs == blob.label)
        if 30 <= blob.area <= 150 and model_nuclei[point] and model_nuclei[point] not in [c[2] for c in chosen]:
            chosen.append((blob, point, int(model_nuclei[point])))
    assert len(chosen) >= 3
    widget.class_section.name.setText("Lymphocyte")
    layer = widget.add_annotation_layer()
    _click_mode(widget, layer)

    blob, point, nucleus = chosen[0]
    _click(widget, qtbot, *point)
    _wait_for_clicks(widget, qtbot)
    painted = np.asarray(layer.data) == 1
    np.testing.assert_array_equal(painted, model_nuclei == nucleus)
    assert painted[point]
    # where the image shows a nucleus, and of its size in the image's pixels (at the model's scale
    # it would have four times the area)
    off = np.hypot(*(np.array(ndi.center_of_mass(painted)) - np.array(blob.centroid)))
    assert off < 4, off
    assert 0.2 * blob.area < painted.sum() < 2 * blob.area, (painted.sum(), blob.area)

    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
        pass
    widget.viewer.layers.selection.active = layer
    objects = np.asarray(widget.viewer.layers["he · nuclei"].data)
    _, point, _ = chosen[1]
    widget.class_section.paint.setCurrentIndex(widget.class_section.paint.findData(3))  # Epithelial (correction)
    _click(widget, qtbot, *point)
    assert not widget._click_job  # the panel's own nuclei: no window to segment
    np.testing.assert_array_equal(np.asarray(layer.data) == 3, objects == objects[point])
    assert "as Epithelial (correction)" in widget.status.text()

    # what a click cannot do is said, and paints nothing
    before = np.asarray(layer.data).copy()
    layer.selected_label = 0  # the eraser's label
    _click(widget, qtbot, *chosen[2][1])
    assert "a click paints a whole nucleus, it does not erase: choose under Paint" in widget.status.text()
    layer.selected_label = 1
    widget.model = None
    _click(widget, qtbot, *chosen[2][1])
    assert widget.status.text() == "choose or train a model first: a click takes the model's nucleus"
    np.testing.assert_array_equal(np.asarray(layer.data), before)
