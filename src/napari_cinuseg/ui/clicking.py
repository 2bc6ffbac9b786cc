"""The panel's click on a nucleus: with "Click a nucleus to paint it whole" ticked, the annotation
layer is in napari's pan/zoom mode (a drag pans), and a click on it paints the current model's
whole nucleus under the click with the label chosen under Paint (session/picking.py). The nuclei
are the image's segmentation by the current model where the panel made one (Segment image), else
a window about the click, segmented in a worker while the click and any further ones wait.

A mixin of the panel, which gives it ``viewer``, ``model``, ``class_section``,
``segment_section``, ``image_pixel_size``, ``device_name``, ``worker``, ``_start_job`` and
``_say``."""

from __future__ import annotations

import threading

import numpy as np

from ..inference.tiling import panel_overlap
from ..plugin.layer_metadata import ANNOTATION_KEY, NUCLEI_KEY, RESULT_KEY, layer_pixel_size
from ..runtime.events import Cancelled, MemoryReduced, TileProgress
from ..session.picking import (
    Click,
    NucleusClicks,
    SegmentedArea,
    checked_label,
    pick_nucleus,
    pick_sentence,
    picks_sentence,
    same_pixel_size,
    segment_area,
)
from . import layers
from .annotation_layers import paint_names

#: Screen pixels a press may move before its release and still be a click, not a drag (napari's
#: Points layer's own threshold for adding a point).
CLICK_DRAG_PX = 5


def click_callback(on_click):
    """A napari mouse-drag callback for an annotation layer: a left press and release without a
    modifier key, moved less than :data:`CLICK_DRAG_PX`, in pan/zoom mode, calls
    ``on_click(layer, position)`` (the layer's data coordinates); a longer drag pans, as it does
    without the callback. In any other mode (the brush) it does nothing."""

    def click(layer, event):
        if layer.mode != "pan_zoom" or event.button != 1 or event.modifiers:
            return
        start = np.asarray(event.pos, dtype=float)
        yield
        while event.type == "mouse_move":
            if np.linalg.norm(np.asarray(event.pos, dtype=float) - start) < CLICK_DRAG_PX:
                event.handled = True  # a hand's jitter does not pan
            yield
        if np.linalg.norm(np.asarray(event.pos, dtype=float) - start) < CLICK_DRAG_PX:
            on_click(layer, layer.world_to_data(event.position))

    return click


