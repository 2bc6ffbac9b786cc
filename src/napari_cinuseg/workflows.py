"""What the napari panel and the command line both decide, decided once, headless:

- where new models and segmentation results go, and how they are named (:class:`Storage`);
- a base step or an incremental one for a painted class (:func:`learn_class`);
- a class map in memory or on disk (:func:`class_map_on_disk`, :func:`needs_disk`);
- nuclei as objects: segmentation with an instance map (:func:`segment_nuclei_and_measure`) and
  its export with a per-instance table and a QuPath GeoJSON (:func:`export_nuclei`);
- the devices a user can choose (:func:`device_choices`);
- a step's result before it is kept: a candidate file (:meth:`Storage.candidate_path`,
  :meth:`Storage.keep`), a live preview while it trains (:func:`with_preview`) and its review
  on the painted regions, in plain words (:func:`review_step`, :class:`StepReview`).

Each long job is a generator of typed events (:mod:`napari_cinuseg.runtime.events`) that returns its
result, like every job of the engine.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Generator, Sequence

import numpy as np

from .runtime.events import CancelFlag, ExportProgress, Preview, Progress, StepStarted, relay
from .inference.tiling import DEFAULT_TILE
from .io.images import IN_MEMORY_LIMIT_PX

#: the budget of a step from painted nuclei, the panel's default (300 iterations: about 3 minutes
#: on two CPU cores)
STEP_ITERATIONS = 300


def slug(text: str) -> str:
    """``text`` as a safe, lower-case file-name part."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "class"


def _home(kind: str) -> Path:
    return Path.home() / ".napari-cinuseg" / kind


