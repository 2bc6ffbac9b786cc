"""What the panel remembers between sessions (Qt settings): every field a section names in its
``remembered()`` (the training and segmentation fields, the device, the live preview, the
method's settings), and the last model file. A value that no longer fits its field (a device no
longer there, a number out of range) leaves the field as it is."""

from __future__ import annotations

from qtpy.QtWidgets import QAbstractButton, QComboBox, QGroupBox, QSpinBox


def _get(widget):
    if isinstance(widget, QComboBox):
        data = widget.currentData()
        return widget.currentText() if data is None else data
    if isinstance(widget, (QAbstractButton, QGroupBox)):
        return widget.isChecked()
    if isinstance(widget, QSpinBox):
        return widget.value()
    return widget.value  # a magicgui value widget


def _set(widget, text) -> None:
    text = str(text)
    if isinstance(widget, QComboBox):
        index = widget.findData(text)
        index = widget.findText(text) if index < 0 else index
        if index >= 0:
            widget.setCurrentIndex(index)
    elif isinstance(widget, (QAbstractButton, QGroupBox)):
        widget.setChecked(text.lower() == "true")
    elif isinstance(widget, QSpinBox):
        widget.setValue(int(float(text)))
    else:
        widget.value = float(text)


def restore(settings, *sections) -> str:
    """Put the remembered values into the sections' fields; returns the last model's path."""
    for section in sections:
        for key, widget in section.remembered().items():
            value = settings.value(key)
            if value is not None:
                try:
                    _set(widget, value)
                except (TypeError, ValueError):
                    pass  # a value from an older panel that no longer fits: the field's default
    return str(settings.value("model_path", "") or "")


def remember(settings, *sections, model=None) -> None:
    for section in sections:
        for key, widget in section.remembered().items():
            settings.setValue(key, _get(widget))
    if model is not None and model.source_path:
        settings.setValue("model_path", model.source_path)
