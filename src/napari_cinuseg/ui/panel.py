"""The CiNuSeg panel: choose a model, paint a new class, train a step, segment, export.

It only gathers inputs (sections.py), starts the engine's jobs in napari workers (workers.py)
and turns their events and results into widgets and layers. What it decides — where models and
results go, base step or incremental, in memory or on disk, what follows a segmentation — is the
engine's (``workflows.py``), shared with the ``cinuseg`` command.
"""

from __future__ import annotations

import threading
from pathlib import Path

import skimage.morphology  # noqa: F401 - loaded with the panel, not at the first Train click:
# skimage's label() imports it (and scipy.spatial) on first use, 176 ms in the viewer's thread
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QFileDialog, QVBoxLayout

from ..annotations import sparse_annotation_advice
from ..datasets.labelled import check_pairs
from ..runtime.events import Cancelled, ExportProgress, IterationSkipped, MemoryReduced, StepFinished
from ..plugin.layer_metadata import RESULT_KEY, layer_pixel_size
from ..model.segmenter import CiNuSegModel, check_class_name, check_colour
from ..model.file import BUNDLED_MODEL, ModelFileError, load_model
from ..inference.segmentation import SegmentFinished, TileProgress
from ..workflows import Storage, export_with_table, learn_class, needs_disk, no_nuclei_advice, segment_and_measure, slug
from . import layers, memory
from .sections import ModelSection, NewClassSection, SegmentSection, TrainSection
from .workers import JobHost


def _user_settings() -> QSettings:
    return QSettings("napari-cinuseg", "CiNuSeg")


