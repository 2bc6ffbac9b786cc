"""The panel's four sections: what each shows and gathers, and nothing it starts (panel.py)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FloatSpinBox
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..inference.tiling import DEFAULT_TILE
from ..methods import get_method
from ..model.file import BUNDLED_MODEL
from ..model.segmenter import PALETTE
from ..plugin.layer_metadata import layer_pixel_size
from ..runtime import devices
from ..runtime.devices import device_choices
from ..runtime.events import Progress, StepStarted
from ..runtime.setting import PANEL, offered
from ..session.learning import STEP_ITERATIONS, STEP_METHOD
from ..session.preview import PREVIEW_EVERY_S
from ..training.settings import PRESETS, TrainSettings, preset
from .plot import LossPlot

NO_MODEL = "No model: training starts a new base model from your annotations."


class ModelSection(QGroupBox):
    """1. The current model: open a file or the bundled one; its classes."""

    def __init__(self):
        super().__init__("1. Model")
        form = QVBoxLayout(self)
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open model file…")
        self.bundled_btn = QPushButton("Bundled base model")
        self.bundled_btn.setEnabled(BUNDLED_MODEL.is_file())
        row.addWidget(self.open_btn)
        row.addWidget(self.bundled_btn)
        form.addLayout(row)
        self.label = wrapped_label(NO_MODEL, rich=True)
        form.addWidget(self.label)

    def show_model(self, m) -> None:
        if m is None:
            self.label.setText(NO_MODEL)
            return
        rows = "".join(
            f"<tr><td><span style='color:{c.colour}'>■</span> {c.name}</td><td>step {c.step}</td></tr>"
            for c in m.classes
        )
        where = Path(m.source_path).name if m.source_path else "not saved"
        px = f", {m.pixel_size:g} µm/px" if m.pixel_size else ""
        self.label.setText(f"<b>{where}</b> ({m.arch.encoder}{px})<table>{rows}</table>")


class NewClassSection(QGroupBox):
    """2. The new class (name, colour), the image to paint on and its pixel size."""

    def __init__(self):
        super().__init__("2. New class")
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. Neutrophil")
        form.addRow("Name", self.name)
        row = QHBoxLayout()
        self.colour = QLineEdit(PALETTE[3])
        self.colour_btn = QPushButton("Pick…")
        row.addWidget(self.colour)
        row.addWidget(self.colour_btn)
        form.addRow("Colour", row)
        self.colour_btn.clicked.connect(self.pick_colour)
        self.image = QComboBox()
        form.addRow("Image", self.image)
        # µm per pixel of the chosen image: what its file says, else the user's (0 = unknown).
        # Segmentation resamples to the model's pixel size with it; areas are given in µm².
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setDecimals(4)
        self.pixel_size.setRange(0.0, 20.0)
        self.pixel_size.setSingleStep(0.05)
        self.pixel_size.setSpecialValueText("unknown")
        self.pixel_size.setSuffix(" µm/px")
        form.addRow("Pixel size", self.pixel_size)
        self.pixel_size_note = wrapped_label()
        form.addRow(self.pixel_size_note)
        self.annotate_btn = QPushButton("Add annotation layer")
        form.addRow(self.annotate_btn)
        row = QHBoxLayout()
        self.open_annotation_btn = QPushButton("Open annotation…")
        self.save_annotation_btn = QPushButton("Save annotation")
        self.save_annotation_btn.setToolTip("beside the current model, as <model>.<image>.annotation.tif")
        row.addWidget(self.open_annotation_btn)
        row.addWidget(self.save_annotation_btn)
        form.addRow(row)
        self.exhaustive = QCheckBox("Exhaustive inside rectangles I draw")
        self.exhaustive.setToolTip("everything unpainted inside the rectangles is background")
        form.addRow(self.exhaustive)

    def pick_colour(self) -> None:

        c = QColorDialog.getColor(QColor(self.colour.text()), self, "Colour of the new class")
        if c.isValid():
            self.colour.setText(c.name())

    def refresh_images(self, viewer) -> None:
        """The viewer's image layers in the combo box, keeping the current choice."""

        current = self.image.currentText()
        names = [ly.name for ly in viewer.layers if isinstance(ly, Image)]
        self.image.clear()
        self.image.addItems(names)
        if current in names:
            self.image.setCurrentText(current)

    def image_layer(self, viewer):
        name = self.image.currentText()
        if not name or name not in viewer.layers:
            raise ValueError("open an H&E image first (File > Open, or File > Open Sample > CiNuSeg)")
        return viewer.layers[name]

    def image_chosen(self, viewer) -> None:
        name = self.image.currentText()
        layer = viewer.layers[name] if name and name in viewer.layers else None
        self.show_pixel_size(layer_pixel_size(layer.metadata) if layer is not None else None, layer is not None)

    def show_pixel_size(self, said: float | None, has_image: bool) -> None:
        """The file's pixel size, or (where it says none) the user's value kept and a hint."""
        if said:
            self.pixel_size.setValue(float(said))
            self.pixel_size_note.setText("from the file")
        elif has_image:
            self.pixel_size_note.setText(
                "the file does not say: set it (0.25 at 40×, 0.5 at 20×) so images are resampled to the model's"
            )


