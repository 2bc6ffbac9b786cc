"""The panel's four sections: what each shows and gathers, and nothing it starts (panel.py)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
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
)

from ..runtime import devices
from ..runtime.events import Progress, StepStarted
from ..analysis.forgetting import format_report, forgetting_warnings
from ..plugin.layer_metadata import layer_pixel_size
from ..model.segmenter import PALETTE
from ..model.file import BUNDLED_MODEL
from ..training.settings import PRESETS, SETTING_RANGES, USER_SETTINGS, preset, setting_label
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
        self.label = QLabel(NO_MODEL)
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.RichText)
        form.addWidget(self.label)

    def show_model(self, m) -> None:
        if m is None:
            self.label.setText(NO_MODEL)
            return
        rows = "".join(f"<tr><td><span style='color:{c.colour}'>■</span> {c.name}</td><td>step {c.step}</td></tr>" for c in m.classes)
        where = Path(m.source_path).name if m.source_path else "not saved"
        px = f", {m.pixel_size:g} µm/px" if m.pixel_size else ""
        self.label.setText(f"<b>{where}</b> ({m.arch.encoder}{px})<table>{rows}</table>")


class NewClassSection(QGroupBox):
    """2. The new class (name, colour), the image to paint on and its pixel size."""

    def __init__(self):
        super().__init__("2. New class")
        form = QFormLayout(self)
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
        self.pixel_size_note = QLabel("")
        form.addRow(self.pixel_size_note)
        self.annotate_btn = QPushButton("Add annotation layer")
        form.addRow(self.annotate_btn)
        self.exhaustive = QCheckBox("My annotation is exhaustive in rectangles I draw")
        form.addRow(self.exhaustive)

    def pick_colour(self) -> None:
        from qtpy.QtGui import QColor
        from qtpy.QtWidgets import QColorDialog

        c = QColorDialog.getColor(QColor(self.colour.text()), self, "Colour of the new class")
        if c.isValid():
            self.colour.setText(c.name())

    def refresh_images(self, viewer) -> None:
        """The viewer's image layers in the combo box, keeping the current choice."""
        from napari.layers import Image

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
            self.pixel_size_note.setText("the file does not say: set it (0.25 at 40×, 0.5 at 20×) so images are resampled to the model's")


class TrainSection(QGroupBox):
    """3. Training: preset, iterations, crop, the method's settings; progress, loss plot, ATT
    share and the forgetting report of the last step."""

    def __init__(self):
        super().__init__("3. Train")
        form = QFormLayout(self)
        self.preset = QComboBox()
        self.preset.addItems(sorted(PRESETS))
        form.addRow("Preset", self.preset)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 1_000_000)
        self.iterations.setValue(300)
        form.addRow("Iterations", self.iterations)
        self.crop = QSpinBox()
        self.crop.setRange(64, 1024)
        self.crop.setSingleStep(32)
        self.crop.setValue(128)
        form.addRow("Crop size", self.crop)
        self.advanced, self.hyper = self._advanced()
        form.addRow(self.advanced)
        self.device = QLabel(f"Device: {devices.describe(devices.resolve_device('auto'))}")
        form.addRow(self.device)
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
        self.att = QLabel("")  # the share of crops where ATT fired (eqs. 14-16)
        form.addRow(self.att)
        self.forgetting = QLabel("")  # the step's forgetting report (forgetting.py)
        self.forgetting.setWordWrap(True)
        self.forgetting.setTextFormat(Qt.RichText)
        form.addRow(self.forgetting)
        self.crops: deque = deque(maxlen=64)
        self.att_seen = self.att_fired = 0

    @staticmethod
    def _advanced():
        """A magicgui form of the method's settings, made from settings.SETTING_RANGES and
        USER_SETTINGS (no list of its own), in a checkable group: off = the preset's values."""
        from magicgui.widgets import Container, FloatSpinBox

        defaults = preset("cpu")
        fields = {
            name: FloatSpinBox(
                name=name, label=setting_label(name), value=getattr(defaults, name), min=low, max=high, step=0.05,
                tooltip=USER_SETTINGS[name],
            )
            for name, (low, high) in SETTING_RANGES.items()
        }
        box = QGroupBox("Advanced (method)")
        box.setCheckable(True)
        box.setChecked(False)
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        form = Container(widgets=list(fields.values()))
        lay.addWidget(form.native)
        box._form = form  # kept alive with the group
        return box, fields

    def settings(self):
        overrides = {"iterations": self.iterations.value(), "crop_size": self.crop.value() // 32 * 32}
        if self.advanced.isChecked():
            overrides.update({k: float(w.value) for k, w in self.hyper.items()})
        return preset(self.preset.currentText(), **overrides)

    def reset_results(self) -> None:
        self.plot.clear()
        self.att.setText("")
        self.forgetting.setText("")
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
            self.status.setText(f"iteration {ev.iteration}/{ev.total}, loss {ev.loss:.3f}, {left} left{att}")
            self.plot.add(ev)
            self.crops.extend(ev.crops)
            self.att_seen += len(ev.crops)
            self.att_fired += sum(c.t_o != 1 for c in ev.crops)
            if self.att_seen:
                self.att.setText(
                    f"ATT fired on {self.att_fired / self.att_seen:.0%} of the crops so far "
                    "(new class > σ of their nuclei: old-class loss ×α_o, new-class loss ×α_n)"
                )

    def show_forgetting(self, report) -> list[str]:
        """The step's forgetting report beside its result, and one notification with a warning
        (and what to do) per class below the threshold; returns those warnings."""
        if not report:
            self.forgetting.setText("")
            return []
        lines = [format_report(report) + f" — on {report.get('images')} painted image(s)"]
        warnings = forgetting_warnings(report)
        lines += [f"<span style='color:#e6194b'>⚠ {w}</span>" for w in warnings]
        self.forgetting.setText("<br>".join(lines))
        if warnings:
            from napari.utils.notifications import show_warning

            show_warning("Forgetting: " + " ".join(warnings))
        return warnings


class SegmentSection(QGroupBox):
    """4. Segment and export; the table of nuclei per class."""

    def __init__(self):
        super().__init__("4. Segment and export")
        form = QFormLayout(self)
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

    def show_statistics(self, rows: list[dict]) -> None:
        self.table.setRowCount(len(rows))
        um = bool(rows) and "area_um2" in rows[0]  # the pixel size is known: areas in µm²
        keys = ("class", "nuclei", "area_um2", "mean_area_um2") if um else ("class", "nuclei", "area_px", "mean_area_px")
        unit = "µm²" if um else "px"
        self.table.setHorizontalHeaderLabels(["class", "nuclei", f"area ({unit})", f"mean area ({unit})"])
        for r, row in enumerate(rows):
            for col, key in enumerate(keys):
                value = row[key]
                self.table.setItem(r, col, QTableWidgetItem(f"{value:.1f}" if isinstance(value, float) else str(value)))
