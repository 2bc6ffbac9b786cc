"""3. The training section: preset, iterations, device, Train and Cancel, the live loss plot and
progress in words, and the review of a step's result with Keep and Discard."""

from __future__ import annotations

import time
from collections import deque

from magicgui.widgets import Container, FloatSpinBox
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..methods import get_method
from ..runtime import devices
from ..runtime.devices import device_choices
from ..runtime.events import Progress, StepStarted
from ..runtime.setting import PANEL, offered
from ..session.att import att_numbers, att_words
from ..session.learning import STEP_ITERATIONS, STEP_METHOD
from ..session.preview import PREVIEW_EVERY_S
from ..training.settings import PRESETS, TrainSettings, preset
from .plot import LossPlot
from .widgets import Collapsible, wrapped_label


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

    def __init__(self, in_parts: bool = False):
        super().__init__("3. Train")
        #: the section's parts, made one at each ``next``: here, unless ``in_parts``, where the
        #: caller goes through them (the dock makes the panel a part per turn of the event loop)
        self.parts = self._parts()
        if not in_parts:
            for _ in self.parts:
                pass

    def _parts(self):
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
        self.crops: deque = deque(maxlen=64)
        self.att_seen = self.att_fired = 0
        yield
        self.plot = LossPlot()
        form.addRow(self.plot)
        yield
        self.plot.lay_out()
        yield
        self.review = ReviewBox()
        form.addRow(self.review)
        self.forgetting = self.review.forgetting
        yield
        self.details = Collapsible("Details")
        form.addRow(self.details)
        self.device = wrapped_label(f"Device: {devices.describe(devices.resolve_device('auto'))}")
        self.details.form.addRow(self.device)
        self.att = wrapped_label()  # the share of crops where ATT fired (eqs. 14-16)
        self.details.form.addRow(self.att)
        yield
        self.advanced, self.hyper = self._advanced()
        self.details.form.insertRow(0, self.advanced)  # first under Details
        yield

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
        self.iteration_text.setToolTip("")
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
            words = att_words(ev.crops)
            self.iteration_text.setText(
                f"iteration {ev.iteration}/{ev.total}, loss {ev.loss:.3f}, {left} left"
                + (f": {words}" if words else "")
            )
            self.iteration_text.setToolTip(att_numbers(ev.crops))
            self.plot.add(ev)
            self.crops.extend(ev.crops)
            self.att_seen += len(ev.crops)
            self.att_fired += sum(c.t_o != 1 for c in ev.crops)
            if self.att_seen:
                self.att.setText(
                    f"ATT fired on {self.att_fired / self.att_seen:.0%} of the crops so far "
                    "(new class > σ of their nuclei: old-class loss ×α_o, new-class loss ×α_n)"
                )
