"""The whole flow in a real napari window (Xvfb): prior model, paint, train, cancel, segment, export."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QSettings
from skimage.color import rgb2hed
from skimage.measure import label, regionprops

from napari_cinuseg.io.export import read_masks
from napari_cinuseg.io.slides import Slide
from napari_cinuseg.model.file import BUNDLED_MODEL
from napari_cinuseg.plugin.layer_metadata import RESULT_KEY
from napari_cinuseg.runtime.events import drain
from napari_cinuseg.session.storage import Storage
from napari_cinuseg.training.steps import train_base
from napari_cinuseg.ui import layers
from napari_cinuseg.ui import panel as _panel
from napari_cinuseg.ui import segmenting as _segmenting
from napari_cinuseg.ui.panel import CiNuSegWidget


@pytest.fixture
def prior_file(few_pairs, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "base.cinuseg.pt"
    drain(train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=2), out=out))
    return out


def _settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)


@pytest.fixture
def widget(make_napari_viewer, tmp_path, monkeypatch, shared_data):
    (tmp_path / "results").mkdir()
    viewer = make_napari_viewer()
    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        viewer.add_image(s.read(1000, 800, 1320, 1120), name="he", rgb=True)
    # new models, results and remembered fields go to the test's own folder (injected)
    w = CiNuSegWidget(viewer, storage=Storage(tmp_path, tmp_path / "results"), settings=_settings(tmp_path))
    viewer.window.add_dock_widget(w)
    return w


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _paint(widget, name="Neutrophil"):
    widget.class_section.name.setText(name)
    layer = widget.add_annotation_layer()
    layer.data[40:60, 40:60] = 1  # a few strokes of the new class
    layer.data[100:112, 200:214] = 1
    layer.data[200:230, 150:170] = 2  # and of background
    layer.refresh()
    return layer


def _train(widget, qtbot, iterations=2):
    widget.train_section.iterations.setValue(iterations)
    widget.train_section.crop.setValue(64)
    worker = widget.start_training()
    assert worker is not None, widget.status.text()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    return worker


def test_paint_train_keep_cancel_segment_export(widget, prior_file, qtbot, tmp_path):
    viewer = widget.viewer
    before = _digest(prior_file)
    widget.load_model(prior_file)
    assert "Spindle-shaped" in widget.model_section.label.text()
    prior = widget.model

    widget.class_section.colour.setText("#00ffff")
    layer = _paint(widget)
    assert layer.metadata["cinuseg_annotation"] == {
        "image": "he",
        "class": "Neutrophil",
        "colour": "#00ffff",
        "corrections": ["Epithelial", "Spindle-shaped"],  # the model's classes, from label 3 on
    }
    _train(widget, qtbot)
    # the step's result waits for a look: shown on the painted region, the prior still current
    assert widget.model is prior and widget.candidate.model.class_names == [
        "Epithelial",
        "Spindle-shaped",
        "Neutrophil",
    ]
    candidate = widget.candidate.path
    assert candidate.exists() and candidate.parent == tmp_path / "candidates"
    assert widget.train_section.review.isVisibleTo(widget) and widget.train_section.review.keep_btn.isEnabled()
    assert "of the 2 painted Neutrophil nuclei Neutrophil" in widget.train_section.review.summary.text()
    assert "Epithelial" in widget.train_section.forgetting.text()
    step_result = viewer.layers["he · step result"]
    origin = widget.last_crops[0][1:]
    from napari_cinuseg.annotations import annotated_box

    y0, x0, y1, x1 = annotated_box(np.asarray(layer.data))
    assert tuple(step_result.translate) == origin == (y0, x0) and step_result.data.shape == (y1 - y0, x1 - x0)
    assert int(np.asarray(step_result.data).max()) <= 3
    att = viewer.layers["last training crops (ATT)"]
    assert not att.visible and not any(str(v) for v in np.atleast_1d(att.text.values))  # hidden, no canvas text
    assert set(att.features.columns) >= {"r", "t_o", "t_n", "att"}
    assert set(att.features["att"]) <= {"fired", "off"} and "ATT fired on" in widget.train_section.att.text()
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_cinuseg.ui.layers import ATT_FIRED, ATT_OFF

    want = [transform_color(ATT_FIRED if a == "fired" else ATT_OFF)[0] for a in att.features["att"]]
    np.testing.assert_allclose(att.edge_color, want)  # each crop's own colour, whatever came first

    kept = widget.keep_step()  # keep: saved in the models folder, current, the annotation beside it
    assert "he · step result" not in viewer.layers and "last training crops (ATT)" not in viewer.layers  # done with
    assert kept == tmp_path / candidate.name and kept.exists() and not candidate.exists()
    assert widget.model.class_names == [
        "Epithelial",
        "Spindle-shaped",
        "Neutrophil",
    ] and widget.model.source_path == str(kept)
    assert not widget.train_section.review.isVisibleTo(widget) and "it is now the current model" in widget.status.text()
    annotation = kept.with_name(kept.name.removesuffix(".cinuseg.pt") + ".he.annotation.tif")
    assert annotation.is_file() and annotation.name in widget.status.text()
    assert "Segmenting he with it" in widget.status.text()  # Keep segments the image again, with the kept model
    qtbot.waitUntil(lambda: widget.segment_section.segment_btn.isEnabled(), timeout=120_000)
    result = layers.result_layer(viewer)
    assert result.metadata[RESULT_KEY]["class_names"][-1] == "Neutrophil"
    assert _digest(prior_file) == before
    painted = np.array(layer.data)
    viewer.layers.remove(layer)
    reopened = widget.open_annotation(annotation)  # reopened over its image, as an annotation layer
    np.testing.assert_array_equal(np.asarray(reopened.data), painted)
    assert (
        reopened.metadata["cinuseg_annotation"]["class"] == "Neutrophil"
        and reopened.name == "he · Neutrophil annotation"
    )

    # a second run, cancelled at once: no file, the current model stays, the plot is cleared
    files = sorted(tmp_path.rglob("*.cinuseg.pt"))
    current = widget.model
    widget.class_section.name.setText("Neutrophil-2")
    layer2 = widget.add_annotation_layer()
    layer2.data[40:60, 40:60] = 1
    widget.train_section.iterations.setValue(10_000)
    worker = widget.start_training()
    widget.cancel()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert sorted(tmp_path.rglob("*.cinuseg.pt")) == files and widget.model is current and widget.candidate is None
    assert "cancelled" in widget.status.text() and widget.train_section.plot.iterations == []

    widget.segment_section.tile.setValue(256)
    for _ in range(2):  # segmenting again replaces the result's layers
        with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
            pass
        names = [ly.name for ly in viewer.layers]
        assert names.count("he · classes") == 1 and not [n for n in names if "[" in n], names
    classes = viewer.layers["he · classes"]
    assert classes.data.shape == (320, 320)
    assert list(classes.features["name"]) == ["background", "Epithelial", "Spindle-shaped", "Neutrophil"]
    assert "he · Neutrophil" in viewer.layers
    assert widget.segment_section.table.rowCount() == 3
    # the nuclei as objects: one id per nucleus, its class in the features, replaced like the rest
    objects = viewer.layers["he · nuclei"]
    assert [ly.name for ly in viewer.layers].count("he · nuclei") == 1
    ids = np.unique(np.asarray(objects.data))
    ids = ids[ids > 0]
    assert (
        len(ids)
        == len(objects.features) - 1
        == sum(int(widget.segment_section.table.item(r, 1).text()) for r in range(3))
        > 0
    )
    class_of = dict(zip(objects.features["index"], objects.features["class"]))
    for i in ids[:5]:  # each object lies in the class map's pixels of its class
        inside = np.asarray(classes.data)[np.asarray(objects.data) == i]
        assert (np.asarray(classes.features["name"])[inside] == class_of[i]).all()

    progress = []
    worker = widget.export_to(tmp_path / "he.masks.tif")
    worker.yielded.connect(progress.append)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    out = widget.last_export  # written in a worker, with progress
    assert progress and progress[-1].done == progress[-1].total > 0
    assert (tmp_path / "he.nuclei.csv").is_file()
    import json

    features = json.loads((tmp_path / "he.geojson").read_text())["features"]  # for QuPath
    assert len(features) == len(ids) and {f["properties"]["classification"]["name"] for f in features} <= set(
        class_of.values()
    )
    class_map, masks, meta = read_masks(out)
    np.testing.assert_array_equal(class_map, np.asarray(classes.data))
    assert list(masks) == ["Epithelial", "Spindle-shaped", "Neutrophil"] and meta["model_id"] == widget.model.id

    # a class map edited by hand is split into nuclei again at the next export, not the old objects
    from napari_cinuseg.plugin.layer_metadata import NUCLEI_KEY

    assert NUCLEI_KEY in classes.metadata
    edited = np.asarray(classes.data).copy()
    edited[:] = 0
    edited[100:140, 100:140] = 1  # one square nucleus
    classes.data = edited
    assert NUCLEI_KEY not in classes.metadata
    with qtbot.waitSignal(widget.export_to(tmp_path / "edited.masks.tif").finished, timeout=120_000):
        pass
    assert len(json.loads((tmp_path / "edited.geojson").read_text())["features"]) == 1


def test_train_again_replaces_the_candidate_and_discard_keeps_the_prior(
    widget, prior_file, qtbot, tmp_path, monkeypatch
):
    import functools

    from napari_cinuseg.session import preview

    monkeypatch.setattr(
        _panel, "with_preview", functools.partial(preview.with_preview, every_s=0.0)
    )  # a preview per iteration
    widget.load_model(prior_file)
    prior = widget.model
    layer = _paint(widget, "Lymphocyte")
    _train(widget, qtbot)
    first = widget.candidate.path
    assert first.exists() and widget.model is prior
    assert widget.start_training() is None  # unchanged paint: said, not trained again
    assert "training again would give the same Lymphocyte model" in widget.status.text()
    assert widget.candidate.path == first and first.exists()
    layer.data[150:165, 40:55] = 1  # correct the paint, and train the same class again
    layer.refresh()
    _train(widget, qtbot)
    second = widget.candidate.path
    assert second != first and second.exists() and not first.exists()  # replaced, not piled up
    assert "of the 3 painted Lymphocyte nuclei" in widget.train_section.review.summary.text()
    assert [ly.name for ly in widget.viewer.layers].count("he · step result") == 1
    assert [ly.name for ly in widget.viewer.layers].count("last training crops (ATT)") == 1
    shown = np.array(widget.viewer.layers["he · step result"].data)
    widget.train_section.iterations.setValue(
        10_000
    )  # a third run, cancelled: the waiting result stays, shown as it was
    worker = widget.start_training()
    qtbot.waitUntil(
        lambda: "he · preview (training)" in widget.viewer.layers, timeout=60_000
    )  # the preview took the layer
    widget.cancel()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.candidate.path == second and second.exists()
    np.testing.assert_array_equal(np.asarray(widget.viewer.layers["he · step result"].data), shown)
    widget.discard_step()
    assert not second.exists() and list((tmp_path / "candidates").iterdir()) == []
    assert widget.model is prior and widget.candidate is None and not widget.train_section.review.isVisibleTo(widget)
    assert "he · step result" not in widget.viewer.layers and "stays current" in widget.status.text()
    # its layer is kept empty and hidden for the next run (making a layer stalls the viewer)
    reserved = widget.viewer.layers["he · preview (training)"]
    assert not reserved.visible and np.asarray(reserved.data).shape == (1, 1) and not np.asarray(reserved.data).any()
    assert list(tmp_path.glob("*.cinuseg.pt")) == []


def test_the_preview_updates_during_training_and_goes_at_the_end(widget, prior_file, qtbot, monkeypatch):
    import functools

    from napari_cinuseg.runtime.events import Preview
    from napari_cinuseg.session import preview

    monkeypatch.setattr(_panel, "with_preview", functools.partial(preview.with_preview, every_s=0.0))
    widget.load_model(prior_file)
    _paint(widget)
    seen = []

    def on_event(ev):
        if isinstance(ev, Preview):  # the layer is updated in the viewer's thread, after this
            QTimer.singleShot(
                0, lambda: seen.append((ev.iteration, np.array(widget.viewer.layers["he · preview (training)"].data)))
            )

    from qtpy.QtCore import QTimer

    # the preview's layer was made hidden with the annotation layer, and training only updates it
    reserved = widget.viewer.layers["he · preview (training)"]
    assert not reserved.visible
    widget.train_section.iterations.setValue(4)
    widget.train_section.crop.setValue(64)
    worker = widget.start_training()
    worker.yielded.connect(on_event)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.wait(50)
    assert [i for i, _ in seen] == [1, 2, 3]
    assert reserved in widget.viewer.layers and reserved.visible  # the same layer, shown
    assert seen[0][1].shape == widget.viewer.layers["he · step result"].data.shape
    assert "he · preview (training)" not in widget.viewer.layers  # the step result takes its place


def test_the_chosen_device_reaches_the_step_and_the_segmentation(widget, prior_file, qtbot, monkeypatch):
    asked = {}
    real_learn, real_segment = _panel.learn_class, _segmenting.segment_nuclei_and_measure

    def learn(prior, pairs, name, colour, settings, **kw):
        asked["step"] = settings.device
        return real_learn(prior, pairs, name, colour, settings, **kw)

    def segment(model, pixels, **kw):
        asked["segment"] = kw["device"]
        return real_segment(model, pixels, **kw)

    monkeypatch.setattr(_panel, "learn_class", learn)
    monkeypatch.setattr(_segmenting, "segment_nuclei_and_measure", segment)
    choices = [
        widget.train_section.device_choice.itemData(i) for i in range(widget.train_section.device_choice.count())
    ]
    assert choices[:2] == ["auto", "cpu"]
    widget.train_section.device_choice.setCurrentIndex(choices.index("cpu"))
    widget.load_model(prior_file)
    _paint(widget)
    _train(widget, qtbot)
    assert asked["step"] == "cpu" and widget.candidate.model.steps[-1].results["device"].startswith("CPU")
    assert widget.train_section.device.text().startswith("Device: CPU")
    widget.segment_section.tile.setValue(256)
    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
        pass
    assert asked["segment"] == "cpu"


def test_the_panel_keeps_its_width_and_folds_the_details(widget, prior_file, qtbot):
    from qtpy.QtWidgets import QScrollArea

    from napari_cinuseg.ui.panel import PANEL_WIDTH

    qtbot.wait(100)
    assert isinstance(widget.scroll, QScrollArea) and widget.width() == PANEL_WIDTH
    assert not widget.train_section.advanced.isVisibleTo(widget) and not widget.train_section.att.isVisibleTo(
        widget
    )  # under Details, closed
    widget.train_section.details.set_open(True)
    assert widget.train_section.advanced.isVisibleTo(widget)
    table = widget.segment_section.table  # as tall as its rows: no scroll of its own
    assert (
        table.height() >= table.horizontalHeader().sizeHint().height() + 3 * table.verticalHeader().defaultSectionSize()
    )
    widget.load_model(prior_file)
    _paint(widget)
    widget._say("a very long message " * 40)
    widget.train_section.iterations.setValue(3)
    widget.train_section.crop.setValue(64)
    worker = widget.start_training()
    qtbot.waitUntil(lambda: widget.train_section.progress.value() >= 1, timeout=60_000)
    assert widget.width() == PANEL_WIDTH and widget.status.wordWrap()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.width() == PANEL_WIDTH


def test_pixel_size_from_the_file_or_the_user_resamples_and_gives_micrometres(widget, prior_file, shared_data, qtbot):
    from napari_cinuseg.plugin.reader import read_he

    data, kwargs, _ = read_he(str(shared_data / "slides" / "CMU-1-Small-Region.svs"))[0]
    assert kwargs["metadata"]["pixel_size_um"] == pytest.approx(0.499)
    widget.viewer.add_image(data, **kwargs)
    widget.class_section.image.setCurrentText(kwargs["name"])
    assert (
        widget.image_pixel_size() == pytest.approx(0.499)
        and widget.class_section.pixel_size_note.text() == "from the file"
    )
    widget.class_section.image.setCurrentText("he")  # an array layer: the file does not say, the user does
    assert "does not say" in widget.class_section.pixel_size_note.text()
    widget.class_section.pixel_size.setValue(0.5)
    widget.load_model(prior_file)
    widget.model.pixel_size = 0.25
    widget.segment_section.tile.setValue(256)
    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
        pass
    assert widget.viewer.layers["he · classes"].data.shape == (320, 320)  # the image's own size
    assert widget.segment_section.table.horizontalHeaderItem(2).text() == "area µm²"


def test_the_panels_nuclei_are_those_of_cinuseg_segment_for_a_model_with_a_separation_head(widget, qtbot, tmp_path):
    """With a model that has a separation head, Segment image splits the nuclei by its learned
    distance, as ``cinuseg segment`` does: Export's CSV and napari's writer on the class map of
    pixels (split again there, by the distance the layer carries) give ``cinuseg segment``'s."""
    from skimage import io as skio

    from napari_cinuseg.cli import main
    from napari_cinuseg.plugin.layer_metadata import NUCLEI_KEY, SEPARATION_KEY
    from napari_cinuseg.plugin.writer import write_masks

    model_path = BUNDLED_MODEL  # it carries a separation head
    widget.load_model(model_path)
    widget.class_section.image.setCurrentText("he")
    widget.class_section.pixel_size.setValue(0.5)  # 20×: tiles resampled to the model's 0.25 µm/px
    widget.segment_section.tile.setValue(256)
    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
        pass
    classes, pixels = widget.viewer.layers["he · classes"], widget.viewer.layers["he · class map (pixels)"]
    assert classes.metadata[NUCLEI_KEY].method == "distance"
    assert pixels.metadata[SEPARATION_KEY].shape == (320, 320)
    with qtbot.waitSignal(widget.export_to(tmp_path / "he.masks.tif").finished, timeout=120_000):
        pass
    image = tmp_path / "he.png"
    skio.imsave(image, np.asarray(widget.viewer.layers["he"].data), check_contrast=False)
    args = ["--device", "cpu", "--tile", "256", "--overlap", "64", "--pixel-size", "0.5"]
    assert main(["segment", str(image), "--model", str(model_path), "--out", str(tmp_path / "cli"), *args]) == 0
    cli = (tmp_path / "cli" / "he.nuclei.csv").read_text()
    assert (tmp_path / "he.nuclei.csv").read_text() == cli
    data, attributes, _ = pixels.as_layer_data_tuple()
    _, table, _ = write_masks(tmp_path / "pixels.tif", data, attributes)
    assert Path(table).read_text() == cli


