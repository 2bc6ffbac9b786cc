"""The CiNuSeg panel: choose a model, paint a new class, train a step, segment, export.

The panel only gathers inputs, starts the engine's generators in napari workers and turns their
events and results into widgets and layers. Everything it does has a headless twin:
:mod:`napari_cinuseg.annotations` (what was painted → training pairs), ``train_step`` /
``train_base``, ``segment``, ``class_statistics`` and ``export_masks`` (and ``cinuseg step``,
``cinuseg segment`` on the command line).
"""

from __future__ import annotations

import re
from collections import deque
import threading
from dataclasses import dataclass
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QSettings, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import devices
from .annotations import sparse_annotation_advice, training_pair
from .data import check_pairs
from .events import Cancelled, MemoryReduced, Progress, StepFinished, StepStarted
from .forgetting import format_report, forgetting_warnings
from .export import export_masks_job
from .images import rgb_view
from .layer_metadata import ANNOTATION_KEY, EXHAUSTIVE_KEY, RESULT_KEY, layer_pixel_size, result_metadata
from .measurements import class_statistics, nucleus_table, write_nucleus_csv
from .model import PALETTE, CiNuSegModel, check_class_name, check_colour
from .model_file import BUNDLED_MODEL, ModelFileError, load_model
from .pyramid import build_pyramid
from .segmentation import IN_MEMORY_LIMIT_PX, SegmentFinished, TileProgress, segment
from .settings import PRESETS, preset
from .training import train_base, train_step



class JobFailed(Exception):
    """A panel job's failure, said once (``_start_job``); never a RuntimeError, which superqt
    would drop without a signal."""


@dataclass(frozen=True)
class ExportProgress:
    done: int
    total: int


def describe_failure(exc: BaseException) -> str:
    """One sentence for a failed job, with advice where there is one."""
    if devices.is_out_of_memory(exc):
        return "the device ran out of memory; choose a smaller crop or tile size, or the CPU"
    text = " ".join(str(exc).split())
    return text if isinstance(exc, (ValueError, OSError, MemoryError)) and text else f"{type(exc).__name__}: {text}"


def models_dir() -> Path:
    """Where new models are saved: beside nothing the user owns, never over a prior."""
    d = Path.home() / ".napari-cinuseg" / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir() -> Path:
    """Where the class maps of slides segmented in the panel are written (zarr, with a pyramid)."""
    d = Path.home() / ".napari-cinuseg" / "results"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "class"


def _colormap(colours: dict[int, str]):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colours})


def _level0(layer):
    """The layer's full-resolution image as the engine reads it: RGB uint8 (converted, with a
    notice, or refused with a ValueError that says what to do)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return rgb_view(data, f"image layer {layer.name!r}")


class LossPlot(QWidget):
    """The loss terms of the running step, live."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=80, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.setMinimumHeight(150)
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self)  # one pending redraw at a time, dies with the widget
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._redraw)
        self.clear()

    def clear(self) -> None:
        self._timer.stop()
        self.history: dict[str, list[float]] = {}
        self.iterations: list[int] = []
        self.ax.clear()
        self.ax.set_xlabel("iteration", fontsize=8)
        self.canvas.draw_idle()

    REDRAW_MS = 500  # redraw at most twice a second: a matplotlib redraw costs tens of ms of the event loop

    def add(self, ev: Progress) -> None:
        self.iterations.append(ev.iteration)
        for k, v in {"loss": ev.loss, **ev.terms}.items():
            self.history.setdefault(k, []).append(v)
        if ev.iteration >= ev.total:
            self._redraw()  # the last point, at once
        elif not self._timer.isActive():
            self._timer.start(self.REDRAW_MS)

    def _redraw(self) -> None:
        self._timer.stop()
        self.ax.clear()
        for k, ys in self.history.items():
            self.ax.plot(self.iterations[-len(ys) :], ys, label=k, lw=1.5 if k == "loss" else 0.8)
        self.ax.legend(fontsize=6, ncol=3)
        self.ax.tick_params(labelsize=7)
        self.canvas.draw_idle()


def _user_settings() -> QSettings:
    return QSettings("napari-cinuseg", "CiNuSeg")


