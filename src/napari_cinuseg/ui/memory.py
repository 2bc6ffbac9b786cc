"""What the panel remembers between sessions (Qt settings): the training and segmentation
fields, the device, the live preview, the method's settings and the last model file."""

from __future__ import annotations


def restore(settings, train, segment) -> str:
    """Put the remembered values into the sections' fields; returns the last model's path."""
    s = settings
    train.preset.setCurrentText(str(s.value("preset", "cpu")))
    train.iterations.setValue(int(s.value("iterations", train.iterations.value())))
    train.crop.setValue(int(s.value("crop", train.crop.value())))
    segment.tile.setValue(int(s.value("tile", segment.tile.value())))
    train.advanced.setChecked(str(s.value("advanced", "false")).lower() == "true")
    train.preview.setChecked(str(s.value("preview", "true")).lower() == "true")
    device = train.device_choice.findData(str(s.value("device", "auto")))
    train.device_choice.setCurrentIndex(max(device, 0))  # a device no longer there: auto
    for name, field in train.hyper.items():
        field.value = float(s.value(f"hyper/{name}", field.value))
    return str(s.value("model_path", "") or "")


def remember(settings, train, segment, model) -> None:
    s = settings
    s.setValue("preset", train.preset.currentText())
    s.setValue("iterations", train.iterations.value())
    s.setValue("crop", train.crop.value())
    s.setValue("tile", segment.tile.value())
    s.setValue("advanced", train.advanced.isChecked())
    s.setValue("preview", train.preview.isChecked())
    s.setValue("device", train.device_name())
    for name, field in train.hyper.items():
        s.setValue(f"hyper/{name}", field.value)
    if model is not None and model.source_path:
        s.setValue("model_path", model.source_path)