@dataclass
class Storage:
    """Folders for new models and for the on-disk class maps of large images; created on use.
    The defaults are ``~/.napari-cinuseg/models`` and ``~/.napari-cinuseg/results``."""

    models: Path = field(default_factory=lambda: _home("models"))
    results: Path = field(default_factory=lambda: _home("results"))

    def new_model_path(self, prior, class_name: str) -> Path:
        """``<prior's name or 'base'>+<class>-<time>.cinuseg.pt``: never a prior's file."""
        self.models.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = slug(Path(prior.source_path).name.split(".")[0]) if prior is not None and prior.source_path else "base"
        return Path(self.models) / f"{base}+{slug(class_name)}-{stamp}.cinuseg.pt"

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
        return Path(self.results) / f"{slug(image_name)}-{model.id[:8]}-{time.strftime('%Y%m%d-%H%M%S')}.zarr"


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
        return (yield from train_base(pairs, [name], settings, colours=[colour], out=out, cancel=cancel, pixel_size=pixel_size))
    settings = settings.for_network(prior.arch)
    return (yield from train_step(prior, pairs, [name], settings, method="cinuseg", colours=[colour], out=out, cancel=cancel))


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
        model, pixels, tile=tile, overlap=overlap, image_pixel_size=image_pixel_size, out=out, cancel=cancel, device=device
    )
    if result is None:
        return None
    class_map = build_pyramid(result) if isinstance(result, Path) else result
    level0 = class_map[0] if isinstance(class_map, list) else class_map
    inst_out = Path(str(out).removesuffix(".zarr") + ".instances.zarr") if out is not None else None
    nuclei = nuclei_of(
        level0, pixel_size_um=image_pixel_size, method=method, out=inst_out,
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
    yield ExportProgress(0, 0)
    args = (nuclei.labels, nuclei.classes, list(class_names), pixel_size, csv_path)
    if measure_in_process and _pickles(nuclei.labels):
        from .runtime.processes import run_in_process

        for _ in run_in_process(measure_instances_to_csv, *args):
            yield ExportProgress(0, 0)
    else:
        measure_instances_to_csv(*args)
    gj = None
    if geojson:
        gj = geojson_path(path) if geojson is True else Path(geojson)
        yield ExportProgress(0, 0)
        write_geojson(gj, nuclei.labels, nuclei.classes, list(class_names), colours, overwrite=True, downsample=downsample)
    meta = {"nuclei": nuclei.count, "nucleus_min_area_px": nuclei.min_area_px, "instances": nuclei.method, **(extra or {})}
    job = export_masks_job(class_map, path, class_names, colours, model_id, extra=meta, overwrite=overwrite, pixel_size=pixel_size)
    return (yield from relay(job, lambda progress: ExportProgress(*progress))), csv_path, gj


# --- devices ------------------------------------------------------------------------------------


def device_choices() -> list[tuple[str, str]]:
    """(what to show, device name) for each device a step and a segmentation can run on here:
    auto, the CPU, each CUDA GPU, and MPS where there is one."""
    import torch

    from .runtime import devices

    out = [(f"auto: {devices.describe(devices.resolve_device('auto'))}", "auto"), (devices.describe(torch.device("cpu")), "cpu")]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        out.append((f"GPU {i}: {torch.cuda.get_device_name(i)}", f"cuda:{i}"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(("MPS (Apple GPU)", "mps"))
    return out


# --- a live preview while a step trains ----------------------------------------------------------

PREVIEW_EVERY_S = 3.0  # seconds of training between two previews
PREVIEW_MAX_SIDE = 512  # a preview covers at most this much of each painted region (its centre)


def _centre_box(h: int, w: int, side: int) -> tuple[int, int, int, int]:
    y0, x0 = max((h - side) // 2, 0), max((w - side) // 2, 0)
    return y0, x0, min(y0 + side, h), min(x0 + side, w)


def preview_boxes(pairs: Sequence, max_side: int = PREVIEW_MAX_SIDE) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) in each pair's image of what the live preview covers: its centre, at most
    ``max_side`` px a side."""
    return [_centre_box(*np.asarray(p.image).shape[:2], max_side) for p in pairs]


def predict_while_training(model, image: np.ndarray) -> np.ndarray:
    """The class map of ``image`` by a model in training, on the device its weights are on,
    leaving every module's train/eval mode (frozen batch norms too) and the weights as they were."""
    import torch

    net = model.network
    modes = [(m, m.training) for m in net.modules()]
    device = next(net.parameters()).device
    net.eval()
    try:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
            return net(model.normalize(x)).logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
    finally:
        for m, mode in modes:
            m.training = mode


def with_preview(job: Generator, pairs: Sequence, every_s: float = PREVIEW_EVERY_S, max_side: int = PREVIEW_MAX_SIDE) -> Generator:
    """``job``'s events and result, and every ``every_s`` seconds of training a
    :class:`~napari_cinuseg.runtime.events.Preview`: the model's prediction of the centre
    (at most ``max_side`` px) of each pair's image, made in the job's thread between two
    iterations, so the viewer only shows it. Closing this closes ``job``."""
    boxes = preview_boxes(pairs, max_side)
    last, model = time.perf_counter(), None
    try:
        while True:
            try:
                ev = next(job)
            except StopIteration as stop:
                return stop.value
            yield ev
            if isinstance(ev, StepStarted):
                model = ev.model  # the model being trained, read only between two events
            if not isinstance(ev, Progress) or ev.iteration >= ev.total or time.perf_counter() - last < every_s:
                continue
            if model is not None:
                maps = tuple(predict_while_training(model, np.asarray(p.image)[y0:y1, x0:x1]) for p, (y0, x0, y1, x1) in zip(pairs, boxes))
                yield Preview(ev.iteration, ev.total, maps, tuple((y0, x0) for y0, x0, _, _ in boxes))
            last = time.perf_counter()
    finally:
        job.close()


# --- a step's review on its painted regions -------------------------------------------------------

KEPT_AGREEMENT = 0.8  # an old class that agrees this much with the prior is kept
SIZE_CHANGE = 1.25  # an old class whose pixels grew or shrank by more than this factor changed size


@dataclass
class StepReview:
    """What a step did where the user painted: the new model's class map of each painted region
    (``maps``), how it calls the painted nuclei of the new class, and each old class's pixels by
    the prior and by the new model, outside the painted new-class pixels."""

    class_name: str
    maps: list
    painted: int = 0  # painted nuclei (connected painted regions) of the new class
    called: int = 0  # of them, called the new class by the new model (most of their pixels)
    called_background: int = 0
    called_old: dict = field(default_factory=dict)  # old class -> painted nuclei called that class
    found: int = 0  # objects of the new class the new model finds in the painted regions
    found_median_px: float = 0.0
    painted_median_px: float = 0.0
    old_pixels: dict = field(default_factory=dict)  # old class -> (prior's pixels, new model's pixels, both)

    def agreement(self, name: str) -> float | None:
        p, n, both = self.old_pixels[name]
        return 2 * both / (p + n) if p + n else None

    def new_class_sentence(self) -> str:
        name = self.class_name
        if not self.painted:
            return f"No {name} nucleus is painted, so none could be checked."
        others = [f"{self.called_background} background"] if self.called_background else []
        others += [f"{n} {c}" for c, n in self.called_old.items() if n]
        text = f"The new model calls {self.called} of the {self.painted} painted {name} nuclei {name}"
        text += f" ({', '.join(others)})." if others else "."
        text += (
            f" In the painted regions it finds {self.found} {name} object(s), median {self.found_median_px:.0f} px"
            f" (painted nuclei: median {self.painted_median_px:.0f} px)."
        )
        if self.called * 2 < self.painted:
            text += f" Fewer than half: paint more {name} nuclei and some background, or train longer, then train again."
        return text

    def old_class_sentences(self) -> list[str]:
        """One sentence per old class: kept, shrank, grew, moved, or not measured."""
        out = []
        for c, (p, n, _) in self.old_pixels.items():
            a = self.agreement(c)
            if a is None:
                out.append(f"{c}: neither model finds it in the painted regions, so it was not checked here.")
            elif a >= KEPT_AGREEMENT:
                out.append(f"{c} is kept: the new model finds it where the prior did ({a:.0%} agreement).")
            elif n * SIZE_CHANGE < p:
                out.append(
                    f"{c} shrank: the new model marks {n / p:.0%} of the pixels the prior did ({a:.0%} agreement), "
                    f"so it may have forgotten {c}. Discard and train the step again with fewer iterations "
                    "(or a lower learning rate under Details)."
                )
            elif n > p * SIZE_CHANGE:
                grown = f"{n / p:.1f}× the pixels the prior did" if p else f"{n} pixels where the prior marked none"
                out.append(
                    f"{c} grew: the new model marks {grown} ({a:.0%} agreement), so it may call other nuclei "
                    f"{c}. Paint background (or {self.class_name}) where it spread, then train again."
                )
            else:
                out.append(
                    f"{c} moved: the new model marks about as many pixels as the prior ({n / p:.0%}), but only "
                    f"{a:.0%} in the same places. Look at its masks before keeping the step."
                )
        return out

    def worrying(self) -> bool:
        """Whether the review should make the user look twice: fewer than half the painted
        nuclei called the new class, or an old class below the kept agreement."""
        bad_old = any((a := self.agreement(c)) is not None and a < KEPT_AGREEMENT for c in self.old_pixels)
        return bad_old or (self.painted > 0 and self.called * 2 < self.painted)


def review_step(prior, candidate, pairs: Sequence, class_name: str, *, device: str = "auto", tile: int = DEFAULT_TILE, cancel: CancelFlag = None) -> Generator:
    """Segment each pair's image (the painted region and its margin) with the candidate and the
    prior; returns a :class:`StepReview` (None if cancelled). Yields the segmentation's events."""
    from skimage.measure import label

    from .datasets.labelled import IGNORE
    from .inference.segmentation import segment

    new = candidate.channel_of(class_name)
    old_names = list(prior.class_names) if prior is not None else []
    review = StepReview(class_name, [], old_pixels={c: (0, 0, 0) for c in old_names})
    painted_sizes, found_sizes = [], []
    for pair in pairs:
        image, target = np.asarray(pair.image), np.asarray(pair.target)
        t = max(64, min(tile, (max(image.shape[:2]) + 31) // 32 * 32))
        after = yield from segment(candidate, image, tile=t, overlap=min(64, t // 4), device=device, min_tissue=0, cancel=cancel)
        if after is None:
            return None
        review.maps.append(after)
        nuclei = label(target == 1)
        k = candidate.num_channels
        counts = np.bincount(nuclei.ravel().astype(np.int64) * k + after.ravel(), minlength=(nuclei.max() + 1) * k).reshape(-1, k)[1:]
        calls = counts.argmax(1)
        review.painted += len(calls)
        review.called += int((calls == new).sum())
        review.called_background += int((calls == 0).sum())
        for c in old_names:
            review.called_old[c] = review.called_old.get(c, 0) + int((calls == candidate.channel_of(c)).sum())
        painted_sizes += counts.sum(1).tolist()
        objects = label(after == new)
        found_sizes += np.bincount(objects.ravel())[1:].tolist()
        if prior is not None:
            before = yield from segment(prior, image, tile=t, overlap=min(64, t // 4), device=device, min_tissue=0, cancel=cancel)
            if before is None:
                return None
            keep = ~((target >= 1) & (target != IGNORE))
            for c in old_names:
                ch_prior, ch_new = prior.channel_of(c), candidate.channel_of(c)
                pm, nm = (before == ch_prior) & keep, (after == ch_new) & keep
                p, n, both = review.old_pixels[c]
                review.old_pixels[c] = (p + int(pm.sum()), n + int(nm.sum()), both + int((pm & nm).sum()))
    review.found = len(found_sizes)
    review.found_median_px = float(np.median(found_sizes)) if found_sizes else 0.0
    review.painted_median_px = float(np.median(painted_sizes)) if painted_sizes else 0.0
    return review