class _FakeCudaOOM(RuntimeError):
    """What torch.cuda.OutOfMemoryError is: a RuntimeError (superqt drops those silently)."""


@pytest.mark.parametrize(
    "error", [RuntimeError("a kernel failed"), _FakeCudaOOM("CUDA out of memory. Tried to allocate 2.00 GiB")]
)
@pytest.mark.parametrize("job", ["train", "segment"])
def test_a_failing_job_is_one_error_and_the_panel_works_again(widget, prior_file, qtbot, monkeypatch, error, job):
    import napari.utils.notifications as notifications

    from napari_cinuseg.runtime import devices

    errors = []
    monkeypatch.setattr(notifications, "show_error", errors.append)
    monkeypatch.setattr(devices, "is_out_of_memory", lambda exc: "out of memory" in str(exc))
    widget.load_model(prior_file)

    def fail(*a, **k):
        raise error
        yield  # a generator, as every job

    if job == "train":
        monkeypatch.setattr(_panel, "learn_class", fail)
        widget.class_section.name.setText("Neutrophil")
        layer = widget.add_annotation_layer()
        layer.data[40:60, 40:60] = 1
        layer.data[200:230, 150:170] = 2
        before = np.array(layer.data)
        worker = widget.start_training()
    else:
        monkeypatch.setattr(_segmenting, "segment_nuclei_and_measure", fail)
        worker = widget.start_segmentation()
    assert worker is not None
    # a failure this fast may finish before a signal could be waited for: wait for its effects
    qtbot.waitUntil(lambda: bool(errors) and widget.train_section.train_btn.isEnabled(), timeout=60_000)
    qtbot.wait(200)  # no second notification arrives later
    assert len(errors) == 1, errors
    if "out of memory" in str(error):
        assert "ran out of memory" in errors[0] and "smaller" in errors[0]
    else:
        assert "a kernel failed" in errors[0]
    assert (
        widget.train_section.train_btn.isEnabled()
        and widget.segment_section.segment_btn.isEnabled()
        and widget.segment_section.export_btn.isEnabled()
    )
    assert "Segmenting" not in widget.status.text()
    if job == "train":
        np.testing.assert_array_equal(np.asarray(layer.data), before)


