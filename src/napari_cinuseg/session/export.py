"""A segmentation's export as objects: the per-nucleus CSV, the QuPath GeoJSON, then the masks
file. Loaded without PyTorch: the napari writer and the command line export with it."""

from __future__ import annotations

import pickle
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..analysis.measurements import measure_instances_to_csv
from ..io.export import export_masks_job
from ..io.geojson import write_geojson
from ..runtime.events import ExportProgress, relay
from ..runtime.processes import run_in_process
from .storage import geojson_path, nuclei_csv_path


def _pickles(obj) -> bool:
    """Whether ``obj`` can be sent to another process (a numpy map, or a zarr array on disk; not
    a map opened from a TIFF through its zarr view)."""
    if isinstance(obj, np.ndarray):
        return True
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - any failure means: measure here
        return False
    return True


def export_nuclei(
    class_map,
    nuclei,
    path: str | Path,
    class_names: list[str],
    colours: list[str] | None,
    model_id: str | None,
    *,
    pixel_size: float | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
    geojson: bool | str | Path = True,
    downsample: float = 1.0,
    measure_in_process: bool = False,
) -> Generator:
    """Export a segmentation as objects: the per-nucleus CSV (one row per instance, ``nucleus``
    its id), the QuPath GeoJSON (``geojson``: True for ``x.geojson`` beside the masks, a path, or
    False), then the masks file (last, so a masks file on disk means all are done). Yields
    :class:`ExportProgress` (``total`` 0 while the nuclei are measured, then the tiles written);
    returns (masks, csv, geojson or None) paths. ``downsample``: level-0 pixels per pixel of the
    maps (a slide segmented at a lower level), for the GeoJSON. ``measure_in_process`` measures
    in a separate process (:mod:`.runtime.processes`): a viewer's event loop is not kept waiting
    for the GIL, at the cost of starting a process (about a second); maps that do not pickle are
    measured here."""
    path = Path(path)
    csv_path = nuclei_csv_path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name (an export never replaces a file unasked)")
    gj = (geojson_path(path) if geojson is True else Path(geojson)) if geojson else None
    new_files = [p for p in (csv_path, gj) if p is not None and not p.exists()]
    try:
        yield ExportProgress(0, 0)
        args = (nuclei.labels, nuclei.classes, list(class_names), pixel_size, csv_path)
        if measure_in_process and _pickles(nuclei.labels):
            for _ in run_in_process(measure_instances_to_csv, *args):
                yield ExportProgress(0, 0)
        else:
            measure_instances_to_csv(*args)
        if gj is not None:
            yield ExportProgress(0, 0)
            write_geojson(
                gj, nuclei.labels, nuclei.classes, list(class_names), colours, overwrite=True, downsample=downsample
            )
        meta = {
            "nuclei": nuclei.count,
            "nucleus_min_area_px": nuclei.min_area_px,
            "instances": nuclei.method,
            **(extra or {}),
        }
        job = export_masks_job(
            class_map, path, class_names, colours, model_id, extra=meta, overwrite=overwrite, pixel_size=pixel_size
        )
        return (yield from relay(job, lambda progress: ExportProgress(*progress))), csv_path, gj
    except BaseException:  # failed, cancelled or closed: no table or outlines without their masks file
        if not path.exists():
            for side in new_files:
                side.unlink(missing_ok=True)
        raise