class CiNuSegWidget(JobHost):
    """``storage``: where new models and on-disk results go (default ``~/.napari-cinuseg``);
    ``settings``: where the panel remembers its fields (default: the user's Qt settings)."""

    def __init__(self, napari_viewer, storage: Storage | None = None, settings: QSettings | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.storage = storage or Storage()
        self.settings = settings if settings is not None else _user_settings()
        self.model: CiNuSegModel | None = None
        self.last_crops: list = []  # (image layer name, y0, x0) per training pair
        self.new_model_path: Path | None = None
        self.last_export: Path | None = None
        self._build()
        self._restore()

    # --- layout: four sections; their fields are the panel's public parts --------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.model_section, self.class_section = ModelSection(), NewClassSection()
        self.train_section, self.segment_section = TrainSection(), SegmentSection()
        for section in (self.model_section, self.class_section, self.train_section, self.segment_section):
            root.addWidget(section)
        root.addStretch(1)
        m, c, t, s = self.model_section, self.class_section, self.train_section, self.segment_section
        self.open_model_btn, self.bundled_btn, self.model_label = m.open_btn, m.bundled_btn, m.label
        self.class_name, self.colour, self.image_combo = c.name, c.colour, c.image
        self.pixel_size, self.pixel_size_note, self.annotate_btn, self.exhaustive = c.pixel_size, c.pixel_size_note, c.annotate_btn, c.exhaustive
        self.preset_combo, self.iterations, self.crop, self.advanced, self.hyper = t.preset, t.iterations, t.crop, t.advanced, t.hyper
        self.train_btn, self.cancel_btn, self.progress, self.status, self.plot = t.train_btn, t.cancel_btn, t.progress, t.status, t.plot
        self.device_label, self.att_label, self.forgetting_label = t.device, t.att, t.forgetting
        self.tile, self.segment_btn, self.export_btn, self.table = s.tile, s.segment_btn, s.export_btn, s.table

        m.open_btn.clicked.connect(self._choose_model_file)
        m.bundled_btn.clicked.connect(lambda: self.load_model(BUNDLED_MODEL))
        c.annotate_btn.clicked.connect(self.add_annotation_layer)
        t.train_btn.clicked.connect(self.start_training)
        t.cancel_btn.clicked.connect(self.cancel)
        s.segment_btn.clicked.connect(self.start_segmentation)
        s.export_btn.clicked.connect(self._choose_export_file)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda *_: c.refresh_images(self.viewer))
        c.image.currentTextChanged.connect(lambda *_: c.image_chosen(self.viewer))
        c.refresh_images(self.viewer)
        c.image_chosen(self.viewer)

    # --- fields remembered between sessions (memory.py) ------------------------------------
    def _restore(self) -> None:
        last = memory.restore(self.settings, self.train_section, self.segment_section)
        if last and Path(str(last)).is_file():
            try:
                self.load_model(last)
            except ModelFileError:
                pass

    def _remember(self) -> None:
        memory.remember(self.settings, self.train_section, self.segment_section, self.model)

    # --- helpers --------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        if error:
            from napari.utils.notifications import show_error

            show_error(text)

    def image_pixel_size(self) -> float | None:
        return float(self.pixel_size.value()) or None

    def _choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CiNuSeg model", str(self.storage.models), "CiNuSeg models (*.cinuseg.pt *.pt)")
        if path:
            try:
                self.load_model(path)
            except ModelFileError as exc:
                self._say(str(exc), error=True)

    def _set_busy(self, busy: bool) -> None:
        for w in (self.train_btn, self.segment_btn, self.open_model_btn, self.annotate_btn, self.export_btn):
            w.setEnabled(not busy)
        self.bundled_btn.setEnabled(not busy and BUNDLED_MODEL.is_file())
        self.cancel_btn.setEnabled(busy)

    # --- 1. model -------------------------------------------------------------------------
    def load_model(self, path) -> CiNuSegModel:
        self.model = load_model(path)
        self.model_section.show_model(self.model)
        self._remember()
        return self.model

    # --- 2. annotation --------------------------------------------------------------------
    def _new_class(self) -> tuple[str, str]:
        known = self.model.class_names if self.model else []
        return check_class_name(self.class_name.text(), known), check_colour(self.colour.text())

    def add_annotation_layer(self):
        try:
            name, colour = self._new_class()
            image = self.class_section.image_layer(self.viewer)
            layer = layers.add_annotation_layer(self.viewer, image, name, colour, self.exhaustive.isChecked())
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        self._say(f"Paint {name} with label 1 and background with label 2; unpainted pixels teach nothing.")
        return layer

    def training_pairs(self, class_name: str) -> list:
        """Every annotation layer of this class, as engine training pairs (headless: annotations)."""
        pairs, self.last_crops = layers.annotation_pairs(self.viewer, class_name, self.exhaustive.isChecked())
        return pairs

    # --- 3. training ----------------------------------------------------------------------
    def current_settings(self):
        return self.train_section.settings()

    def start_training(self):
        try:
            name, colour = self._new_class()
            pairs = self.training_pairs(name)
            check_pairs(pairs, 1)
            settings = self.current_settings()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        prior = self.model
        out = self.storage.new_model_path(prior, name)
        self.cancel_event = cancel = threading.Event()
        px = self.image_pixel_size()

        def run():  # in the worker thread: even copying the prior would stall the viewer
            return (yield from learn_class(prior, pairs, name, colour, settings, out=out, cancel=cancel, pixel_size=px))

        self.train_section.reset_results()
        self._remember()
        advice = sparse_annotation_advice(pairs)
        self._say(f"Training {name} on {len(pairs)} image(s)…" + (f" Note: {advice}." if advice else ""))
        if advice:
            from napari.utils.notifications import show_warning

            show_warning(f"Training goes on, but {advice}.")
        return self._start_job(run, self._on_training_event, self._on_trained)

    def cancel(self) -> None:
        self.cancel_event.set()
        self._say("Cancelling after the current iteration…")

    def _on_training_event(self, ev) -> None:
        if isinstance(ev, (Cancelled, MemoryReduced, IterationSkipped)):
            self._say(ev.message)
        elif isinstance(ev, StepFinished):
            self.new_model_path = Path(ev.path) if ev.path else None
        else:
            self.train_section.on_event(ev)

    def _on_trained(self, model) -> None:
        if model is None:
            return
        self.model = model
        if self.new_model_path is not None:
            model.source_path = str(self.new_model_path)
        self.model_section.show_model(model)
        self._remember()
        self._add_att_layer()
        self._say(f"Saved {self.new_model_path}; it is now the current model.")
        self.train_section.show_forgetting(model.steps[-1].results.get("forgetting") if model.steps else None)

    def _add_att_layer(self) -> None:
        layers.add_att_layer(self.viewer, list(self.train_section.crops), self.last_crops)

    # --- 4. segmentation ------------------------------------------------------------------
    def start_segmentation(self):
        try:
            if self.model is None:
                raise ValueError("choose or train a model first")
            image = self.class_section.image_layer(self.viewer)
            pixels = layers.level0(image)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        self.cancel_event = cancel = threading.Event()
        model, px, tile = self.model, self.image_pixel_size(), self.tile.value()
        # A slide (a lazy layer) or a large image: the class map goes to disk tile by tile, with a
        # pyramid, and is shown lazily; a small image's stays in memory.
        out = self.storage.result_path(image.name, model) if needs_disk(pixels) else None

        def run():
            return (yield from segment_and_measure(
                model, pixels, tile=tile, overlap=min(64, tile // 4), image_pixel_size=px, out=out, cancel=cancel,
            ))

        self._remember()
        self._say(f"Segmenting {image.name}…" + (f" (masks written to {out})" if out else ""))
        return self._start_job(run, self._on_segment_event, lambda result: self.show_result(image.name, result, model))

    def _on_segment_event(self, ev) -> None:
        if isinstance(ev, (TileProgress, ExportProgress)):
            self.progress.setRange(0, ev.total)  # a total of 0: busy, with no count (measuring nuclei)
            self.progress.setValue(ev.done)
        elif isinstance(ev, (Cancelled, MemoryReduced)):
            self._say(ev.message)
        elif isinstance(ev, SegmentFinished):
            self._say(f"Segmented in {ev.seconds:.1f} s ({ev.tiles} tiles, {ev.skipped} without tissue skipped)")

    def show_result(self, image_name: str, result, model=None) -> None:
        """The class map as layers (layers.add_result_layers) and the table of nucleus counts and
        areas; says why when no nucleus was found. ``result`` = (class map, statistics rows)."""
        if result is None:
            return
        class_map, rows = result
        layers.add_result_layers(self.viewer, image_name, class_map, model or self.model, self.image_pixel_size())
        self.segment_section.show_statistics(rows)
        if rows and not any(row["nuclei"] for row in rows):  # say why, rather than show empty layers
            from napari.utils.notifications import show_warning

            self._say(no_nuclei_advice(image_name))
            show_warning(self.status.text())

    # --- export ---------------------------------------------------------------------------
    def _choose_export_file(self) -> None:
        try:
            layer = layers.result_layer(self.viewer)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export masks", f"{slug(layer.name)}.masks.tif", "TIFF (*.tif *.tiff)")
        if path:
            self.export_to(path, layer)

    def export_to(self, path, layer=None):
        """Export the result layer to ``path`` (pyramidal OME-TIFF) and its per-nucleus CSV, in a
        worker with progress; returns the worker (None if refused). ``self.last_export`` is the
        masks file once it is written."""
        try:
            layer = layer or layers.result_layer(self.viewer)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        info = layer.metadata[RESULT_KEY]
        data = layer.data[0] if layer.multiscale else layer.data  # zarr level 0: written tile by tile
        px, path = layer_pixel_size(layer.metadata), Path(path)
        self.last_export = None

        def run():
            return (yield from export_with_table(
                data, path, info["class_names"], info["colours"], info["model_id"], pixel_size=px, overwrite=True, measure_in_process=True
            ))

        def done(result) -> None:
            self.last_export = result[0]
            self._say(f"Exported {result[0]} and the per-nucleus table {result[1].name}")

        self._say(f"Exporting {path.name}…")
        return self._start_job(run, self._on_segment_event, done)