def test_closing_the_panel_mid_training_cancels_and_keeps_everything(widget, prior_file, qtbot, tmp_path):
    before = _digest(prior_file)
    widget.load_model(prior_file)
    widget.class_section.name.setText("Neutrophil")
    layer = widget.add_annotation_layer()
    layer.data[40:60, 40:60] = 1
    layer.data[200:230, 150:170] = 2
    painted = np.array(layer.data)
    widget.train_section.iterations.setValue(100_000)
    widget.train_section.crop.setValue(64)
    worker = widget.start_training()
    qtbot.waitUntil(lambda: widget.train_section.progress.value() >= 1, timeout=60_000)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        widget.viewer.window.remove_dock_widget(widget)  # the user closes the panel
    assert widget.cancel_event.is_set()
    assert list(tmp_path.glob("*.cinuseg.pt")) == []  # nothing saved
    assert _digest(prior_file) == before
    np.testing.assert_array_equal(np.asarray(layer.data), painted)


def test_clear_messages_and_remembered_settings(widget, qtbot):
    assert widget.add_annotation_layer() is None  # no class name
    assert "needs a name" in widget.status.text()
    widget.class_section.name.setText("Neutrophil")
    assert widget.start_training() is None  # nothing painted
    assert "nothing is painted" in widget.status.text()
    assert widget.start_segmentation() is None
    assert "model first" in widget.status.text()
    widget.model_section.bundled_btn.click()  # the shipped base model, remembered for next time
    assert widget.model.class_names == ["Epithelial", "Spindle-shaped"]
    widget.train_section.iterations.setValue(123)
    widget.train_section.device_choice.setCurrentIndex(widget.train_section.device_choice.findData("cpu"))
    widget.train_section.preview.setChecked(False)
    widget.train_section.advanced.setChecked(True)
    widget.train_section.hyper["stain_jitter"].value = 0.5  # the method's settings: a magicgui form
    widget.train_section.hyper["tau"].value = 0.6
    assert widget.current_settings().stain_jitter == 0.5
    widget._remember()
    again = CiNuSegWidget(widget.viewer, storage=widget.storage, settings=widget.settings)
    assert (
        again.train_section.iterations.value() == 123
        and again.device_name() == "cpu"
        and not again.train_section.preview.isChecked()
    )
    assert (
        again.train_section.advanced.isChecked()
        and again.train_section.hyper["stain_jitter"].value == 0.5
        and again.train_section.hyper["tau"].value == 0.6
    )
    assert again.model is not None and again.model.id == widget.model.id


