"""The panel's segmentation part: Segment image (the session's nuclei, in a worker), its class and
nucleus layers (one class per nucleus) with the table of counts, and Export (masks, per-nucleus table and QuPath
GeoJSON). A mixin of the panel, which gives it ``viewer``, ``model``, ``storage``, the sections,
``image_pixel_size``, ``device_name``, ``scroll``, ``_start_job``, ``_remember`` and ``_say``."""

from __future__ import annotations

import threading
from pathlib import Path

from napari.utils import notifications
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from ..inference.tiling import panel_overlap
from ..plugin.layer_metadata import RESULT_KEY, layer_pixel_size
from ..runtime.events import Cancelled, ExportProgress, MemoryReduced, SegmentFinished, TileProgress
from ..session.export import export_nuclei
from ..session.nuclei import no_nuclei_advice, segment_nuclei_and_measure
from ..session.storage import needs_disk, slug
from . import layers


class SegmentingHost:
    # --- 4. segmentation ------------------------------------------------------------------
    def start_segmentation(self):
        try:
            if self.model is None:
                raise ValueError("choose or train a model first")
            image = self.class_section.image_layer(self.viewer)
            pixels = layers.level0(image)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        self.cancel_event = cancel = threading.Event()
        model, px, tile, device = (
            self.model,
            self.image_pixel_size(),
            self.segment_section.tile.value(),
            self.device_name(),
        )
        # A slide (a lazy layer) or a large image: the class map goes to disk tile by tile, with a
        # pyramid, and is shown lazily; a small image's stays in memory.
        out = self.storage.result_path(image.name, model) if needs_disk(pixels) else None

        def run():
            return (
                yield from segment_nuclei_and_measure(
                    model,
                    pixels,
                    tile=tile,
                    overlap=panel_overlap(tile),
                    image_pixel_size=px,
                    out=out,
                    cancel=cancel,
                    device=device,
                )
            )

        self._remember()
        self._say(f"Segmenting {image.name}…" + (f" (masks written to {out})" if out else ""))
        return self._start_job(run, self._on_segment_event, lambda result: self.show_result(image.name, result, model))

    def _on_segment_event(self, ev) -> None:
        if isinstance(ev, (TileProgress, ExportProgress)):
            self.segment_section.progress.setRange(0, ev.total)  # a total of 0: busy, with no count (measuring nuclei)
            self.segment_section.progress.setValue(ev.done)
        elif isinstance(ev, (Cancelled, MemoryReduced)):
            self._say(ev.message)
        elif isinstance(ev, SegmentFinished):
            self._say(f"Segmented in {ev.seconds:.1f} s ({ev.tiles} tiles, {ev.skipped} without tissue skipped)")

    def show_result(self, image_name: str, result, model=None) -> None:
        """The nuclei in their classes, the class map of pixels and the nuclei as layers
        (layers.add_result_layers: one class per nucleus) and the table of nucleus counts and
        areas, scrolled into sight; says why when no nucleus was found. ``result``: a
        :class:`~napari_cinuseg.session.nuclei.SegmentedNuclei`."""
        if result is None:
            return
        model = model or self.model
        layers.add_result_layers(
            self.viewer,
            image_name,
            result.class_map,
            model,
            self.image_pixel_size(),
            nuclei=result.nuclei,
            object_map=result.object_map,
            separation=result.separation,
        )
        rows = result.statistics
        self.segment_section.show_statistics(rows)
        self._show_table()
        if result.nuclei.note:
            self._say(result.nuclei.note)
        if rows and not any(row["nuclei"] for row in rows):  # say why, rather than show empty layers
            self._say(no_nuclei_advice(image_name))
            notifications.show_warning(self.status.text())

    def _show_table(self) -> None:
        """The table of counts scrolled into sight, once the panel has laid out what changed (a
        longer message below the sections shrinks their view)."""
        QTimer.singleShot(0, lambda: self.scroll.ensureWidgetVisible(self.segment_section.table))

    # --- export ---------------------------------------------------------------------------
    def _choose_export_file(self) -> None:
        try:
            layer = layers.result_layer(self.viewer)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export masks", f"{slug(layer.name)}.masks.tif", "TIFF (*.tif *.tiff)"
        )
        if path:
            self.export_to(path, layer)

    def export_to(self, path, layer=None):
        """Export the result layer to ``path`` (pyramidal OME-TIFF), its per-nucleus CSV and a
        QuPath GeoJSON of the nucleus outlines beside it, in a worker with progress; returns the
        worker (None if refused). ``self.last_export`` is the masks file once it is written."""
        try:
            layer = layer or layers.result_layer(self.viewer)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        info = layer.metadata[RESULT_KEY]
        data = layer.data[0] if layer.multiscale else layer.data  # zarr level 0: written tile by tile
        px, path = layer_pixel_size(layer.metadata), Path(path)
        self.last_export = None

        def run():
            yield ExportProgress(0, 0)
            nuclei = layers.nuclei_of_result(self.viewer, layer)
            return (
                yield from export_nuclei(
                    data,
                    nuclei,
                    path,
                    info["class_names"],
                    info["colours"],
                    info["model_id"],
                    pixel_size=px,
                    overwrite=True,
                    measure_in_process=True,
                )
            )

        def done(result) -> None:
            self.last_export = result[0]
            self._say(f"Exported {result[0]}, the per-nucleus table {result[1].name} and {result[2].name} for QuPath")
            self._show_table()

        self._say(f"Exporting {path.name}…")
        return self._start_job(run, self._on_segment_event, done)