class ClickingHost:
    def _init_clicks(self) -> None:
        self._clicks: dict[str, NucleusClicks] = {}  # by image name
        self._click_layer = None  # the annotation layer the Click box acts on
        self._click_job = False  # a window is being segmented for clicks
        self._on_click = click_callback(self.click_nucleus)
        self.class_section.click.toggled.connect(self._click_toggled)

    def _follow_clicks(self, layer) -> None:
        """``layer`` (a new annotation layer, in paint mode) is the one the Click box acts on;
        the box starts unticked."""
        if self._on_click not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._on_click)
            layer.events.mode.connect(self._click_mode_changed)
        self._click_layer = layer
        box = self.class_section.click
        box.blockSignals(True)
        box.setChecked(False)
        box.blockSignals(False)
        box.setEnabled(True)

    def _click_toggled(self, on: bool) -> None:
        layer = self._click_layer
        if layer is None or layer not in self.viewer.layers:
            self.class_section.click.setChecked(False)
            self.class_section.click.setEnabled(False)
            return
        if on:
            self.viewer.layers.selection.active = layer
            layer.mode = "pan_zoom"
            self._say(
                "Click a nucleus: the model's whole nucleus there is painted with the Paint label (a drag pans). "
                "Untick the box, or choose the brush, to paint by hand."
            )
        elif layer.mode == "pan_zoom":
            layer.mode = "paint"

    def _click_mode_changed(self, event) -> None:
        """Another mode chosen for the layer (the brush, the eraser, …) unticks the Click box."""
        layer = event.source
        if layer is self._click_layer and layer.mode != "pan_zoom" and self.class_section.click.isChecked():
            self.class_section.click.setChecked(False)

    def stop_clicks(self) -> None:
        """The annotation layers stop taking clicks (the panel closes)."""
        on_click = getattr(self, "_on_click", None)
        if on_click is None:  # closed before its clicks were set up
            return
        for layer in list(self.viewer.layers):
            if on_click in getattr(layer, "mouse_drag_callbacks", []):
                layer.mouse_drag_callbacks.remove(on_click)
                layer.events.mode.disconnect(self._click_mode_changed)
        self._click_layer = None

    # --- a click ---------------------------------------------------------------------------
    def click_nucleus(self, layer, position) -> None:
        """A click on the annotation ``layer`` at ``position`` (its data coordinates, row and
        column last): the model's nucleus there painted whole with the layer's label (one undo
        step), or said why not. Where the model has not segmented there yet, the click waits for
        a window about it, segmented in a worker."""
        if not self.class_section.click.isChecked():
            return
        point = (float(position[-2]), float(position[-1]))
        try:
            info = layer.metadata[ANNOTATION_KEY]
            names = paint_names(info)
            label = checked_label(layer.selected_label, names)
            clicks, image = self._clicks_on(info["image"])
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        if not clicks.inside(point):
            self._say("the click lies outside the image: click on a nucleus")
            return
        area = self._result_area(image, clicks) or clicks.area_for(point)
        if area is not None:
            pick = self._paint_click(layer, area, Click(point, label), clicks)
            self._say(pick_sentence(pick, names[label], self.model.class_names))
            return
        if self._click_job:  # a window is being segmented: this click waits for it, or the next one
            clicks.pending.append(Click(point, label, layer))
            self._say(f"{len(clicks.pending)} click(s) wait for the model's nuclei…")
            return
        if self.worker is not None and getattr(self.worker, "is_running", False):
            self._say(
                "The model has not segmented here yet, and the panel is busy: click again when the running job "
                "ends, or paint the nucleus by hand."
            )
            return
        clicks.pending.append(Click(point, label, layer))
        self._segment_for_clicks(clicks, image)

    def _clicks_on(self, image_name: str) -> tuple[NucleusClicks, object]:
        """The clicks of an image with the current model at its pixel size (those of another
        model or pixel size are forgotten), and its layer."""
        if self.model is None:
            raise ValueError("choose or train a model first: a click takes the model's nucleus")
        if image_name not in self.viewer.layers:
            raise ValueError(f"the image {image_name!r} of this annotation layer is no longer open")
        image = self.viewer.layers[image_name]
        shape = layers.level0(image).shape[:2]
        px = self._pixel_size_of(image)
        key = (self.model.id, px, tuple(shape))
        clicks = self._clicks.get(image_name)
        if clicks is None or clicks.key != key:
            clicks = NucleusClicks(shape, model_pixel_size=self.model.pixel_size, image_pixel_size=px, key=key)
            self._clicks[image_name] = clicks
        return clicks, image

    def _pixel_size_of(self, image) -> float | None:
        """The image's pixel size: the panel's field for the image chosen there (as Segment image
        uses it), else what the image's file says."""
        if image.name == self.class_section.image.currentText():
            return self.image_pixel_size()
        return layer_pixel_size(image.metadata)

    def _result_area(self, image, clicks: NucleusClicks) -> SegmentedArea | None:
        """The image's segmentation by the current model at the same pixel size (Segment image's
        nuclei, in memory or a slide's on disk), as one area; None where there is none."""
        for result in layers.panel_layers(self.viewer, image.name, "classes"):
            nuclei, info = result.metadata.get(NUCLEI_KEY), result.metadata.get(RESULT_KEY) or {}
            if nuclei is None or info.get("model_id") != self.model.id:
                continue
            if not same_pixel_size(clicks.key[1], layer_pixel_size(result.metadata)):
                continue
            h, w = clicks.image_shape
            return SegmentedArea((0, 0, h, w), nuclei.labels, nuclei.classes, (h, w))
        return None

    def _paint_click(self, layer, area: SegmentedArea, click: Click, clicks: NucleusClicks):
        """Paint what ``click`` takes in ``area`` into ``layer`` through napari's
        ``data_setitem`` (one undo step, the view refreshed); returns the pick."""
        pick = pick_nucleus(area, layer.data, click.point, click.label, reach=clicks.reach, radius=clicks.radius)
        if len(pick.rows):
            layer.data_setitem((pick.rows, pick.cols), click.label)
        return pick

    def _segment_for_clicks(self, clicks: NucleusClicks, image) -> None:
        """Segment a window about the first waiting click, in a worker; then paint every waiting
        click it covers, and go on with the next window while clicks still wait."""
        try:
            pixels = layers.level0(image)
        except ValueError as exc:
            clicks.pending.clear()
            self._say(str(exc), error=True)
            return
        box = clicks.window_around(clicks.pending[0].point)
        model, px, tile, device = self.model, clicks.key[1], self.segment_section.tile.value(), self.device_name()
        self.cancel_event = cancel = threading.Event()
        outcome = {}

        def run():
            return (
                yield from segment_area(
                    model,
                    pixels,
                    box,
                    tile=tile,
                    overlap=panel_overlap(tile),
                    image_pixel_size=px,
                    device=device,
                    cancel=cancel,
                )
            )

        def done(area) -> None:
            outcome["area"] = area
            if area is None or self._clicks.get(image.name) is not clicks:
                return  # cancelled, or the model or pixel size changed meanwhile
            clicks.add(area)
            picks = []
            for click in clicks.take_pending(area):
                if click.target in self.viewer.layers:
                    pick = self._paint_click(click.target, area, click, clicks)
                    picks.append((pick, paint_names(click.target.metadata[ANNOTATION_KEY])[click.label]))
            if picks:
                self._say(picks_sentence(picks, model.class_names))

        def finished() -> None:
            self._click_job = False
            if not clicks.pending:
                return
            if "area" not in outcome:  # failed: the panel said why
                clicks.pending.clear()
                return
            if outcome["area"] is None or self._clicks.get(image.name) is not clicks:
                n = len(clicks.pending)
                clicks.pending.clear()
                self._say(
                    f"{n} click(s) not painted: the search for the model's nuclei was cancelled, or the model or "
                    "the pixel size changed meanwhile; click again"
                )
                return
            self._segment_for_clicks(clicks, image)

        h, w = box[2] - box[0], box[3] - box[1]
        self._click_job = True
        worker = self._start_job(run, self._on_click_event, done)
        worker.finished.connect(finished)  # after the panel is no longer busy (_start_job's own)
        self._say(
            f"Finding the model's nuclei in {h} × {w} px of {image.name} about the click (in the background); "
            "the click is painted then."
        )

    def _on_click_event(self, ev) -> None:
        if isinstance(ev, TileProgress):
            self.segment_section.progress.setRange(0, ev.total)
            self.segment_section.progress.setValue(ev.done)
        elif isinstance(ev, (Cancelled, MemoryReduced)):
            self._say(ev.message)