def test_bad_layers_and_annotations_are_messages_and_lose_nothing(widget, prior_file, qtbot):
    from napari_cinuseg.io.images import ImageNotice

    viewer = widget.viewer
    widget.class_section.name.setText("Neutrophil")
    viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="stack")
    widget.class_section.image.setCurrentText("stack")
    assert widget.add_annotation_layer() is None
    assert "a 2-D RGB image is needed" in widget.status.text()
    viewer.add_image(np.asarray(viewer.layers["he"].data)[..., 1], name="grey")
    widget.class_section.image.setCurrentText("grey")
    with pytest.warns(ImageNotice, match="grey image repeated"):
        layer = widget.add_annotation_layer()
    assert layer is not None and layer.data.shape == (320, 320)

    widget.load_model(prior_file)
    widget.class_section.name.setText("background")  # channel 0 of every model: no class's name
    assert widget.add_annotation_layer() is None
    assert "'background' is channel 0" in widget.status.text()

    widget.class_section.name.setText("Neutrophil")
    layer.data[10:20, 10:20] = 3  # a label the annotation does not use
    layer.refresh()
    painted = np.array(layer.data)
    assert widget.start_training() is None
    assert "uses label(s) [3]" in widget.status.text()
    np.testing.assert_array_equal(layer.data, painted)  # the annotation is kept as painted


