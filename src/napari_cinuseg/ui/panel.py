"""The CiNuSeg panel: choose a model, paint a new class, train a step, segment, export.

It only gathers inputs (sections.py), starts the engine's jobs in napari workers (workers.py)
and turns their events and results into widgets and layers. What it decides — where models and
results go, base step or incremental, in memory or on disk, what Keep and Discard do to a step's
files, what follows a segmentation — is the session's (:mod:`napari_cinuseg.session`), shared
with the ``cinuseg`` command and driven headless by the tests.
"""

from __future__ import annotations

import threading
from pathlib import Path

import skimage.morphology  # noqa: F401 - loaded with the panel, not at the first Train click:

# skimage's label() imports it (and scipy.spatial) on first use, 176 ms in the viewer's thread
from napari.utils import notifications
from napari.utils.theme import get_theme
from qtpy.QtCore import QSettings, Qt, QTimer
from qtpy.QtWidgets import QFileDialog, QFrame, QScrollArea, QVBoxLayout, QWidget

from ..annotations import sparse_annotation_advice
from ..datasets.labelled import check_pairs
from ..io.pixel_size import resampling_factor
from ..model.file import BUNDLED_MODEL, ModelFileError, load_model
from ..model.segmenter import CiNuSegModel
from ..runtime.events import (
    Cancelled,
    IterationSkipped,
    MemoryReduced,
    Preview,
    StepFinished,
)
from ..session.candidate import StepCandidate, training_fingerprint
from ..session.learning import learn_class
from ..session.preview import with_preview
from ..session.review import review_step
from ..session.storage import Storage
from . import layers, memory
from .annotating import AnnotationsHost
from .clicking import ClickingHost
from .sections import ModelSection, NewClassSection, SegmentSection
from .segmenting import SegmentingHost
from .train_section import TrainSection
from .widgets import PANEL_WIDTH, wrapped_label
from .workers import JobHost


def user_settings() -> QSettings:
    """Where the panel remembers its fields between sessions: the user's Qt settings."""
    return QSettings("napari-cinuseg", "CiNuSeg")


def last_model(settings: QSettings) -> CiNuSegModel | None:
    """The model the panel used last (remembered in ``settings``), if its file still opens."""
    last = str(settings.value("model_path", "") or "")
    if last and Path(last).is_file():
        try:
            return load_model(last)
        except ModelFileError:
            pass
    return None


