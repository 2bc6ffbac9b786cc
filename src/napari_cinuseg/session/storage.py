"""Where a user's new models and on-disk results go, and how files are named: a step's
candidate file until it is kept, the class maps of large images, and the tables and outlines
written beside an exported masks file."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..io.images import IN_MEMORY_LIMIT_PX


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


def nuclei_csv_path(masks_path: str | Path) -> Path:
    """The per-nucleus table beside a masks file: ``x.masks.tif`` → ``x.nuclei.csv``."""
    masks_path = Path(masks_path)
    stem = masks_path.name.removesuffix(".tiff").removesuffix(".tif").removesuffix(".ome").removesuffix(".masks")
    return masks_path.with_name(stem + ".nuclei.csv")


def geojson_path(masks_path: str | Path) -> Path:
    """The QuPath GeoJSON beside a masks file: ``x.masks.tif`` → ``x.geojson``."""
    csv_path = nuclei_csv_path(masks_path)
    return csv_path.with_name(csv_path.name.removesuffix(".nuclei.csv") + ".geojson")


def class_map_on_disk(height: int, width: int, *, lazy: bool = False, limit: int | None = None) -> bool:
    """The one rule for where a class map goes: on disk for a lazy image (a slide layer) or one
    over ``limit`` pixels (default ``IN_MEMORY_LIMIT_PX``), else in memory."""
    return lazy or height * width > (IN_MEMORY_LIMIT_PX if limit is None else limit)


def needs_disk(pixels) -> bool:
    """:func:`class_map_on_disk` for an image layer's pixels (a numpy array is in memory)."""
    return class_map_on_disk(pixels.shape[0], pixels.shape[1], lazy=not isinstance(pixels, np.ndarray))