def test_base_model_from_annotations_without_a_prior(widget, qtbot, tmp_path):
    """No model chosen: training makes a new base model of the painted class, saved and current."""
    assert widget.model is None
    widget.class_section.name.setText("Tumour")
    layer = widget.add_annotation_layer()
    layer.data[40:70, 40:70] = 1
    layer.data[200:240, 150:190] = 2
    layer.refresh()
    widget.train_section.iterations.setValue(2)
    widget.train_section.crop.setValue(64)
    with qtbot.waitSignal(widget.start_training().finished, timeout=120_000):
        pass
    assert widget.model is None and widget.candidate.model.class_names == ["Tumour"]
    assert (
        "painted Tumour nuclei" in widget.train_section.review.summary.text()
        and widget.train_section.forgetting.text() == ""
    )
    widget.keep_step()
    qtbot.waitUntil(lambda: widget.segment_section.segment_btn.isEnabled(), timeout=120_000)  # its segmentation
    assert widget.model.class_names == ["Tumour"]
    assert widget.model.steps[-1].step == 0 and widget.model.lineage == []
    (saved,) = tmp_path.glob("base+tumour-*.cinuseg.pt")
    assert widget.model.source_path == str(saved)
    widget.segment_section.tile.setValue(256)
    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
        pass
    assert list(widget.viewer.layers["he · classes"].features["name"]) == ["background", "Tumour"]


