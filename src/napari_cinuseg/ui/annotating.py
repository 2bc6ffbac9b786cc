"""The panel's annotation part: a layer to paint a new class on, its save beside the model as a
labels TIFF and its reopening, and the engine's training pairs made from it (a mixin of the
panel, which gives it ``viewer``, ``model``, ``storage``, ``class_section`` and ``_say``)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..annotations import annotation_file, read_annotation, save_annotation
from ..model.file import BUNDLED_MODEL
from ..model.segmenter import check_class_name, check_colour
from ..plugin.layer_metadata import ANNOTATION_KEY
from . import annotation_layers, layers


class AnnotationsHost:
    def _new_class(self) -> tuple[str, str]:
        """The class to paint: a new one (its name checked, the colour field's colour), or one the
        current model has (its own name and colour): painting it teaches that class further."""
        typed = self.class_section.name.text().strip()
        for c in self.model.classes if self.model else []:
            if typed and c.name.lower() == typed.lower():
                return c.name, c.colour
        return check_class_name(typed, []), check_colour(self.class_section.colour.text())

    def _continues(self, name: str) -> bool:
        """Whether painting ``name`` continues a class the current model has (a refining step)."""
        return self.model is not None and name in self.model.class_names

    def _corrections(self, name: str) -> list[tuple[str, str]]:
        """(name, colour) of the model's classes besides ``name``: painted from label 3 on, they
        correct what the model calls a nucleus."""
        return [(c.name, c.colour) for c in self.model.classes if c.name != name] if self.model else []

    def add_annotation_layer(self):
        try:
            name, colour = self._new_class()
            image = self.class_section.image_layer(self.viewer)
            corrections = self._corrections(name)
            layer = annotation_layers.add_annotation_layer(
                self.viewer, image, name, colour, self.class_section.exhaustive.isChecked(), corrections=corrections
            )
            layers.reserve_region(self.viewer, image.name, "step result", layers.PREVIEW_TITLE)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        self._follow_paint(layer)
        more = ""
        if self._continues(name):
            more = f" The model has {name}: the step teaches it further, and adds no class."
        fixes = f"; a nucleus the model calls wrongly, with its class ({', '.join(n for n, _ in corrections)})"
        self._say(
            f"Choose what to paint under Paint: {name}, background"
            f"{fixes if corrections else ''}. Elsewhere the step keeps what the current model finds.{more}"
        )
        return layer

    def _follow_paint(self, layer) -> None:
        """The Paint choices of ``layer`` by name; choosing one sets the brush's label, and the
        brush's label set in napari shows in the choice. A click on a nucleus paints it too
        (ui/clicking.py)."""
        names = annotation_layers.paint_names(layer.metadata[ANNOTATION_KEY])
        self.class_section.show_paint_choices(names, layer.selected_label)

        def chosen(index: int) -> None:
            label = self.class_section.paint.itemData(index)
            if label is not None:
                layer.selected_label = int(label)

        def brushed(event=None) -> None:
            index = self.class_section.paint.findData(int(layer.selected_label))
            if index >= 0 and index != self.class_section.paint.currentIndex():
                self.class_section.paint.blockSignals(True)
                self.class_section.paint.setCurrentIndex(index)
                self.class_section.paint.blockSignals(False)

        try:
            self.class_section.paint.currentIndexChanged.disconnect()
        except (TypeError, RuntimeError):  # nothing connected yet
            pass
        self.class_section.paint.currentIndexChanged.connect(chosen)
        layer.events.selected_label.connect(brushed)
        self._follow_clicks(layer)

    def _choose_annotation_file(self) -> None:
        folder = Path(self.model.source_path).parent if self.model and self.model.source_path else self.storage.models
        path, _ = QFileDialog.getOpenFileName(
            self, "Open an annotation", str(folder), "CiNuSeg annotations (*.annotation.tif);;TIFF (*.tif *.tiff)"
        )
        if path:
            self.open_annotation(path)

    def open_annotation(self, path):
        """An annotation saved by :meth:`save_annotations`, as an annotation layer over the open
        image it names (its class in the Name field); None, with a message, if it cannot be."""
        path = Path(path)
        try:
            labels, info = read_annotation(path)
            if info["image"] not in self.viewer.layers:
                raise ValueError(
                    f"{path.name} was painted on the image {info['image']!r}, which is not open; open it first, "
                    "then the annotation"
                )
            image = self.viewer.layers[info["image"]]
            colour = info.get("colour") or self.class_section.colour.text()
            known = {c.name: c.colour for c in self.model.classes} if self.model else {}
            fixes = [(n, known.get(n, "#808080")) for n in info.get("corrections", [])]
            layer = annotation_layers.add_annotation_layer(
                self.viewer, image, info["class"], colour, False, data=labels, corrections=fixes
            )
            layers.reserve_region(self.viewer, image.name, "step result", layers.PREVIEW_TITLE)
        except (ValueError, OSError) as exc:
            self._say(str(exc), error=True)
            return None
        self.class_section.name.setText(info["class"])
        self.class_section.colour.setText(colour)
        self.class_section.image.setCurrentText(image.name)
        self._follow_paint(layer)
        self._say(f"Opened {path.name}: {info['class']} on {image.name}; paint on, then Train.")
        return layer

    def annotation_folder_model(self) -> Path:
        """The model file annotations are saved beside: the current model's, or for the bundled
        model (or none) a name in the models folder."""
        source = Path(self.model.source_path) if self.model is not None and self.model.source_path else None
        if source is None or source.resolve() == BUNDLED_MODEL.resolve():
            self.storage.models.mkdir(parents=True, exist_ok=True)
            return Path(self.storage.models) / (source.name if source else "no-model.cinuseg.pt")
        return source

    def save_annotations(self, model_path=None, class_name: str | None = None) -> list[Path]:
        """Every annotation layer of the class (the Name field's) as a labels TIFF beside the
        model (``<model>.<image>.annotation.tif``); returns the files written."""
        name = class_name or self.class_section.name.text().strip()
        found = annotation_layers.annotation_layers(self.viewer, name or None)
        if not found:
            self._say(f"no annotation layer of {name!r} to save" if name else "no annotation layer to save", error=True)
            return []
        model_path = Path(model_path) if model_path else self.annotation_folder_model()
        written = []
        try:
            for layer in found:
                info = layer.metadata[ANNOTATION_KEY]
                out = annotation_file(model_path, info["image"])
                written.append(
                    save_annotation(
                        out, layer.data, info["image"], info["class"], info.get("colour"), info.get("corrections", ())
                    )
                )
        except (OSError, ValueError) as exc:
            self._say(f"the annotation could not be saved: {exc}", error=True)
            return written
        if class_name is None:
            self._say("Saved " + ", ".join(str(w) for w in written))
        return written

    def training_pairs(self, class_name: str) -> tuple[list, list[str]]:
        """Every annotation layer of this class, as engine training pairs (headless: annotations),
        and the model's classes they correct (targets 2, 3, …)."""
        pairs, self.last_crops, corrections = annotation_layers.annotation_pairs(
            self.viewer, class_name, self.class_section.exhaustive.isChecked()
        )
        return pairs, corrections
