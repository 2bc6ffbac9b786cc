"""Nucleus-only data: images whose every nucleus is marked, but not its class.

Layouts (one folder each):

- ``monuseg``: MoNuSeg 2018, ``[train/]images/<TCGA id>.jpg`` + ``instances/<same id>.png``
  (uint16 instance map, 0 background); one image per slide, so the source is the image; 40×,
  0.25 µm/px;
- ``nuinsseg``: NuInsSeg, ``images/<n>.jpg`` + ``masks/<n>.png`` (binary 0 / 255); the source is
  the tile (its organ is not known in the shared copy);
- ``nuclei``: any folder of ``images/`` + same-stem ``instances/`` (instance ids) or ``masks/``
  (any non-zero value is a nucleus), with an optional ``nuclei.json`` ``{"pixel_size_um": 0.25}``;
  the source is the image, or the part of its stem before a last ``_<number>``.

Each reads as a :class:`~napari_cinuseg.datasets.labelled.LabelledSet` with no class names, its
labels 0 (background) or ``NUCLEUS`` (a nucleus of unknown class), and, where the layout has them,
the instance maps in :attr:`NucleusSet.instances` (for object scores).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage import io as skio

from ..io.images import read_rgb
from ..io.pixel_size import checked_pixel_size
from ..runtime.names import NUCLEUS
from .labelled import IMAGE_SUFFIXES, LabelledImage, LabelledSet, TrainingPair, source_of_stem

MONUSEG_PIXEL_SIZE = 0.25  # 40× (Kumar et al. 2017)


@dataclass
class NucleusSet(LabelledSet):
    """A :class:`LabelledSet` of nucleus-only images; ``instances[name]`` is an image's instance
    map where the layout gives one (MoNuSeg), else absent."""

    instances: dict[str, np.ndarray] = field(default_factory=dict)

    def subset(self, sources) -> NucleusSet:
        keep = set(sources)
        items = [it for it in self.items if it.source in keep]
        return NucleusSet(
            [], items, self.pixel_size, {it.name: self.instances[it.name] for it in items if it.name in self.instances}
        )


def read_nucleus_folder(
    root: str | os.PathLike, *, source_of=None, pixel_size: float | None = None, limit: int | None = None
) -> NucleusSet:
    """``root/images`` + ``root/instances`` or ``root/masks`` (see the module's docstring).
    ``limit``: read at most this many images (in name order)."""
    root = Path(root)
    img_dir = root / "images"
    lab_dir = next((root / d for d in ("instances", "masks") if (root / d).is_dir()), None)
    if not img_dir.is_dir() or lab_dir is None:
        raise FileNotFoundError(f"{root} needs images/ and instances/ (instance ids) or masks/ (non-zero = nucleus)")
    meta = root / "nuclei.json"
    if pixel_size is None and meta.is_file():
        pixel_size = json.loads(meta.read_text()).get("pixel_size_um")
        if pixel_size is not None:
            pixel_size = checked_pixel_size(pixel_size, f"{meta}: pixel_size_um", fix="correct it or leave it out")
    items, instances = [], {}
    paths = sorted((p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural)
    for ip in paths[:limit] if limit else paths:
        lp = next(
            (lab_dir / (ip.stem + s) for s in (".png", ".tif", ".tiff") if (lab_dir / (ip.stem + s)).exists()), None
        )
        if lp is None:
            continue
        lab = np.asarray(skio.imread(str(lp)))
        if lab.ndim == 3:
            lab = lab[..., 0]
        img = read_rgb(ip)
        if img.shape[:2] != lab.shape:
            raise ValueError(f"{lp} is {lab.shape} but its image is {img.shape[:2]}")
        labels = np.where(lab > 0, NUCLEUS, 0).astype(np.uint8)
        if lab_dir.name == "instances":
            instances[ip.stem] = lab
        items.append(LabelledImage(img, labels, source_of(ip.stem) if source_of else ip.stem, ip.stem))
    if not items:
        raise FileNotFoundError(f"no image in {img_dir} has a mask or instance map of the same name in {lab_dir}")
    return NucleusSet([], items, float(pixel_size) if pixel_size else None, instances)


def _natural(p: Path):
    return (len(p.stem), p.stem) if p.stem.isdigit() else (0, p.stem)


def read_monuseg(root: str | os.PathLike, limit: int | None = None) -> NucleusSet:
    """MoNuSeg (``root/train/`` or ``root`` itself); the source of an image is its slide (the image)."""
    root = Path(root)
    split = root / "train" if (root / "train" / "images").is_dir() else root
    return read_nucleus_folder(split, pixel_size=MONUSEG_PIXEL_SIZE, limit=limit)


def read_nuinsseg(root: str | os.PathLike, limit: int | None = None) -> NucleusSet:
    """NuInsSeg; each tile is its own source (the organ is not known in the shared copy)."""
    return read_nucleus_folder(root, limit=limit)


def read_nuclei(root: str | os.PathLike, limit: int | None = None) -> NucleusSet:
    """A generic nucleus-only folder; a stem ``<source>_<n>`` has source ``<source>``."""
    return read_nucleus_folder(root, source_of=source_of_stem, limit=limit)


def nucleus_pairs(data: LabelledSet):
    """Training pairs of a nucleus-only set: targets 0 background, ``NUCLEUS`` nucleus; with the
    set's instance maps where it has them (MoNuSeg; NuInsSeg's masks merge touching nuclei and
    give none)."""
    instances = getattr(data, "instances", {})
    return [TrainingPair(it.image, it.labels, it.name, instances.get(it.name)) for it in data.items]


def mixed_class_pairs(data: LabelledSet, classes, instances: dict | None = None) -> list:
    """Training pairs of a class-labelled set joined to a base step whose classes are ``classes``
    (names): a pixel of a class named there gets its index (1-based), a pixel of any other class of
    the set is ``NUCLEUS`` (a nucleus, of a class this model does not learn), background stays 0,
    unlabelled 255. ``instances``: instance maps by image name, carried by the pairs."""
    instances = instances or {}
    want = {n.lower(): i for i, n in enumerate(classes, start=1)}
    lut = np.arange(256, dtype=np.uint8)  # 255 (unlabelled) stays 255
    for cid, name in enumerate(data.class_names, start=1):
        lut[cid] = want.get(name.lower(), NUCLEUS)
    return [TrainingPair(it.image, lut[it.labels], it.name, instances.get(it.name)) for it in data.items]
