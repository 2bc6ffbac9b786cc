"""Nuclei as objects: a segmentation with its instance map and per-nucleus counts
(:func:`segment_nuclei_and_measure`), and why it may find none. Its export is ``export.py``'s."""

from __future__ import annotations

import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..analysis.measurements import instance_statistics
from ..inference.instances import DEFAULT_MIN_AREA_UM2, instance_method, nuclei_of, object_classes
from ..inference.segmentation import segment
from ..inference.tiling import DEFAULT_TILE
from ..io.pyramid import build_pyramid
from ..runtime.events import CancelFlag


def no_nuclei_advice(image_name: str) -> str:
    """Why a segmentation may find no nucleus, and what to do."""
    return (
        f"The model found no nuclei in {image_name}. A model only knows images like the ones it was "
        "trained on; for other scanners, stains or magnifications, check the image's pixel size, or "
        "train a base model on your own annotations (no model + Train), with stain and scale jitter "
        "under Advanced."
    )


@dataclass
class SegmentedNuclei:
    """A segmentation as objects: the class map of pixels (an array, or its on-disk pyramid
    [level 0, …]), the nuclei (:class:`~napari_cinuseg.inference.instances.Nuclei`: instance map
    and classes), one statistics row per class counted per nucleus, and ``object_map``, the class
    map of the nuclei (each nucleus whole in its one class,
    :func:`~napari_cinuseg.inference.instances.object_classes`; an array, or its on-disk pyramid).
    ``separation``: the model's learned distance map (uint8 0..255, an array or a zarr array on
    disk) that split the nuclei, for a model with a separation head; else None."""

    class_map: object
    nuclei: object
    statistics: list
    object_map: object
    separation: object = None


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
    instances: str = "auto",
    device: str = "auto",
) -> Generator:
    """Segment ``pixels`` (an RGB array-like, on ``device``), with the nuclei as objects
    (inference/instances.py) and the counts per nucleus: returns a :class:`SegmentedNuclei` (with
    ``out``, a ``.zarr``, the class map is its on-disk pyramid [level 0, level 1, …]), or None when
    cancelled (nothing is left on disk). ``instances``: how the nuclei are split, as ``cinuseg
    segment --instances`` (:func:`~napari_cinuseg.inference.instances.instance_method`): by
    default the model's own, its learned distance map where it has a separation head (written
    beside the class map as it is segmented), else the watershed on the class map. With ``out``
    the instance map goes to ``<out>.instances.zarr`` beside the class map, the class map of the
    nuclei to ``<out>.objects.zarr`` with its pyramid, and the learned distance map to
    ``<out>.separation.zarr``. ``min_area_um2``: objects below it are dropped (default 3 µm²;
    with the pixel size unknown 0.25 µm/px is assumed, and ``nuclei.note`` says so)."""
    method = instance_method(model.network.has_separation, instances)
    stem = str(out).removesuffix(".zarr") if out is not None else None
    separation, sep_path = None, Path(stem + ".separation.zarr") if stem and method == "distance" else None
    if method == "distance":
        h, w = (int(s) for s in pixels.shape[:2])
        separation = _separation_map(h, w, sep_path)
    try:
        result = yield from segment(
            model,
            pixels,
            tile=tile,
            overlap=overlap,
            image_pixel_size=image_pixel_size,
            out=out,
            separation_out=separation,
            cancel=cancel,
            device=device,
        )
    except BaseException:
        if sep_path is not None:
            shutil.rmtree(sep_path, ignore_errors=True)
        raise
    if result is None:
        if sep_path is not None:
            shutil.rmtree(sep_path, ignore_errors=True)
        return None
    class_map = build_pyramid(result) if isinstance(result, Path) else result
    level0 = class_map[0] if isinstance(class_map, list) else class_map
    nuclei = nuclei_of(
        level0,
        pixel_size_um=image_pixel_size,
        method=method,
        separation=separation,
        out=Path(stem + ".instances.zarr") if stem else None,
        min_area_um2=DEFAULT_MIN_AREA_UM2 if min_area_um2 is None else min_area_um2,
    )
    if isinstance(nuclei.labels, Path):
        nuclei.labels = zarr.open_array(str(nuclei.labels), mode="r")
    stats = instance_statistics(nuclei.labels, nuclei.classes, model.class_names, image_pixel_size)
    if not isinstance(class_map, list):  # in memory
        object_map = object_classes(nuclei.labels, nuclei.classes)
    else:
        object_map = build_pyramid(object_classes(nuclei.labels, nuclei.classes, out=Path(stem + ".objects.zarr")))
    return SegmentedNuclei(class_map, nuclei, stats, object_map, separation)


def _separation_map(h: int, w: int, path: Path | None):
    """The learned distance map that segmentation fills: uint8 (H, W) in memory, or a zarr array
    at ``path`` (refused if it exists) for a class map written to disk."""
    if path is None:
        return np.zeros((h, w), np.uint8)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another output or delete it")
    return zarr.open_array(str(path), mode="w", shape=(h, w), chunks=(min(h, 1024), min(w, 1024)), dtype="uint8")