class CiNuSegWidget(JobHost, AnnotationsHost, SegmentingHost, ClickingHost):
    """``storage``: where new models and on-disk results go (default ``~/.napari-cinuseg``);
    ``settings``: where the panel remembers its fields (default: the user's Qt settings);
    ``model``: the current model, already loaded (else the last one used is loaded here).
    napari docks it through :class:`~napari_cinuseg.ui.opening.CiNuSegDock`, which loads PyTorch,
    the engine and the last model in a worker first, then makes the panel in parts (``in_parts``:
    the caller goes through :attr:`parts`, each ``next`` making one part; made here otherwise)."""

    def __init__(
        self,
        napari_viewer,
        storage: Storage | None = None,
        settings: QSettings | None = None,
        model: CiNuSegModel | None = None,
        parent: QWidget | None = None,
        in_parts: bool = False,
    ):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.storage = storage or Storage()
        self.settings = settings if settings is not None else user_settings()
        self.model: CiNuSegModel | None = None
        self.last_crops: list = []  # (image layer name, y0, x0) per training pair
        self.crop_scale = 1.0  # the last step's model pixels per image pixel (its crops' scale)
        self.candidate: StepCandidate | None = None  # a step's result awaiting Keep or Discard
        self.last_export: Path | None = None
        self.parts = self._parts(model)
        if not in_parts:
            for _ in self.parts:
                pass

    # --- layout: four sections; their fields are the panel's public parts --------------------
    def _parts(self, model: CiNuSegModel | None):
        """The four sections in a scroll area of a fixed width, the messages below it, wrapped;
        last, what the sections are connected to and the fields remembered: nothing is connected
        to the viewer before every section is there."""
        self.setFixedWidth(PANEL_WIDTH)
        root = QVBoxLayout(self)
        root.setContentsMargins(2, 2, 2, 2)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QWidget()
        column = QVBoxLayout(inner)
        column.setContentsMargins(0, 0, 4, 0)
        column.addStretch(1)
        scroll.setWidget(inner)
        self.scroll = scroll
        root.addWidget(scroll, 1)
        self.status = wrapped_label()  # the panel's messages, always in sight
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setStyleSheet("QLabel { padding: 4px; border-top: 1px solid palette(mid); }")
        root.addWidget(self.status)
        self.model_section = ModelSection()
        column.insertWidget(0, self.model_section)
        yield
        self.class_section = NewClassSection()
        column.insertWidget(1, self.class_section)
        yield
        self.train_section = TrainSection(in_parts=True)
        column.insertWidget(2, self.train_section)
        yield from self.train_section.parts
        self.segment_section = SegmentSection()
        column.insertWidget(3, self.segment_section)
        yield
        self._connect()
        self._init_clicks()
        self._restore(model)
        yield

    def _connect(self) -> None:
        m, c, t, s = self.model_section, self.class_section, self.train_section, self.segment_section
        m.open_btn.clicked.connect(self._choose_model_file)
        m.bundled_btn.clicked.connect(lambda: self.load_model(BUNDLED_MODEL))
        c.annotate_btn.clicked.connect(self.add_annotation_layer)
        c.open_annotation_btn.clicked.connect(self._choose_annotation_file)
        c.save_annotation_btn.clicked.connect(self.save_annotations)
        t.train_btn.clicked.connect(self.start_training)
        t.cancel_btn.clicked.connect(self.cancel)
        t.review.keep_btn.clicked.connect(self.keep_step)
        t.review.discard_btn.clicked.connect(self.discard_step)
        s.segment_btn.clicked.connect(self.start_segmentation)
        s.export_btn.clicked.connect(self._choose_export_file)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda *_: c.refresh_images(self.viewer))
        c.image.currentTextChanged.connect(lambda *_: c.image_chosen(self.viewer))
        c.image.currentTextChanged.connect(lambda *_: self._image_changed())
        c.refresh_images(self.viewer)
        c.image_chosen(self.viewer)
        self._follow_theme()
        self.viewer.events.theme.connect(self._follow_theme)

    def shutdown(self, wait: bool = True) -> None:
        """The running job cancelled (JobHost), and the annotation layers stop taking clicks."""
        self.stop_clicks()
        super().shutdown(wait)

    def _follow_theme(self, event=None) -> None:
        """The loss plot in the colours of napari's theme (dark by default), now and when it changes."""
        try:
            theme = get_theme(self.viewer.theme)
        except ValueError:  # a theme napari no longer has
            return
        self.train_section.plot.follow_theme(theme)

    def _image_changed(self) -> None:
        """Another image chosen: the last one's messages go. A step's result waiting for Keep or
        Discard is shown on the chosen image only (its layers on the others are hidden, and shown
        again when their image is chosen); Keep, Discard and Cancel take a step's layers away."""
        if self.worker is not None and getattr(self.worker, "is_running", False):
            return
        self._say("")
        if self.candidate is not None:
            layers.show_regions_of(self.viewer, "step result", self.class_section.image.currentText())

    # --- fields remembered between sessions (memory.py) ------------------------------------
    def _restore(self, model: CiNuSegModel | None) -> None:
        memory.restore(self.settings, self.train_section, self.segment_section)
        model = model or last_model(self.settings)
        if model is not None:
            self.model = model
            self.model_section.show_model(model)

    def _remember(self) -> None:
        memory.remember(self.settings, self.train_section, self.segment_section, model=self.model)

    # --- helpers --------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        if error:
            notifications.show_error(text)

    def image_pixel_size(self) -> float | None:
        return float(self.class_section.pixel_size.value()) or None

    def _choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a CiNuSeg model", str(self.storage.models), "CiNuSeg models (*.cinuseg.pt *.pt)"
        )
        if path:
            try:
                self.load_model(path)
            except ModelFileError as exc:
                self._say(str(exc), error=True)

    def _set_busy(self, busy: bool) -> None:
        for w in (
            self.train_section.train_btn,
            self.segment_section.segment_btn,
            self.model_section.open_btn,
            self.class_section.annotate_btn,
            self.segment_section.export_btn,
            self.train_section.review.keep_btn,
            self.train_section.review.discard_btn,
            self.train_section.device_choice,
            self.class_section.open_annotation_btn,
        ):
            w.setEnabled(not busy)
        self.model_section.bundled_btn.setEnabled(not busy and BUNDLED_MODEL.is_file())
        self.train_section.cancel_btn.setEnabled(busy)

    # --- 1. model -------------------------------------------------------------------------
    def load_model(self, path) -> CiNuSegModel:
        self.model = load_model(path)
        self.model_section.show_model(self.model)
        self.class_section.offer_colour(self.model)
        self._remember()
        return self.model

    # --- 3. training ----------------------------------------------------------------------
    def current_settings(self):
        return self.train_section.settings()

    def device_name(self) -> str:
        """The chosen device (auto, cpu, cuda:i or mps), for the step and the segmentation."""
        return self.train_section.device_name()

    def start_training(self):
        """One step from the current model (a base step without one) on the current paint. A
        step's result waiting to be kept is replaced when this one finishes (train again)."""
        try:
            name, colour = self._new_class()
            pairs, corrections = self.training_pairs(name)
            check_pairs(pairs, 1 + len(corrections))
            settings = self.current_settings()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        prior, px = self.model, self.image_pixel_size()
        fingerprint = training_fingerprint(prior, pairs, "|".join([name, *corrections]), settings, px)
        if self.candidate is not None and self.candidate.same_training(fingerprint):
            self._say(
                "The paint, the class, the pixel size and the settings are those of the step result waiting to "
                f"be kept: training again would give the same {name} model. Keep or Discard it, or paint more first."
            )
            return None
        out = self.storage.candidate_path(prior, name)
        self.cancel_event = cancel = threading.Event()
        device, preview = self.device_name(), self.train_section.preview.isChecked()
        tile = self.segment_section.tile.value()  # the review segments as Segment image does
        colours = ([c.colour for c in prior.classes] if prior is not None else []) + [colour]
        origins = list(self.last_crops)
        self.crop_scale = resampling_factor(prior.pixel_size, px) if prior is not None else 1.0

        def run():  # in the worker thread: even copying the prior would stall the viewer
            job = learn_class(
                prior, pairs, name, colour, settings, out=out, cancel=cancel, pixel_size=px, corrections=corrections
            )
            model = yield from (with_preview(job, pairs, image_pixel_size=px) if preview else job)
            if model is None:
                return None
            review = yield from review_step(prior, model, pairs, name, device=device, tile=tile, image_pixel_size=px)
            saved = out if out.is_file() else None
            return StepCandidate(model, saved, name, prior, review, origins, fingerprint)

        def on_event(ev):
            if isinstance(ev, Preview):
                self._show_regions(
                    ev.maps,
                    [(o[0], o[1] + off[0], o[2] + off[1]) for o, off in zip(origins, ev.offsets)],
                    colours,
                    "step result",
                    layers.PREVIEW_TITLE,
                )
            else:
                self._on_training_event(ev)

        self.train_section.reset_results()
        if preview:  # its layer exists before the first preview, hidden (made with the annotation
            # layer: a new napari layer costs the viewer's thread 100-300 ms, an update one frame)
            for image in dict.fromkeys(o[0] for o in origins):
                if image in self.viewer.layers:
                    layers.reserve_region(self.viewer, image, "step result", layers.PREVIEW_TITLE)
        self._remember()
        advice = sparse_annotation_advice(pairs)
        again = " It replaces the step result waiting to be kept." if self.candidate is not None else ""
        self._say(
            f"Training {name} on {len(pairs)} image(s)…{again}{self._scale_sentence(prior, px)}"
            + (f" Note: {advice}." if advice else "")
        )
        if advice:
            notifications.show_warning(f"Training goes on, but {advice}.")
        return self._start_job(run, on_event, self._on_trained)

    @staticmethod
    def _scale_sentence(prior, px: float | None) -> str:
        """At which pixel size a step trains and is reviewed, where the image's is unknown or
        differs from the prior's: the same as Segment image's."""
        if prior is None or not prior.pixel_size:
            return ""
        if not px:
            return (
                f" The image's pixel size is unknown, so the model's ({prior.pixel_size:g} µm/px) is assumed: "
                "set Pixel size if the image is at another magnification (0.5 at 20×)."
            )
        if resampling_factor(prior.pixel_size, px) != 1.0:
            return f" It trains and is reviewed at the model's {prior.pixel_size:g} µm/px (the image's resampled)."
        return ""

    def cancel(self) -> None:
        self.cancel_event.set()
        self._say("Cancelling after the current iteration…")

    def _show_regions(self, maps, origins, colours, kind: str, title: str) -> None:
        for class_map, (image, y0, x0) in zip(maps, origins):
            if image in self.viewer.layers:
                layers.show_region(self.viewer, image, kind, class_map, (y0, x0), colours, title)

    def _on_training_event(self, ev) -> None:
        if isinstance(ev, (Cancelled, MemoryReduced, IterationSkipped)):
            self._say(ev.message)
            if isinstance(ev, Cancelled):  # the plot and the preview were of a run that is gone
                self.train_section.reset_results()
                if self.candidate is None:
                    layers.clear_regions(self.viewer, "step result", layers.PREVIEW_TITLE)
                else:  # the result still waiting to be kept, shown again
                    self._show_candidate()
        elif not isinstance(ev, StepFinished):
            self.train_section.on_event(ev)

    def _colours(self, model) -> list[str]:
        return [c.colour for c in model.classes]

    def _show_candidate(self) -> None:
        c = self.candidate
        at = [(o[0], o[1] + off[0], o[2] + off[1]) for o, off in zip(c.origins, c.review.offsets)]
        self._show_regions(c.review.maps, at, self._colours(c.model), "step result", "step result")

    def _on_trained(self, candidate: StepCandidate | None) -> None:
        """The step's result, shown on the painted regions, waiting for Keep or Discard; it
        replaces the result waiting before it (train again)."""
        if candidate is None:
            return
        self.candidate = candidate.replaces(self.candidate)
        self._show_candidate()
        self._add_att_layer()
        review = candidate.review
        self.train_section.review.show_review(review, candidate.path.name if candidate.path else "not saved")
        if review.worrying():
            notifications.show_warning(
                "Look before you keep this step: "
                + " ".join([review.new_class_sentence(), *review.old_class_sentences()])
            )
        prior = candidate.prior
        current = Path(prior.source_path).name if prior is not None and prior.source_path else "no model"
        self._say(
            "The step is done. Look at the step result over the painted regions, then Keep it or Discard it; "
            f"until then {current} stays current."
        )
        QTimer.singleShot(0, lambda: self.scroll.ensureWidgetVisible(self.train_section.review))

    def keep_step(self) -> Path | None:
        """The step's result becomes current (the session moves its file into the models
        folder), and the annotations that taught it are saved beside it; its result and
        training-crop layers go."""
        candidate = self.candidate
        if candidate is None:
            return None
        try:
            model = candidate.keep(self.storage)
        except OSError as exc:
            self._say(f"the model could not be kept: {exc}", error=True)
            return None
        self.model, self.candidate = model, None
        self.model_section.show_model(model)
        self.class_section.offer_colour(model)
        self._remember()
        self.train_section.review.clear()
        # the kept step's result and training crops have done their part: the model is current
        layers.remove_panel_layers(self.viewer, kind="step result")
        layers.remove_panel_layers(self.viewer, kind="att")
        path = candidate.path
        saved = self.save_annotations(path, candidate.class_name) if path is not None else []
        also = f" and its annotation {', '.join(p.name for p in saved)}" if saved else ""
        kept = f"Kept: saved {path}{also}; it is now the current model."
        try:
            image = self.class_section.image_layer(self.viewer)
        except ValueError:  # no image to segment: nothing more to do
            self._say(kept)
            return path
        self.start_segmentation()  # what the kept model finds, in place of the prior's (self.worker)
        self._say(f"{kept} Segmenting {image.name} with it…")
        return path

    def discard_step(self) -> None:
        """The step's result is deleted (the session deletes its file); the prior stays current."""
        if self.candidate is None:
            return
        self.candidate.discard()
        self.candidate = None
        self.train_section.review.clear()
        layers.clear_regions(self.viewer, "step result", layers.PREVIEW_TITLE)
        layers.remove_panel_layers(self.viewer, kind="att")
        current = Path(self.model.source_path).name if self.model is not None and self.model.source_path else "no model"
        self._say(f"Discarded the step's model (its file is deleted); {current} stays current.")

    def _add_att_layer(self) -> None:
        layers.add_att_layer(self.viewer, list(self.train_section.crops), self.last_crops, self.crop_scale)
