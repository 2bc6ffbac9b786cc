"""Nuclei as objects: a segmentation with its instance map and per-nucleus counts
(:func:`segment_nuclei_and_measure`), its export with a per-nucleus table and a QuPath GeoJSON
(:func:`export_nuclei`), and the one rule for where a class map goes (memory or disk)."""

from __future__ import annotations

import pickle
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..analysis.measurements import instance_statistics, measure_instances_to_csv
from ..inference.instances import DEFAULT_MIN_AREA_UM2, nuclei_of
from ..inference.segmentation import segment
from ..inference.tiling import DEFAULT_TILE
from ..io.export import export_masks_job
from ..io.geojson import write_geojson
from ..io.images import IN_MEMORY_LIMIT_PX
from ..io.pyramid import build_pyramid
from ..runtime.events import CancelFlag, ExportProgress, relay
from ..runtime.processes import run_in_process
from .storage import geojson_path, nuclei_csv_path


def class_map_on_disk(height: int, width: int, *, lazy: bool = False, limit: int | None = None) -> bool:
    """The one rule for where a class map goes: on disk for a lazy image (a slide layer) or one
    over ``limit`` pixels (default ``IN_MEMORY_LIMIT_PX``), else in memory."""
    return lazy or height * width > (IN_MEMORY_LIMIT_PX if limit is None else limit)


def needs_disk(pixels) -> bool:
    """:func:`class_map_on_disk` for an image layer's pixels (a numpy array is in memory)."""
    return class_map_on_disk(pixels.shape[0], pixels.shape[1], lazy=not isinstance(pixels, np.ndarray))


def no_nuclei_advice(image_name: str) -> str:
    """Why a segmentation may find no nucleus, and what to do."""
    return (
        f"The model found no nuclei in {image_name}. A model only knows images like the ones it was "
        "trained on; for other scanners, stains or magnifications, check the image's pixel size, or "
        "train a base model on your own annotations (no model + Train), with stain and scale jitter "
        "under Advanced."
    )


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


@dataclass
class SegmentedNuclei:
    """A segmentation as objects: the class map (an array, or its on-disk pyramid [level 0, …]),
    the nuclei (:class:`~napari_cinuseg.inference.instances.Nuclei`: instance map and classes) and
    one statistics row per class counted per nucleus."""

    class_map: object
    nuclei: object
    statistics: list


def segment_nuclei_and_measure(
    model,
    pixels,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = 64,
    image_pixel_size: float | None = None,
    out: str | Path | None = None,
    cancel: CancelFlag = None,
    min_area_um2: float | None = None,
    method: str = "watershed",
    device: str = "auto",
) -> Generator:
    """Segment ``pixels`` (on ``device``), with the nuclei as objects (inference/instances.py) and
    the counts per nucleus: returns a :class:`SegmentedNuclei` (with ``out``, a ``.zarr``, the
    class map is its on-disk pyramid [level 0, level 1, …]), or None when cancelled (nothing is
    left on disk). With ``out`` (a ``.zarr``) the instance map
    goes to ``<out>.instances.zarr`` beside the class map. ``min_area_um2``: objects below it are
    dropped (default 3 µm²; with the pixel size unknown 0.25 µm/px is assumed, and
    ``nuclei.note`` says so)."""
    result = yield from segment(
        model,
        pixels,
        tile=tile,
        overlap=overlap,
        image_pixel_size=image_pixel_size,
        out=out,
        cancel=cancel,
        device=device,
    )
    if result is None:
        return None
    class_map = build_pyramid(result) if isinstance(result, Path) else result
    level0 = class_map[0] if isinstance(class_map, list) else class_map
    inst_out = Path(str(out).removesuffix(".zarr") + ".instances.zarr") if out is not None else None
    nuclei = nuclei_of(
        level0,
        pixel_size_um=image_pixel_size,
        method=method,
        out=inst_out,
        min_area_um2=DEFAULT_MIN_AREA_UM2 if min_area_um2 is None else min_area_um2,
    )
    if isinstance(nuclei.labels, Path):
        nuclei.labels = zarr.open_array(str(nuclei.labels), mode="r")
    stats = instance_statistics(nuclei.labels, nuclei.classes, model.class_names, image_pixel_size)
    return SegmentedNuclei(class_map, nuclei, stats)


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