def test_slide_is_segmented_to_disk_and_shown_as_a_pyramid(widget, prior_file, qtbot, tmp_path, shared_data):
    """A slide opened lazily through the plugin's reader: the class map goes to disk tile by tile
    with a pyramid, its layers are multiscale and lazy, and the export reads it tile by tile."""
    from napari_cinuseg.inference.segmentation import segment
    from napari_cinuseg.model.file import load_model

    svs = shared_data / "slides" / "CMU-1-Small-Region.svs"
    viewer = widget.viewer
    (slide_layer,) = viewer.open(str(svs), plugin="napari-cinuseg")
    assert not isinstance(slide_layer.data, np.ndarray)
    widget.load_model(prior_file)
    widget.class_section.image.setCurrentText(slide_layer.name)
    assert widget.class_section.image.currentText() == slide_layer.name
    widget.segment_section.tile.setValue(512)
    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=300_000):
        pass
    classes = viewer.layers["CMU-1-Small-Region · classes"]
    pixels = viewer.layers["CMU-1-Small-Region · class map (pixels)"]
    for layer in (classes, pixels):
        assert layer.multiscale and [lv.shape for lv in layer.data][:3] == [(2967, 2220), (1484, 1110), (742, 555)]
        assert not any(isinstance(lv, np.ndarray) for lv in layer.data)
    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    (level0_name,) = [n for n in written if ".level" not in n and ".instances." not in n and ".objects" not in n]
    (instances_name,) = [n for n in written if n.endswith(".instances.zarr")]  # the nuclei of the slide, on disk too
    assert level0_name.startswith("cmu-1-small-region-") and level0_name.endswith(".zarr")
    objects_names = [n for n in written if ".objects" in n]  # and their class map, with its pyramid
    assert len(objects_names) == len(classes.data) and not [n for n in written if "partial" in n]
    assert len(written) == 2 * len(pixels.data) + 1
    reference = drain(segment(load_model(prior_file), svs, tile=512, overlap=64))
    np.testing.assert_array_equal(np.asarray(pixels.data[0][:]), reference)
    np.testing.assert_array_equal(np.asarray(pixels.data[1][:]), reference[::2, ::2])
    # the classes: each nucleus whole in its class (the majority of its pixels)
    import zarr

    instances = np.asarray(zarr.open_array(str(tmp_path / "results" / instances_name), mode="r"))
    nuclei = classes.metadata["cinuseg_nuclei"]
    objects = np.asarray(classes.data[0][:])
    np.testing.assert_array_equal(objects, nuclei.classes[instances])
    np.testing.assert_array_equal(np.asarray(classes.data[1][:]), objects[::2, ::2])
    assert (_classes_per_object(instances, objects) == 1).all()
    epi = viewer.layers["CMU-1-Small-Region · Epithelial"]
    assert epi.multiscale and np.array_equal(np.asarray(epi.data[0]), (objects == 1).astype(np.uint8))
    assert widget.segment_section.table.rowCount() == 2
    with qtbot.waitSignal(widget.export_to(tmp_path / "slide.masks.tif").finished, timeout=120_000):
        pass
    class_map, masks, _ = read_masks(widget.last_export)
    np.testing.assert_array_equal(class_map, objects)  # what the classes layer shows
    assert list(masks) == ["Epithelial", "Spindle-shaped"]


@pytest.mark.parametrize("favoured, warned", [(0, True), (1, False)])
def test_a_segmentation_without_nuclei_says_why(widget, qtbot, favoured, warned):
    """Empty masks are explained (the model knows only images like its training data), not just shown."""
    import torch

    from napari_cinuseg import CiNuSegModel
    from napari_cinuseg.model.network import Architecture

    model = CiNuSegModel.new(["Tumour"], Architecture("resnet18", "unet", (32, 16, 16, 8)))
    with torch.no_grad():
        model.network.classifier.weight.zero_()
        model.network.classifier.bias.copy_(torch.tensor([-10.0, -10.0]))
        model.network.classifier.bias[favoured] = 10.0  # every pixel: background, or the class
    widget.model = model
    widget.segment_section.tile.setValue(256)
    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
        pass
    assert ("found no nuclei" in widget.status.text()) is warned
    assert widget.segment_section.table.rowCount() == 1


def test_a_kept_class_is_trained_further_from_more_paint(widget, prior_file, qtbot):
    """Painting a class the model has continues it: a refining step that adds no class, keeps the
    model's colour for it, and records what it refined; after Keep the kept model segments."""
    widget.load_model(prior_file)
    prior = widget.model
    _paint(widget, "epithelial")  # any case: the model's own class
    assert "The model has Epithelial: the step teaches it further" in widget.status.text()
    _train(widget, qtbot)
    candidate = widget.candidate
    assert candidate is not None and candidate.model.class_names == prior.class_names
    assert candidate.model.steps[-1].data["refined_classes"] == ["Epithelial"]
    assert candidate.model.steps[-1].new_classes == []
    widget.keep_step()
    qtbot.waitUntil(lambda: widget.segment_section.segment_btn.isEnabled(), timeout=120_000)
    assert widget.model.class_names == prior.class_names and widget.model.lineage[-1] == prior.id