class CiNuSegWidget(QWidget):
    settings_factory = staticmethod(_user_settings)  # tests swap in a private settings file

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model: CiNuSegModel | None = None
        self.settings = self.settings_factory()
        self.worker = None
        self.cancel_event = threading.Event()
        self.last_crops: list = []  # (image layer name, y0, x0) per training pair
        self.new_model_path: Path | None = None
        self._crops: deque = deque(maxlen=64)
        self._att_seen = self._att_fired = 0  # crops seen in this training, and where ATT fired
        self._build()
        self._restore()

    # --- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)

        box = QGroupBox("1. Model")
        form = QVBoxLayout(box)
        row = QHBoxLayout()
        self.open_model_btn = QPushButton("Open model file…")
        self.bundled_btn = QPushButton("Bundled base model")
        self.bundled_btn.setEnabled(BUNDLED_MODEL.is_file())
        row.addWidget(self.open_model_btn)
        row.addWidget(self.bundled_btn)
        form.addLayout(row)
        self.model_label = QLabel("No model: training starts a new base model from your annotations.")
        self.model_label.setWordWrap(True)
        self.model_label.setTextFormat(Qt.RichText)
        form.addWidget(self.model_label)
        root.addWidget(box)

        box = QGroupBox("2. New class")
        form = QFormLayout(box)
        self.class_name = QLineEdit()
        self.class_name.setPlaceholderText("e.g. Neutrophil")
        form.addRow("Name", self.class_name)
        row = QHBoxLayout()
        self.colour = QLineEdit(PALETTE[3])
        self.colour_btn = QPushButton("Pick…")
        row.addWidget(self.colour)
        row.addWidget(self.colour_btn)
        form.addRow("Colour", row)
        self.image_combo = QComboBox()
        form.addRow("Image", self.image_combo)
        # µm per pixel of the chosen image: what its file says, else the user's (0 = unknown).
        # Segmentation resamples to the model's pixel size with it; areas are given in µm².
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setDecimals(4)
        self.pixel_size.setRange(0.0, 20.0)
        self.pixel_size.setSingleStep(0.05)
        self.pixel_size.setSpecialValueText("unknown")
        self.pixel_size.setSuffix(" µm/px")
        form.addRow("Pixel size", self.pixel_size)
        self.pixel_size_note = QLabel("")
        form.addRow(self.pixel_size_note)
        self.annotate_btn = QPushButton("Add annotation layer")
        form.addRow(self.annotate_btn)
        self.exhaustive = QCheckBox("My annotation is exhaustive in rectangles I draw")
        form.addRow(self.exhaustive)
        root.addWidget(box)

        box = QGroupBox("3. Train")
        form = QFormLayout(box)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(sorted(PRESETS))
        form.addRow("Preset", self.preset_combo)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 1_000_000)
        self.iterations.setValue(300)
        form.addRow("Iterations", self.iterations)
        self.crop = QSpinBox()
        self.crop.setRange(64, 1024)
        self.crop.setSingleStep(32)
        self.crop.setValue(128)
        form.addRow("Crop size", self.crop)
        self.advanced = QGroupBox("Advanced (method)")
        self.advanced.setCheckable(True)
        self.advanced.setChecked(False)
        adv = QFormLayout(self.advanced)
        self.hyper = {}
        defaults = preset("cpu")
        for name, label, hi in (
            ("alpha_o", "α_o", 100.0),
            ("alpha_n", "α_n", 10.0),
            ("tau", "τ", 0.99),
            ("omega", "ω", 10.0),
            ("sigma", "σ", 0.99),
            ("stain_jitter", "stain jitter", 2.0),  # augment.py: for images of other scanners/stains
            ("scale_jitter", "scale jitter", 2.0),
        ):
            spin = QDoubleSpinBox()
            spin.setDecimals(3)
            spin.setRange(0.0, hi)
            spin.setSingleStep(0.05)
            spin.setValue(getattr(defaults, name))
            adv.addRow(label, spin)
            self.hyper[name] = spin
        form.addRow(self.advanced)
        self.device_label = QLabel(f"Device: {devices.describe(devices.resolve_device('auto'))}")
        form.addRow(self.device_label)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.train_btn)
        row.addWidget(self.cancel_btn)
        form.addRow(row)
        self.progress = QProgressBar()
        form.addRow(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form.addRow(self.status)
        self.plot = LossPlot()
        form.addRow(self.plot)
        self.att_label = QLabel("")  # the share of crops where ATT fired (eqs. 14-16)
        form.addRow(self.att_label)
        self.forgetting_label = QLabel("")  # the step's forgetting report (forgetting.py)
        self.forgetting_label.setWordWrap(True)
        self.forgetting_label.setTextFormat(Qt.RichText)
        form.addRow(self.forgetting_label)
        root.addWidget(box)

        box = QGroupBox("4. Segment and export")
        form = QFormLayout(box)
        self.tile = QSpinBox()
        self.tile.setRange(64, 4096)
        self.tile.setSingleStep(64)
        self.tile.setValue(512)
        form.addRow("Tile", self.tile)
        row = QHBoxLayout()
        self.segment_btn = QPushButton("Segment image")
        self.export_btn = QPushButton("Export masks…")
        row.addWidget(self.segment_btn)
        row.addWidget(self.export_btn)
        form.addRow(row)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["class", "nuclei", "area (px)", "mean area"])
        form.addRow(self.table)
        root.addWidget(box)
        root.addStretch(1)

        self.open_model_btn.clicked.connect(self._choose_model_file)
        self.bundled_btn.clicked.connect(lambda: self.load_model(BUNDLED_MODEL))
        self.colour_btn.clicked.connect(self._pick_colour)
        self.annotate_btn.clicked.connect(self.add_annotation_layer)
        self.train_btn.clicked.connect(self.start_training)
        self.cancel_btn.clicked.connect(self.cancel)
        self.segment_btn.clicked.connect(self.start_segmentation)
        self.export_btn.clicked.connect(self._choose_export_file)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.image_combo.currentTextChanged.connect(self._image_chosen)
        self._refresh_images()
        self._image_chosen()

    # --- settings remembered between sessions -----------------------------------------------
    def _restore(self) -> None:
        s = self.settings
        self.preset_combo.setCurrentText(str(s.value("preset", "cpu")))
        self.iterations.setValue(int(s.value("iterations", 300)))
        self.crop.setValue(int(s.value("crop", 128)))
        self.tile.setValue(int(s.value("tile", 512)))
        self.advanced.setChecked(str(s.value("advanced", "false")).lower() == "true")
        for name, spin in self.hyper.items():
            spin.setValue(float(s.value(f"hyper/{name}", spin.value())))
        last = s.value("model_path", "")
        if last and Path(str(last)).is_file():
            try:
                self.load_model(last)
            except ModelFileError:
                pass

    def _remember(self) -> None:
        s = self.settings
        s.setValue("preset", self.preset_combo.currentText())
        s.setValue("iterations", self.iterations.value())
        s.setValue("crop", self.crop.value())
        s.setValue("tile", self.tile.value())
        s.setValue("advanced", self.advanced.isChecked())
        for name, spin in self.hyper.items():
            s.setValue(f"hyper/{name}", spin.value())
        if self.model is not None and self.model.source_path:
            s.setValue("model_path", self.model.source_path)

    # --- helpers --------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        if error:
            from napari.utils.notifications import show_error

            show_error(text)

    def _refresh_images(self, *_) -> None:
        from napari.layers import Image

        current = self.image_combo.currentText()
        names = [ly.name for ly in self.viewer.layers if isinstance(ly, Image)]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)

    def _image_chosen(self, *_) -> None:
        """Show the chosen image's pixel size: the file's (read by our reader), else leave the
        user's value and say that the file does not tell."""
        name = self.image_combo.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        said = layer_pixel_size(layer.metadata) if layer is not None else None
        if said:
            self.pixel_size.setValue(float(said))
            self.pixel_size_note.setText("from the file")
        elif layer is not None:
            self.pixel_size_note.setText(
                "the file does not say: set it (0.25 at 40×, 0.5 at 20×) so images are resampled to the model's"
            )

    def image_pixel_size(self) -> float | None:
        return float(self.pixel_size.value()) or None

    def _image_layer(self):
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise ValueError("open an H&E image first (File > Open, or File > Open Sample > CiNuSeg)")
        return self.viewer.layers[name]

    def _choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CiNuSeg model", str(models_dir()), "CiNuSeg models (*.cinuseg.pt *.pt)")
        if path:
            try:
                self.load_model(path)
            except ModelFileError as exc:
                self._say(str(exc), error=True)

    def _pick_colour(self) -> None:
        from qtpy.QtGui import QColor

        c = QColorDialog.getColor(QColor(self.colour.text()), self, "Colour of the new class")
        if c.isValid():
            self.colour.setText(c.name())

    def _set_busy(self, busy: bool) -> None:
        for w in (self.train_btn, self.segment_btn, self.open_model_btn, self.bundled_btn, self.annotate_btn, self.export_btn):
            w.setEnabled(not busy)
        self.bundled_btn.setEnabled(not busy and BUNDLED_MODEL.is_file())
        self.cancel_btn.setEnabled(busy)

    def _start_job(self, job_fn, on_event, on_returned):
        """Run the generator ``job_fn()`` in a napari worker. Every failure, whatever its type
        (superqt drops a RuntimeError, CUDA's out-of-memory among them, without a signal), becomes
        one ``JobFailed``: one ``errored`` signal, one notification (ours), and the panel usable
        again; ``finished`` always fires."""
        from napari.qt.threading import create_worker

        def guarded():
            try:
                return (yield from job_fn())
            except Exception as exc:  # noqa: BLE001 - every failure becomes one clear error
                raise JobFailed(describe_failure(exc)) from exc

        worker = create_worker(guarded, _ignore_errors=True)  # we notify, napari must not again
        worker.yielded.connect(on_event)
        worker.returned.connect(on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._set_busy(False))
        self.worker = worker
        self._set_busy(True)
        worker.start()
        return worker

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Closing the panel (or the viewer) cancels a running job: a training stops between
        iterations and saves nothing, so the prior and the annotations stay as they were."""
        self.shutdown()
        super().closeEvent(event)

    def event(self, ev) -> bool:
        # napari closes a dock widget by taking the panel out of it (its parent becomes None),
        # without a close event: that too ends the running job.
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.shutdown(wait=False)
        return super().event(ev)

    def shutdown(self, wait: bool = True) -> None:
        """Cancel the running job (it stops between iterations, saving nothing)."""
        if getattr(self, "cancel_event", None) is not None:
            self.cancel_event.set()
        worker = getattr(self, "worker", None)
        if worker is not None and getattr(worker, "is_running", False):
            worker.quit()
            if wait:
                worker.await_workers(60_000)

    # --- 1. model -------------------------------------------------------------------------
    def load_model(self, path) -> CiNuSegModel:
        self.model = load_model(path)
        self._show_model()
        self._remember()
        return self.model

    def _show_model(self) -> None:
        m = self.model
        if m is None:
            self.model_label.setText("No model: training starts a new base model from your annotations.")
            return
        rows = "".join(
            f"<tr><td><span style='color:{c.colour}'>■</span> {c.name}</td><td>step {c.step}</td></tr>" for c in m.classes
        )
        where = Path(m.source_path).name if m.source_path else "not saved"
        self.model_label.setText(f"<b>{where}</b> ({m.arch.encoder})<table>{rows}</table>")

    # --- 2. annotation --------------------------------------------------------------------
    def _new_class(self) -> tuple[str, str]:
        known = self.model.class_names if self.model else []
        return check_class_name(self.class_name.text(), known), check_colour(self.colour.text())

    def add_annotation_layer(self):
        try:
            name, colour = self._new_class()
            image = self._image_layer()
            h, w = _level0(image).shape[:2]
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        import zarr

        data = np.zeros((h, w), np.uint8) if h * w <= IN_MEMORY_LIMIT_PX else zarr.zeros((h, w), chunks=(1024, 1024), dtype="uint8")
        layer = self.viewer.add_labels(
            data,
            name=f"{image.name} · {name} annotation",
            colormap=_colormap({1: colour, 2: "#9e9e9e"}),
            metadata={ANNOTATION_KEY: {"image": image.name, "class": name}},
        )
        layer.selected_label = 1
        layer.brush_size = 8
        layer.mode = "paint"
        if self.exhaustive.isChecked():
            self.viewer.add_shapes(
                name=f"{image.name} · exhaustive regions",
                edge_color="yellow",
                face_color="transparent",
                edge_width=4,
                metadata={EXHAUSTIVE_KEY: {"image": image.name}},
            )
            self.viewer.layers.selection.active = layer
        self._say(f"Paint {name} with label 1 and background with label 2; unpainted pixels teach nothing.")
        return layer

    def training_pairs(self, class_name: str) -> list:
        """Every annotation layer of this class, as engine training pairs (headless: annotations)."""
        from napari.layers import Labels, Shapes

        pairs, self.last_crops = [], []
        for layer in self.viewer.layers:
            info = layer.metadata.get(ANNOTATION_KEY) if isinstance(layer, Labels) else None
            if not info or info["class"].lower() != class_name.lower():
                continue
            if info["image"] not in self.viewer.layers:
                raise ValueError(f"the image {info['image']!r} of layer {layer.name!r} is no longer open")
            image = self.viewer.layers[info["image"]]
            regions = []
            if self.exhaustive.isChecked():
                for sl in self.viewer.layers:
                    if isinstance(sl, Shapes) and sl.metadata.get(EXHAUSTIVE_KEY, {}).get("image") == image.name:
                        regions += list(sl.data)
            found = training_pair(_level0(image), np.asarray(layer.data), 1, regions, name=image.name)
            if found is None:
                continue
            pairs.append(found[0])
            self.last_crops.append((image.name, *found[1]))
        if not pairs:
            raise ValueError(f"nothing is painted for {class_name!r}: add an annotation layer and paint some examples")
        return pairs

    # --- 3. training ----------------------------------------------------------------------
    def current_settings(self):
        overrides = {"iterations": self.iterations.value(), "crop_size": self.crop.value() // 32 * 32}
        if self.advanced.isChecked():
            overrides.update({k: spin.value() for k, spin in self.hyper.items()})
        return preset(self.preset_combo.currentText(), **overrides)

    def start_training(self):

        try:
            name, colour = self._new_class()
            pairs = self.training_pairs(name)
            check_pairs(pairs, 1)
            settings = self.current_settings()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        prior = self.model
        base = _slug(Path(prior.source_path).name.split(".")[0]) if prior and prior.source_path else "base"
        out = models_dir() / f"{base}+{_slug(name)}-{stamp}.cinuseg.pt"
        self.cancel_event = cancel = threading.Event()
        px = self.image_pixel_size()

        def run():  # in the worker thread: even copying the prior would stall the viewer
            if prior is None:  # a base model records the painted image's pixel size
                job = train_base(pairs, [name], settings, colours=[colour], out=out, cancel=cancel, pixel_size=px)
            else:
                job = train_step(prior, pairs, [name], settings.for_network(prior.arch), method="cinuseg", colours=[colour], out=out, cancel=cancel)
            return (yield from job)

        self.plot.clear()
        self._crops = deque(maxlen=64)  # the last training crops, for the ATT layer
        self._att_seen = self._att_fired = 0
        self.att_label.setText("")
        self.forgetting_label.setText("")
        self.progress.setValue(0)
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
        if isinstance(ev, StepStarted):
            self.progress.setRange(0, ev.total_iterations)
            self.device_label.setText(f"Device: {ev.device}")
        elif isinstance(ev, Progress):
            self.progress.setValue(ev.iteration)
            left = time.strftime("%M:%S", time.gmtime(ev.seconds_left))
            att = ""
            if ev.crops:
                r = np.mean([c.r for c in ev.crops])
                t_o = np.mean([c.t_o for c in ev.crops])
                t_n = np.mean([c.t_n for c in ev.crops])
                att = f" · ATT r={r:.2f} t_o={t_o:.2f} t_n={t_n:.2f}"
            self.status.setText(f"iteration {ev.iteration}/{ev.total}, loss {ev.loss:.3f}, {left} left{att}")
            self.plot.add(ev)
            self._crops.extend(ev.crops)
            self._att_seen += len(ev.crops)
            self._att_fired += sum(c.t_o != 1 for c in ev.crops)
            if self._att_seen:
                self.att_label.setText(
                    f"ATT fired on {self._att_fired / self._att_seen:.0%} of the crops so far "
                    f"(new class > σ of their nuclei: old-class loss ×α_o, new-class loss ×α_n)"
                )
        elif isinstance(ev, (Cancelled, MemoryReduced)):
            self._say(ev.message)
        elif isinstance(ev, StepFinished):
            self.new_model_path = Path(ev.path) if ev.path else None

    def _on_trained(self, model) -> None:
        if model is None:
            return
        self.model = model
        if self.new_model_path is not None:
            model.source_path = str(self.new_model_path)
        self._show_model()
        self._remember()
        self._add_att_layer()
        self._say(f"Saved {self.new_model_path}; it is now the current model.")
        self._show_forgetting(model.steps[-1].results.get("forgetting") if model.steps else None)

    def _show_forgetting(self, report) -> None:
        """The step's forgetting report beside its result, and a warning per class that fell
        below the threshold, with what to do."""
        if not report:
            self.forgetting_label.setText("")
            return
        lines = [format_report(report) + f" — on {report.get('images')} painted image(s)"]
        warnings = forgetting_warnings(report)
        if warnings:
            lines += [f"<span style='color:#e6194b'>⚠ {w}</span>" for w in warnings]
            from napari.utils.notifications import show_warning

            show_warning("Forgetting: " + " ".join(warnings))
        self.forgetting_label.setText("<br>".join(lines))

    def _add_att_layer(self) -> None:
        crops = getattr(self, "_crops", None)
        if not crops:
            return
        rects, feats = [], {"r": [], "t_o": [], "t_n": [], "att": []}
        for c in crops:
            if c.image_index >= len(self.last_crops):
                continue
            _, y0, x0 = self.last_crops[c.image_index]
            top, left = y0 + c.top, x0 + c.left
            rects.append(np.array([[top, left], [top + c.size, left + c.size]]))
            for k in ("r", "t_o", "t_n"):
                feats[k].append(getattr(c, k))
            feats["att"].append("fired" if c.t_o != 1 else "off")
        if rects:
            # Outlines only, so the tissue stays visible: orange where ATT fired, cyan where not;
            # r, t_o and t_n are written on each crop.
            self.viewer.add_shapes(
                rects,
                shape_type="rectangle",
                name="last training crops (ATT)",
                features=feats,
                face_color="transparent",
                edge_color="att",
                edge_color_cycle=["#ff8c00", "#00c8ff"] if feats["att"][0] == "fired" else ["#00c8ff", "#ff8c00"],
                edge_width=3,
                text={"string": "r={r:.2f} t_o={t_o:g} t_n={t_n:g}", "size": 8, "color": "white", "anchor": "upper_left"},
            )

    def _on_error(self, exc) -> None:
        self._say(f"Stopped: {exc}", error=True)
        self._set_busy(False)

    # --- 4. segmentation ------------------------------------------------------------------
    def start_segmentation(self):
        try:
            if self.model is None:
                raise ValueError("choose or train a model first")
            image = self._image_layer()
            pixels = _level0(image)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        self.cancel_event = threading.Event()
        model, names = self.model, self.model.class_names
        # A slide (a lazy layer) or a large image: the class map goes to disk tile by tile, with a
        # pyramid, and is shown lazily; a small image's stays in memory.
        out = None
        if not isinstance(pixels, np.ndarray) or pixels.shape[0] * pixels.shape[1] > IN_MEMORY_LIMIT_PX:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = results_dir() / f"{_slug(image.name)}-{model.id[:8]}-{stamp}.zarr"
        px = self.image_pixel_size()
        job = segment(
            model, pixels, tile=self.tile.value(), overlap=min(64, self.tile.value() // 4),
            image_pixel_size=px, out=out, cancel=self.cancel_event,
        )

        def run():
            result = yield from job
            if result is None:  # cancelled: nothing was written
                return None
            if isinstance(result, Path):
                result = build_pyramid(result)
                return result, class_statistics(result[0], names, px)
            return result, class_statistics(result, names, px)

        self._remember()
        self._say(f"Segmenting {image.name}…" + (f" (masks written to {out})" if out else ""))
        return self._start_job(run, self._on_segment_event, lambda result: self.show_result(image.name, result, model))

    def _on_segment_event(self, ev) -> None:
        if isinstance(ev, TileProgress):
            self.progress.setRange(0, ev.total)
            self.progress.setValue(ev.done)
        elif isinstance(ev, (Cancelled, MemoryReduced)):
            self._say(ev.message)
        elif isinstance(ev, SegmentFinished):
            self._say(f"Segmented in {ev.seconds:.1f} s ({ev.tiles} tiles, {ev.skipped} without tissue skipped)")

    def show_result(self, image_name: str, result, model=None) -> None:
        """The class map as layers: all classes in one, one mask per class, and the table of
        nucleus counts and areas. ``result`` = (class map, statistics rows), the class map an
        array or, for a slide, its on-disk pyramid [level 0, level 1, …] (shown lazily)."""
        if result is None:
            return
        import pandas as pd

        class_map, rows = result
        m = model or self.model
        multiscale = isinstance(class_map, list)
        colours = {i + 1: c.colour for i, c in enumerate(m.classes)}
        features = pd.DataFrame(
            {"index": range(m.num_channels), "name": ["background"] + m.class_names, "colour": ["#000000"] + [c.colour for c in m.classes]}
        )
        meta = {RESULT_KEY: result_metadata(m.class_names, [c.colour for c in m.classes], m.id, self.image_pixel_size())}
        self.viewer.add_labels(
            class_map, name=f"{image_name} · classes", colormap=_colormap(colours), features=features, metadata=meta, multiscale=multiscale
        )
        for i, c in enumerate(m.classes, start=1):
            if multiscale:
                import dask.array as da

                mask = [(da.from_zarr(level) == i).astype(np.uint8) for level in class_map]
            else:
                mask = (class_map == i).astype(np.uint8)
            self.viewer.add_labels(mask, name=f"{image_name} · {c.name}", colormap=_colormap({1: c.colour}), visible=False, multiscale=multiscale)
        self.table.setRowCount(len(rows))
        um = bool(rows) and "area_um2" in rows[0]  # the pixel size is known: areas in µm²
        keys = ("class", "nuclei", "area_um2", "mean_area_um2") if um else ("class", "nuclei", "area_px", "mean_area_px")
        unit = "µm²" if um else "px"
        self.table.setHorizontalHeaderLabels(["class", "nuclei", f"area ({unit})", f"mean area ({unit})"])
        for r, row in enumerate(rows):
            for col, key in enumerate(keys):
                value = row[key]
                self.table.setItem(r, col, QTableWidgetItem(f"{value:.1f}" if isinstance(value, float) else str(value)))
        if rows and not any(row["nuclei"] for row in rows):  # say why, rather than show empty layers
            self._say(
                f"The model found no nuclei in {image_name}. A model only knows images like the ones it was "
                "trained on (the bundled one: CoNSeP colon tissue at 40×); for other scanners, stains or "
                "magnifications, train a base model on your own annotations (no model + Train), with stain "
                "and scale jitter under Advanced."
            )
            from napari.utils.notifications import show_warning

            show_warning(self.status.text())

    # --- export ---------------------------------------------------------------------------
    def _result_layer(self):
        from napari.layers import Labels

        for layer in reversed(list(self.viewer.layers)):
            if isinstance(layer, Labels) and RESULT_KEY in layer.metadata:
                return layer
        raise ValueError("segment an image first")

    def _choose_export_file(self) -> None:
        try:
            layer = self._result_layer()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export masks", f"{_slug(layer.name)}.masks.tif", "TIFF (*.tif *.tiff)")
        if path:
            self.export_to(path, layer)

    def export_to(self, path, layer=None):
        """Export the result layer to ``path`` (pyramidal OME-TIFF) and its per-nucleus CSV, in a
        worker with progress; returns the worker (None if refused). ``self.last_export`` is the
        masks file once it is written."""
        try:
            layer = layer or self._result_layer()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        info = layer.metadata[RESULT_KEY]
        data = layer.data[0] if layer.multiscale else layer.data  # zarr level 0: written tile by tile
        px = layer_pixel_size(layer.metadata)
        path = Path(path)
        self.last_export = None

        def run():
            job = export_masks_job(data, path, info["class_names"], info["colours"], info["model_id"], overwrite=True, pixel_size=px)
            while True:
                try:
                    done, total = next(job)
                except StopIteration as stop:
                    out = stop.value
                    break
                yield ExportProgress(done, total)
            csv_path = Path(out).with_name(Path(out).name.split(".")[0] + ".nuclei.csv")
            write_nucleus_csv(nucleus_table(data, info["class_names"], px), csv_path)
            return out, csv_path

        def progress(ev) -> None:
            self.progress.setRange(0, max(ev.total, 1))
            self.progress.setValue(ev.done)

        def done(result) -> None:
            self.last_export = result[0]
            self._say(f"Exported {result[0]} and the per-nucleus table {result[1].name}")

        self._say(f"Exporting {path.name}…")
        return self._start_job(run, progress, done)
