"""Nuclei as objects: a segmentation with its instance map and per-nucleus counts
(:func:`segment_nuclei_and_measure`), and why it may find none. Its export is ``export.py``'s."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import zarr

from ..analysis.measurements import instance_statistics
from ..inference.instances import DEFAULT_MIN_AREA_UM2, nuclei_of, object_classes
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
    :func:`~napari_cinuseg.inference.instances.object_classes`; an array, or its on-disk pyramid)."""

    class_map: object
    nuclei: object
    statistics: list
    object_map: object


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
    goes to ``<out>.instances.zarr`` beside the class map, and the class map of the nuclei to
    ``<out>.objects.zarr`` with its pyramid. ``min_area_um2``: objects below it are
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
    if not isinstance(class_map, list):  # in memory
        object_map = object_classes(nuclei.labels, nuclei.classes)
    else:
        object_map = build_pyramid(
            object_classes(nuclei.labels, nuclei.classes, out=Path(str(out).removesuffix(".zarr") + ".objects.zarr"))
        )
    return SegmentedNuclei(class_map, nuclei, stats, object_map)
