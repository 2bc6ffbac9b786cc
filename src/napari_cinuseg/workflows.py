"""What the napari panel and the command line both decide, decided once, headless:

- where new models and segmentation results go, and how they are named (:class:`Storage`);
- a base step or an incremental one for a painted class (:func:`learn_class`);
- a class map in memory or on disk (:func:`class_map_on_disk`, :func:`needs_disk`);
- nuclei as objects: segmentation with an instance map (:func:`segment_nuclei_and_measure`) and
  its export with a per-instance table and a QuPath GeoJSON (:func:`export_nuclei`);
- the devices a user can choose (:func:`device_choices`);
- a step's result before it is kept: a candidate file (:meth:`Storage.candidate_path`,
  :meth:`Storage.keep`); its live preview and review are ``step_review.py``'s.

Each long job is a generator of typed events (:mod:`napari_cinuseg.runtime.events`) that returns its
result, like every job of the engine.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .inference.tiling import DEFAULT_TILE
from .io.images import IN_MEMORY_LIMIT_PX
from .runtime.events import CancelFlag, ExportProgress, relay

#: the budget of a step from painted nuclei, the panel's default (300 iterations: about 3 minutes
#: on two CPU cores)
STEP_ITERATIONS = 300
#: the method of a step the panel trains
STEP_METHOD = "cinuseg"


def slug(text: str) -> str:
    """``text`` as a safe, lower-case file-name part."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "class"


def _free_name(folders, stem: str, suffix: str) -> str:
    """``stem + suffix``, or ``stem-2 + suffix``, ``stem-3``, …: the first name none of
    ``folders`` holds."""
    name, n = stem + suffix, 1
    while any((Path(f) / name).exists() for f in folders):
        n += 1
        name = f"{stem}-{n}{suffix}"
    return name


def _home(kind: str) -> Path:
    return Path.home() / ".napari-cinuseg" / kind


@dataclass
class Storage:
    """Folders for new models and for the on-disk class maps of large images; created on use.
    The defaults are ``~/.napari-cinuseg/models`` and ``~/.napari-cinuseg/results``."""

    models: Path = field(default_factory=lambda: _home("models"))
    results: Path = field(default_factory=lambda: _home("results"))

    def new_model_path(self, prior, class_name: str) -> Path:
        """``<prior's name or 'base'>+<class>-<time>.cinuseg.pt``, a name no model in the models
        folder or its candidates has (``-2``, ``-3``, … after the time when two steps end in the
        same second): never a prior's file, never a result waiting to be kept."""
        self.models.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = slug(Path(prior.source_path).name.split(".")[0]) if prior is not None and prior.source_path else "base"
        folders = (Path(self.models), Path(self.models) / "candidates")
        return Path(self.models) / _free_name(folders, f"{base}+{slug(class_name)}-{stamp}", ".cinuseg.pt")

    def candidate_path(self, prior, class_name: str) -> Path:
        """Where a step's result waits until the user keeps it (:meth:`keep`) or discards it:
        ``<models>/candidates/``, under the name it will be kept as."""
        name = self.new_model_path(prior, class_name).name
        folder = Path(self.models) / "candidates"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def keep(self, candidate: str | Path) -> Path:
        """Move a kept candidate into the models folder; returns its new path."""
        candidate = Path(candidate)
        dest = Path(self.models) / candidate.name
        if dest.exists():
            raise FileExistsError(f"{dest} exists; the candidate stays at {candidate}")
        os.replace(candidate, dest)
        return dest

    def result_path(self, image_name: str, model) -> Path:
        """``<image>-<model id>-<time>.zarr`` for a class map built on disk."""
        self.results.mkdir(parents=True, exist_ok=True)
        stem = f"{slug(image_name)}-{model.id[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
        return Path(self.results) / _free_name((Path(self.results),), stem, ".zarr")


def learn_class(
    prior,
    pairs: Sequence,
    name: str,
    colour: str,
    settings,
    *,
    out: str | Path,
    cancel: CancelFlag = None,
    pixel_size: float | None = None,
) -> Generator:
    """Teach a painted class: a base model (step 0) when there is no prior, which records the
    painted image's ``pixel_size``; else one CiNuSeg step against the frozen prior, in the prior's
    network."""
    from .training.steps import train_base, train_step

    if prior is None:
        return (
            yield from train_base(
                pairs, [name], settings, colours=[colour], out=out, cancel=cancel, pixel_size=pixel_size
            )
        )
    settings = settings.for_network(prior.arch)
    return (
        yield from train_step(
            prior, pairs, [name], settings, method=STEP_METHOD, colours=[colour], out=out, cancel=cancel
        )
    )


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


def nuclei_csv_path(masks_path: str | Path) -> Path:
    """The per-nucleus table beside a masks file: ``x.masks.tif`` → ``x.nuclei.csv``."""
    masks_path = Path(masks_path)
    stem = masks_path.name.removesuffix(".tiff").removesuffix(".tif").removesuffix(".ome").removesuffix(".masks")
    return masks_path.with_name(stem + ".nuclei.csv")


def _pickles(obj) -> bool:
    """Whether ``obj`` can be sent to another process (a numpy map, or a zarr array on disk; not
    a map opened from a TIFF through its zarr view)."""
    import pickle

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
    from .analysis.measurements import instance_statistics
    from .inference.instances import DEFAULT_MIN_AREA_UM2, nuclei_of
    from .inference.segmentation import segment
    from .io.pyramid import build_pyramid

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
        import zarr

        nuclei.labels = zarr.open_array(str(nuclei.labels), mode="r")
    stats = instance_statistics(nuclei.labels, nuclei.classes, model.class_names, image_pixel_size)
    return SegmentedNuclei(class_map, nuclei, stats)


def geojson_path(masks_path: str | Path) -> Path:
    """The QuPath GeoJSON beside a masks file: ``x.masks.tif`` → ``x.geojson``."""
    csv_path = nuclei_csv_path(masks_path)
    return csv_path.with_name(csv_path.name.removesuffix(".nuclei.csv") + ".geojson")


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
    from .analysis.measurements import measure_instances_to_csv
    from .io.export import export_masks_job
    from .io.geojson import write_geojson

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
            from .runtime.processes import run_in_process

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


# --- devices ------------------------------------------------------------------------------------


def device_choices() -> list[tuple[str, str]]:
    """(what to show, device name) for each device a step and a segmentation can run on here:
    auto, the CPU, each CUDA GPU, and MPS where there is one."""
    import torch

    from .runtime import devices

    out = [
        (f"auto: {devices.describe(devices.resolve_device('auto'))}", "auto"),
        (devices.describe(torch.device("cpu")), "cpu"),
    ]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        out.append((f"GPU {i}: {torch.cuda.get_device_name(i)}", f"cuda:{i}"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(("MPS (Apple GPU)", "mps"))
    return out
