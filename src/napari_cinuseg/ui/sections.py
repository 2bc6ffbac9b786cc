"""The panel's model, new-class and segment sections (1, 2 and 4; the training section, 3, is
``train_section.py``): what each shows and gathers, and nothing it starts (panel.py)."""

from __future__ import annotations

from pathlib import Path

from napari.layers import Image
from qtpy.QtCore import QSignalBlocker, QSize, Qt
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
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..inference.tiling import DEFAULT_TILE
from ..model.file import BUNDLED_MODEL
from ..model.segmenter import next_colour
from ..plugin.layer_metadata import layer_pixel_size
from .widgets import wrapped_label

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
        self.colour = QLineEdit(next_colour([]))
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
        # what the brush paints, by name: the class, background, or a class of the model (a correction)
        self.paint = QComboBox()
        self.paint.setToolTip("what the brush paints in the annotation layer (its label number in brackets)")
        form.addRow("Paint", self.paint)
        # a click paints the model's whole nucleus with the Paint label (ui/clicking.py)
        self.click = QCheckBox("Click a nucleus to paint it whole")
        self.click.setToolTip(
            "a click on the annotation layer paints the current model's nucleus there with the Paint label; "
            "a drag pans; untick (or choose the brush) to paint by hand"
        )
        self.click.setEnabled(False)  # until there is an annotation layer
        form.addRow(self.click)
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

    def offer_colour(self, model) -> None:
        """The class colour field offers one that no class of ``model`` has, where it holds one of
        theirs (a colour the user chose otherwise stays)."""
        used = [c.colour.lower() for c in model.classes] if model is not None else []
        if self.colour.text().strip().lower() in used:
            self.colour.setText(next_colour(used))

    def pick_colour(self) -> None:

        c = QColorDialog.getColor(QColor(self.colour.text()), self, "Colour of the new class")
        if c.isValid():
            self.colour.setText(c.name())

    def show_paint_choices(self, names: list[str], selected: int = 1) -> None:
        """The annotation layer's labels by name (label 1 on: the class, background, corrections)."""
        self.paint.blockSignals(True)
        self.paint.clear()
        for label, name in enumerate(names[1:], start=1):
            self.paint.addItem(f"{name} [{label}]", label)
        self.paint.setCurrentIndex(max(self.paint.findData(selected), 0))
        self.paint.blockSignals(False)

    def refresh_images(self, viewer) -> None:
        """The viewer's image layers in the combo box, keeping the current choice: the box says
        the image changed (``currentTextChanged``) only when the choice did, not on every layer
        added or removed."""

        current = self.image.currentText()
        names = [ly.name for ly in viewer.layers if isinstance(ly, Image)]
        with QSignalBlocker(self.image):
            self.image.clear()
            self.image.addItems(names)
            if current in names:
                self.image.setCurrentText(current)
        if self.image.currentText() != current:
            self.image.currentTextChanged.emit(self.image.currentText())

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


class FittedTable(QTableWidget):
    """A table as tall as its rows (at least three), so it needs no scroll of its own."""

    MIN_ROWS = 3

    def __init__(self, rows: int, columns: int):
        super().__init__(rows, columns)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        rows = max(self.rowCount(), self.MIN_ROWS)
        height = self.horizontalHeader().sizeHint().height() + rows * self.verticalHeader().defaultSectionSize()
        return QSize(super().sizeHint().width(), height + 2 * self.frameWidth())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return self.sizeHint()


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
        self.table = FittedTable(0, 4)
        self.table.setHorizontalHeaderLabels(["class", "nuclei", "area px", "mean px"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setMinimumSectionSize(40)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)  # class names whole
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
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
        self._fit_table()

    def _fit_table(self) -> None:
        """The table as tall as its rows (at least three), so it needs no scroll of its own."""
        rows = max(self.table.rowCount(), 3)
        height = (
            self.table.horizontalHeader().sizeHint().height() + rows * self.table.verticalHeader().defaultSectionSize()
        )
        self.table.setFixedHeight(height + 2 * self.table.frameWidth())