class Collapsible(QWidget):
    """A titled part that opens and closes with a click on its title (closed at first)."""

    def __init__(self, title: str):
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setStyleSheet("QToolButton { border: none; }")
        self.content = QWidget()
        self.content.setVisible(False)
        self.form = QFormLayout(self.content)
        self.form.setContentsMargins(8, 0, 0, 0)
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        lay.addWidget(self.toggle)
        lay.addWidget(self.content)
        self.toggle.toggled.connect(self.set_open)

    def set_open(self, opened: bool) -> None:
        self.toggle.setChecked(opened)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if opened else Qt.ArrowType.RightArrow)
        self.content.setVisible(opened)


def wrapped_label(text: str = "", rich: bool = False) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # wraps, never widens the panel
    return label


class ReviewBox(QGroupBox):
    """A step's result, before it is kept: what the new model makes of the painted nuclei, the
    old classes in plain words, and Keep / Discard."""

    def __init__(self):
        super().__init__("Step result: keep it?")
        lay = QVBoxLayout(self)
        self.summary = wrapped_label(rich=True)
        self.forgetting = wrapped_label(rich=True)  # the old classes: kept, shrank, grew or moved
        lay.addWidget(self.summary)
        lay.addWidget(self.forgetting)
        row = QHBoxLayout()
        self.keep_btn = QPushButton("Keep")
        self.discard_btn = QPushButton("Discard")
        row.addWidget(self.keep_btn)
        row.addWidget(self.discard_btn)
        lay.addLayout(row)
        lay.addWidget(
            wrapped_label("Train again replaces this result: from the same prior, with the paint as it is then.")
        )
        self.setVisible(False)

    def show_review(self, review, saved_as: str) -> None:
        colour = "#e6194b" if review.worrying() else "inherit"
        self.summary.setText(
            f"<span style='color:{colour}'>{review.new_class_sentence()}</span> <i>(shown as “step result” "
            f"over the painted regions; not kept yet: {saved_as})</i>"
        )
        lines = []
        for sentence in review.old_class_sentences():
            bad = any(w in sentence.split(":")[0] for w in ("shrank", "grew", "moved"))
            lines.append(f"<span style='color:#e6194b'>⚠ {sentence}</span>" if bad else sentence)
        self.forgetting.setText("<br>".join(lines))
        self.setVisible(True)

    def clear(self) -> None:
        self.summary.setText("")
        self.forgetting.setText("")
        self.setVisible(False)