def _train_saying(widget, qtbot) -> str:
    """Train a step (2 iterations, 64 px crops); returns what the panel said as it started."""
    widget.train_section.iterations.setValue(2)
    widget.train_section.crop.setValue(64)
    worker = widget.start_training()
    said = widget.status.text()
    assert worker is not None, said
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    return said


def test_a_20x_step_is_reviewed_as_segment_image_finds_it_after_keep(widget, qtbot):
    """The fixture's image is CMU-1 at 0.499 µm/px, the bundled model 0.25: the step trains and
    is reviewed at the model's pixel size, so the review's count of painted nuclei called the new
    class is what Segment image finds after Keep."""
    prior = widget.load_model(BUNDLED_MODEL)
    assert prior.pixel_size == 0.25
    image = np.asarray(widget.viewer.layers["he"].data)
    # 20 nuclei (dark in hematoxylin, 20-150 px) painted as the new class, and background between them
    haematoxylin = rgb2hed(image)[..., 0]
    found = label(haematoxylin > np.percentile(haematoxylin, 90))
    big = [r for r in regionprops(found) if 20 <= r.area <= 150][:20]
    assert len(big) == 20
    paint = np.zeros(image.shape[:2], np.uint8)
    paint[(found == 0) & (np.arange(320) % 9 == 0)] = 2
    paint[:2, :2] = paint[-2:, -2:] = 2  # the painted box is the whole image, as Segment image sees it
    for r in big:
        paint[found == r.label] = 1
    widget.class_section.name.setText("Lymphocyte")
    layer = widget.add_annotation_layer()
    layer.data[:] = paint
    layer.refresh()
    widget.train_section.device_choice.setCurrentIndex(1)  # cpu

    assert widget.image_pixel_size() is None  # unknown: the model's is assumed, and said
    assert "pixel size is unknown, so the model's (0.25 µm/px) is assumed" in _train_saying(widget, qtbot)
    widget.class_section.pixel_size.setValue(0.499)  # the same paint at another pixel size: another step
    assert "It trains and is reviewed at the model's 0.25 µm/px" in _train_saying(widget, qtbot)
    review = widget.candidate.review
    assert review.painted == 20 and widget.crop_scale == pytest.approx(0.499 / 0.25)

    widget.keep_step()  # and Segment image with the kept model
    qtbot.waitUntil(lambda: widget.segment_section.segment_btn.isEnabled(), timeout=120_000)
    classes = np.asarray(widget.viewer.layers["he · class map (pixels)"].data)
    painted = label(paint == 1)
    calls = [np.bincount(classes[painted == i], minlength=4).argmax() for i in range(1, painted.max() + 1)]
    assert np.bincount(calls, minlength=4).tolist() == [
        review.called_background,
        review.called_old["Epithelial"],
        review.called_old["Spindle-shaped"],
        review.called,
    ]


def _classes_per_object(labels, class_map) -> np.ndarray:
    """How many classes (not background) each object of the instance map ``labels`` holds in
    ``class_map``."""
    labels, class_map = np.asarray(labels).astype(np.int64), np.asarray(class_map).astype(np.int64)
    k = int(class_map.max()) + 1
    votes = np.bincount(labels.ravel() * k + class_map.ravel(), minlength=(labels.max() + 1) * k).reshape(-1, k)
    present = votes.sum(1) > 0
    present[0] = False
    return (votes[present, 1:] > 0).sum(1)


def test_segment_image_shows_one_class_per_nucleus_and_the_table_in_sight(widget, qtbot):
    """Segment image on a crop of the plugin's sample (20x, resampled for the bundled 40x model):
    the class layers show each nucleus in its one class, the counts per nucleus; the class map of
    pixels (where some nuclei hold two classes) stays as a hidden layer, the nuclei layer (a
    colour per nucleus) is hidden; the table is scrolled into sight, its class names whole. A
    change of image clears the segmentation's message."""
    from napari_cinuseg.model.file import BUNDLED_MODEL
    from napari_cinuseg.plugin.sample_data import sample_he

    viewer = widget.viewer
    ((image, attributes),) = sample_he()
    viewer.add_image(image[0:384, 384:768], name="sample", rgb=True, metadata=attributes["metadata"])
    widget.class_section.image.setCurrentText("sample")
    assert widget.class_section.pixel_size.value() == pytest.approx(0.499)
    model = widget.load_model(BUNDLED_MODEL)
    widget.segment_section.tile.setValue(512)
    widget.scroll.verticalScrollBar().setValue(0)
    with qtbot.waitSignal(widget.start_segmentation().finished, timeout=120_000):
        pass
    classes = viewer.layers["sample · classes"]
    pixels = viewer.layers["sample · class map (pixels)"]
    objects = viewer.layers["sample · nuclei"]
    assert classes.visible and not pixels.visible and not objects.visible
    labels = np.asarray(objects.data)
    assert labels.max() > 20
    assert (_classes_per_object(labels, pixels.data) > 1).any()  # the pixels: some nuclei are two classes
    assert (_classes_per_object(labels, classes.data) == 1).all()  # the classes: one each
    assert not np.asarray(classes.data)[labels == 0].any()  # and nothing outside a nucleus
    table = widget.segment_section.table
    for i, name in enumerate(model.class_names, start=1):
        mask = np.asarray(viewer.layers[f"sample · {name}"].data)
        np.testing.assert_array_equal(mask, np.asarray(classes.data) == i)
        row = next(r for r in range(table.rowCount()) if table.item(r, 0).text() == name)
        assert int(table.item(row, 1).text()) == len(np.unique(labels[mask > 0]))  # nuclei, not fragments
    assert viewer.layers.index(pixels) < viewer.layers.index(classes)  # the export's layer is the classes
    # the table in sight, its class names whole
    qtbot.wait(50)
    top = table.mapTo(widget.scroll.widget(), table.rect().topLeft()).y()
    bar = widget.scroll.verticalScrollBar().value()
    assert bar <= top and top + table.height() <= bar + widget.scroll.viewport().height()
    width = table.fontMetrics().horizontalAdvance("Spindle-shaped")
    assert table.columnWidth(0) > width
    # a layer added keeps the message; another image chosen clears it
    assert widget.status.text().startswith("Segmented in")
    viewer.add_image(image[:64, :64], name="other", rgb=True)
    assert widget.status.text().startswith("Segmented in")
    widget.class_section.image.setCurrentText("other")
    assert widget.status.text() == ""