class TrainSection(QGroupBox):
    """3. Training: preset, iterations, crop, device, live preview; progress, loss plot, the
    step's result to keep or discard; under Details the method's settings and the diagnostics
    (device used, ATT share)."""

    def __init__(self):
        super().__init__("3. Train")
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.preset = QComboBox()
        self.preset.addItems(sorted(PRESETS))
        form.addRow("Preset", self.preset)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 1_000_000)
        self.iterations.setValue(STEP_ITERATIONS)
        form.addRow("Iterations", self.iterations)
        self.crop = QSpinBox()
        self.crop.setRange(64, 1024)
        self.crop.setSingleStep(32)
        self.crop.setValue(TrainSettings().crop_size)
        form.addRow("Crop size", self.crop)
        self.device_choice = QComboBox()  # the step's and the segmentation's device
        for label, name in device_choices():
            self.device_choice.addItem(label, name)
        self.device_choice.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.device_choice.setMinimumContentsLength(10)
        form.addRow("Device", self.device_choice)
        self.preview = QCheckBox("Live preview of the painted regions")
        self.preview.setChecked(True)
        self.preview.setToolTip(
            f"every {PREVIEW_EVERY_S:g} s of training, the model's prediction of the painted regions "
            "(a 'preview' layer)"
        )
        form.addRow(self.preview)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.train_btn)
        row.addWidget(self.cancel_btn)
        form.addRow(row)
        self.progress = QProgressBar()
        form.addRow(self.progress)
        self.iteration_text = wrapped_label()
        form.addRow(self.iteration_text)
        self.plot = LossPlot()
        form.addRow(self.plot)
        self.review = ReviewBox()
        form.addRow(self.review)
        self.forgetting = self.review.forgetting
        self.details = Collapsible("Details")
        self.advanced, self.hyper = self._advanced()
        self.details.form.addRow(self.advanced)
        self.device = wrapped_label(f"Device: {devices.describe(devices.resolve_device('auto'))}")
        self.details.form.addRow(self.device)
        self.att = wrapped_label()  # the share of crops where ATT fired (eqs. 14-16)
        self.details.form.addRow(self.att)
        form.addRow(self.details)
        self.crops: deque = deque(maxlen=64)
        self.att_seen = self.att_fired = 0

    @staticmethod
    def _advanced():
        """A magicgui form of the numeric settings offered to the panel (runtime.setting.PANEL):
        the step method's and the training's (the augmentation's), from their declarations, in a
        checkable group: off = the method's and the preset's values."""
        numbers = {**offered(get_method(STEP_METHOD), PANEL), **offered(TrainSettings, PANEL)}
        defaults = preset("cpu")
        fields = {
            name: FloatSpinBox(
                name=name,
                label=spec.label,
                value=getattr(defaults, name, spec.default),
                min=spec.low,
                max=spec.high,
                step=0.05,
                tooltip=spec.help,
            )
            for name, spec in numbers.items()
            if spec.low is not None and spec.high is not None
        }
        box = QGroupBox("Advanced (method)")
        box.setCheckable(True)
        box.setChecked(False)
        lay = QVBoxLayout(box)
        lay.setContentsMargins(4, 4, 4, 4)
        form = Container(widgets=list(fields.values()), labels=True)
        lay.addWidget(form.native)
        box._form = form  # kept alive with the group
        return box, fields

    def remembered(self) -> dict:
        """The fields the panel remembers between sessions (memory.py), by key."""
        fields = {
            "preset": self.preset,
            "iterations": self.iterations,
            "crop": self.crop,
            "advanced": self.advanced,
            "preview": self.preview,
            "device": self.device_choice,
        }
        return {**fields, **{f"hyper/{name}": field for name, field in self.hyper.items()}}

    def device_name(self) -> str:
        return str(self.device_choice.currentData() or "auto")

    def settings(self):
        overrides = {
            "iterations": self.iterations.value(),
            "crop_size": self.crop.value() // 32 * 32,
            "device": self.device_name(),
        }
        if self.advanced.isChecked():
            overrides.update({k: float(w.value) for k, w in self.hyper.items()})
        return preset(self.preset.currentText(), **overrides)

    def reset_results(self) -> None:
        self.plot.clear()
        self.att.setText("")
        self.iteration_text.setText("")
        self.progress.setValue(0)
        self.crops: deque = deque(maxlen=64)  # the last training crops, for the ATT layer
        self.att_seen = self.att_fired = 0  # crops seen in this training, and where ATT fired

    def on_event(self, ev) -> None:
        """A training event shown: the start (device, total), each iteration's progress, loss
        terms, time left and ATT statistics."""
        if isinstance(ev, StepStarted):
            self.progress.setRange(0, ev.total_iterations)
            self.device.setText(f"Device: {ev.device}")
        elif isinstance(ev, Progress):
            self.progress.setValue(ev.iteration)
            left = time.strftime("%M:%S", time.gmtime(ev.seconds_left))
            att = ""
            if ev.crops:
                r, t_o, t_n = (np.mean([getattr(c, k) for c in ev.crops]) for k in ("r", "t_o", "t_n"))
                att = f" · ATT r={r:.2f} t_o={t_o:.2f} t_n={t_n:.2f}"
            self.iteration_text.setText(f"iteration {ev.iteration}/{ev.total}, loss {ev.loss:.3f}, {left} left{att}")
            self.plot.add(ev)
            self.crops.extend(ev.crops)
            self.att_seen += len(ev.crops)
            self.att_fired += sum(c.t_o != 1 for c in ev.crops)
            if self.att_seen:
                self.att.setText(
                    f"ATT fired on {self.att_fired / self.att_seen:.0%} of the crops so far "
                    "(new class > σ of their nuclei: old-class loss ×α_o, new-class loss ×α_n)"
                )


class SegmentSection(QGroupBox):
    """4. Segment and export; the table of nuclei per class."""

    def __init__(self):
        super().__init__("4. Segment and export")
        form = QFormLayout(self)
        self.tile = QSpinBox()
        self.tile.setRange(64, 4096)
        self.tile.setSingleStep(64)
        self.tile.setValue(DEFAULT_TILE)
        form.addRow("Tile", self.tile)
        row = QHBoxLayout()
        self.segment_btn = QPushButton("Segment image")
        self.export_btn = QPushButton("Export masks…")
        row.addWidget(self.segment_btn)
        row.addWidget(self.export_btn)
        form.addRow(row)
        self.progress = QProgressBar()
        form.addRow(self.progress)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["class", "nuclei", "area px", "mean px"])
        self.table.setMinimumHeight(170)  # room for a header and six classes
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setMinimumSectionSize(40)
        form.addRow(self.table)

    def remembered(self) -> dict:
        """The fields the panel remembers between sessions (memory.py), by key."""
        return {"tile": self.tile}

    def show_statistics(self, rows: list[dict]) -> None:
        self.table.setRowCount(len(rows))
        um = bool(rows) and "area_um2" in rows[0]  # the pixel size is known: areas in µm²
        keys = (
            ("class", "nuclei", "area_um2", "mean_area_um2") if um else ("class", "nuclei", "area_px", "mean_area_px")
        )
        unit = "µm²" if um else "px"
        self.table.setHorizontalHeaderLabels(["class", "nuclei", f"area {unit}", f"mean {unit}"])
        for r, row in enumerate(rows):
            for col, key in enumerate(keys):
                value = row[key]
                self.table.setItem(r, col, QTableWidgetItem(f"{value:.1f}" if isinstance(value, float) else str(value)))