def test_the_loss_plot_follows_napari_theme(widget):
    from matplotlib.colors import same_color
    from napari.utils.theme import get_theme

    plot = widget.train_section.plot
    assert widget.viewer.theme == "dark"  # napari's default: no white box on it
    assert same_color(plot.figure.get_facecolor(), get_theme("dark").background.as_hex())
    widget.viewer.theme = "light"
    light = get_theme("light")
    assert same_color(plot.figure.get_facecolor(), light.background.as_hex())
    assert same_color(plot.ax.get_facecolor(), light.background.as_hex())
    assert same_color(plot.ax.xaxis.label.get_color(), light.text.as_hex())


def test_the_paint_the_new_class_and_the_models_classes_differ_in_colour(widget):
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_cinuseg.model.file import BUNDLED_MODEL

    widget.class_section.colour.setText("#e6194b")  # the bundled model's Epithelial
    model = widget.load_model(BUNDLED_MODEL)
    used = [c.colour for c in model.classes]
    offered = widget.class_section.colour.text()
    assert offered not in used  # the field offers a colour no class of the model has
    widget.class_section.name.setText("Lymphocyte")
    layer = widget.add_annotation_layer()
    assert layer.metadata["cinuseg_annotation"]["colour"] == offered
    paint = transform_color(layer.colormap.map(1))[0]
    for colour in [offered, *used]:  # the paint is none of the colours a step result shows
        assert not np.allclose(paint[:3], transform_color(colour)[0][:3])
    widget.class_section.colour.setText("#123456")  # a colour the user chose stays
    widget.load_model(BUNDLED_MODEL)
    assert widget.class_section.colour.text() == "#123456"


def test_a_step_result_waiting_is_shown_on_its_image_only(widget, prior_file, qtbot):
    """While a step's result waits for Keep or Discard, choosing another image hides its layer
    (it lies over the other image's pixels on the canvas) and choosing its image shows it again;
    the message of the last job goes."""
    viewer = widget.viewer
    widget.load_model(prior_file)
    _paint(widget)
    _train(widget, qtbot)
    result = viewer.layers["he · step result"]
    assert result.visible and widget.status.text()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="other", rgb=True)
    widget.class_section.image.setCurrentText("other")
    assert result in viewer.layers and not result.visible and widget.status.text() == ""
    widget.class_section.image.setCurrentText("he")
    assert result.visible
    widget.discard_step()
    assert "last training crops (ATT)" not in viewer.layers


def test_a_nucleus_the_model_calls_wrongly_is_painted_with_its_class_by_name(widget, prior_file, qtbot):
    """The Paint choices name every label: the new class, background, and the model's classes
    (corrections); choosing one sets the brush, the brush's label shows in the choice, and a step
    trains the new class and the corrected class together."""
    widget.load_model(prior_file)
    layer = _paint(widget, "Neutrophil")
    paint = widget.class_section.paint
    names = [paint.itemText(i) for i in range(paint.count())]
    assert names == [
        "Neutrophil [1]",
        "background [2]",
        "Epithelial (correction) [3]",
        "Spindle-shaped (correction) [4]",
    ]
    assert list(layer.features["paint"]) == ["unpainted", "Neutrophil", "background", *[n[:-4] for n in names[2:]]]
    paint.setCurrentIndex(3)
    assert layer.selected_label == 4  # the brush paints Spindle-shaped
    layer.selected_label = 2
    assert paint.currentText() == "background [2]"  # and the choice follows the brush
    layer.data[150:170, 250:270] = 4  # a nucleus the model calls otherwise, painted Spindle-shaped
    layer.refresh()
    _train(widget, qtbot)
    step = widget.candidate.model.steps[-1]
    assert widget.candidate.model.class_names == ["Epithelial", "Spindle-shaped", "Neutrophil"]
    assert step.new_classes == ["Neutrophil"] and step.data["refined_classes"] == ["Spindle-shaped"]
