"""Labelled images: reading them, splitting them by source and choosing a step's training pairs.

A :class:`LabelledSet` holds images with class maps in the data set's own class ids (0 background,
255 unlabelled) and the source (image or slide) of each, so that splits never cut a source in two.
A :class:`TrainingPair` holds an image and a *step target*: 0 background, 1..n the classes the
step learns in the order given, 255 unlabelled. The engine maps step targets to channel ids.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import NamedTuple

import numpy as np
from skimage import io as skio

from ..io.images import read_rgb
from ..io.pixel_size import checked_pixel_size
from ..runtime.names import IGNORE, NUCLEUS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Class maps must be stored without loss: JPEG would blur class ids into others.
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")


class TrainingPair(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W) uint8: 0 background, 1..n step classes, 255 unlabelled
    name: str = ""
    # (H, W) integer instance map (0 background, i nucleus i), where the data has one: it teaches
    # a separation head (losses/separation.py); None: the nuclei's instances are not known
    instances: np.ndarray | None = None


@dataclass
class LabelledImage:
    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8 class ids of the set, 0 background, 255 unlabelled
    source: str  # source image or slide: the unit of every split
    name: str


@dataclass
class LabelledSet:
    class_names: list[str]  # class id i + 1 is class_names[i]
    items: list[LabelledImage]
    pixel_size: float | None = None  # µm per pixel of its images, where known

    def class_id(self, name: str) -> int:
        for i, n in enumerate(self.class_names):
            if n.lower() == name.strip().lower():
                return i + 1
        raise ValueError(f"unknown class {name!r}; this data set has {', '.join(self.class_names)}")

    @property
    def sources(self) -> list[str]:
        return sorted({it.source for it in self.items})

    def subset(self, sources: Sequence[str]) -> LabelledSet:
        keep = set(sources)
        return LabelledSet(self.class_names, [it for it in self.items if it.source in keep], self.pixel_size)


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The shared data folder: ``path``, else ``$CINUSEG_DATA``, else ``../shared/data``."""
    return Path(path or os.environ.get("CINUSEG_DATA") or Path("..") / "shared" / "data")


def read_folder(
    root: str | os.PathLike,
    images: str = "images",
    labels: str = "labels",
    classes_file: str | os.PathLike | None = None,
    source_of=None,
    regroup: dict[str, Sequence[str]] | None = None,
) -> LabelledSet:
    """Images + same-stem class-map PNG/TIFF + ``classes.json`` ({"0": "background", "1": ...}).

    ``regroup`` maps new class names to lists of the folder's class names to merge (in that
    order; classes not named become background). ``source_of(stem)`` gives an image's source.
    """
    root = Path(root)
    cfile = Path(classes_file) if classes_file else root / "classes.json"
    if not cfile.is_file():
        raise FileNotFoundError(f'{root} has no classes.json; add one like {{"0": "background", "1": "tumour"}}')
    raw = read_classes_json(cfile)
    pixel_size = raw.pop("pixel_size_um", None)  # optional: µm per pixel of the images
    if pixel_size is not None:  # Infinity and NaN too (Python's json reads them): refused here, not trained on
        pixel_size = checked_pixel_size(pixel_size, f"{cfile}: pixel_size_um", fix="correct it or leave it out")
    try:
        ids = {int(k): str(v) for k, v in raw.items() if int(k) != 0}
    except ValueError:
        raise ValueError(
            f'{cfile}: every key must be a class id (a whole number) or "pixel_size_um", got '
            f'{", ".join(repr(k) for k in raw)}; write it like {{"0": "background", "1": "tumour"}}'
        ) from None
    img_dir, lab_dir = root / images, root / labels
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise FileNotFoundError(f"{root} needs the folders {images}/ and {labels}/")
    if regroup:
        names = list(regroup)
        by_name = {v.lower(): k for k, v in ids.items()}
        lut = np.zeros(256, np.uint8)
        lut[IGNORE] = IGNORE
        for new_id, members in enumerate(regroup.values(), start=1):
            for m in members:
                if m.lower() not in by_name:
                    raise ValueError(f"regroup names {m!r}, which {cfile} does not define")
                lut[by_name[m.lower()]] = new_id
    else:
        names = [ids[k] for k in sorted(ids)]
        if sorted(ids) != list(range(1, len(ids) + 1)):
            raise ValueError(f"{cfile}: class ids must run 1..N without gaps")
        lut = None
    items = []
    for ip in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        lp = next((lab_dir / (ip.stem + s) for s in LABEL_SUFFIXES if (lab_dir / (ip.stem + s)).exists()), None)
        if lp is None:
            other = sorted(p.name for p in lab_dir.glob(glob_escape(ip.stem) + ".*"))
            if other:  # a class map the reader cannot take would otherwise drop its image without a word
                raise ValueError(
                    f"{lab_dir / other[0]}: a class map must be PNG, TIFF or BMP (stored without loss), so "
                    f"{ip.name} would be left out; save it as {ip.stem}.png"
                )
            continue
        lab = read_class_map(lp, set(ids))
        img = read_rgb(ip)
        if img.shape[:2] != lab.shape:
            raise ValueError(f"{lp} is {lab.shape} but its image is {img.shape[:2]}")
        if lut is not None:
            lab = lut[lab]
        items.append(LabelledImage(img, lab, source_of(ip.stem) if source_of else ip.stem, ip.stem))
    if not items:
        raise FileNotFoundError(f"no image in {img_dir} has a class map of the same name in {lab_dir}")
    return LabelledSet(names, items, float(pixel_size) if pixel_size else None)


def read_classes_json(path: Path) -> dict:
    """A ``classes.json`` as a dict: read as UTF-8 with or without a byte-order mark (as some
    Windows editors save it); anything but a JSON object of ids and names is a clear ValueError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f'{path} is not valid JSON ({exc}); write it like {{"0": "background", "1": "tumour"}}'
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path} holds a JSON {type(raw).__name__}, not an object of class ids and names; write it like "
            '{"0": "background", "1": "tumour"}'
        )
    return raw


def read_class_map(path: str | os.PathLike, known: set[int]) -> np.ndarray:
    """A class map (uint8 or 16-bit PNG/TIFF; a colour one by its first channel) as uint8,
    read without wrapping: a value that is neither background (0), unlabelled (255) nor a class
    of ``classes.json`` (``known``) is refused with the file and the values named, never turned
    into background or, modulo 256, into another class."""
    try:
        lab = np.asarray(skio.imread(str(path)))
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes advice
        raise ValueError(
            f"{path} could not be read as a class map ({type(exc).__name__}: {exc}); is it a complete PNG/TIFF?"
        ) from None
    if lab.ndim == 3:
        lab = lab[..., 0]
    if lab.ndim != 2 or not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"{path} is not a class map (a 2-D map of integer class ids), but {lab.dtype} {lab.shape}")
    values = np.unique(lab)
    unknown = [int(v) for v in values if int(v) not in known and int(v) not in (0, IGNORE)]
    if unknown:
        shown = ", ".join(map(str, unknown[:8])) + (", …" if len(unknown) > 8 else "")
        raise ValueError(
            f"{path} holds class id(s) {shown}, which classes.json does not define (it has "
            f"{', '.join(map(str, sorted(known))) or 'none'}, 0 background, {IGNORE} unlabelled); add them "
            "to classes.json or fix the map"
        )
    return lab.astype(np.uint8)


# µm per pixel of the public data sets: both were scanned at 40× (CoNSeP: Graham et al. 2019;
# MoNuSAC: Verma et al. 2021), about 0.25 µm/px.
CONSEP_PIXEL_SIZE = 0.25
MONUSAC_PIXEL_SIZE = 0.25

# The CiNuSeg paper's three CoNSeP classes, from HoVer-Net's merged ids in classes.json.
CONSEP_PAPER_CLASSES = {
    "Epithelial": ["epithelial"],
    "Spindle-shaped": ["spindle-shaped"],
    "Other": ["other", "inflammatory"],
}


def read_consep_patches(root: str | os.PathLike) -> LabelledSet:
    """CoNSeP patches (``train/images/train_<N>_<k>.jpg``, or ``test/...``, or ``images/`` in
    ``root`` itself), regrouped into the paper's classes.

    The source of a patch is its CoNSeP image ``N``.
    """
    root = Path(root)
    split = next((root / d for d in ("train", "test") if (root / d / "images").is_dir()), root)
    classes = next((p for p in (split / "classes.json", root / "classes.json") if p.is_file()), None)
    data = read_folder(split, classes_file=classes, source_of=source_of_stem, regroup=CONSEP_PAPER_CLASSES)
    data.pixel_size = data.pixel_size or CONSEP_PIXEL_SIZE
    return data


def read_consep_instances(root: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """CoNSeP's instance maps (``train/instances/<stem>.png``, or ``test/...``, or ``instances/``
    in ``root`` itself; uint16, 0 background) of the patches ``names``, by name."""
    root = Path(root)
    split = next((root / d for d in ("train", "test") if (root / d / "instances").is_dir()), root)
    folder = split / "instances"
    if not folder.is_dir():
        raise FileNotFoundError(f"{root} has no instances/ folder of CoNSeP instance maps")
    out = {}
    for name in names:
        path = folder / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: patch {name} has no instance map")
        lab = skio.imread(path)
        if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{path} is not an instance map (a 2-D integer map), but {lab.dtype} {lab.shape}")
        out[name] = lab
    return out


# MoNuSAC's four classes in the paper's order.
MONUSAC_PAPER_CLASSES = {
    "Epithelial": ["epithelial"],
    "Lymphocyte": ["lymphocyte"],
    "Macrophage": ["macrophage"],
    "Neutrophil": ["neutrophil"],
}


def read_monusac_images(root: str | os.PathLike) -> LabelledSet:
    """MoNuSAC images (``images/<slide>_<n>.jpg`` + ``labels/``); the source is the slide."""
    data = read_folder(root, source_of=source_of_stem, regroup=MONUSAC_PAPER_CLASSES)
    data.pixel_size = data.pixel_size or MONUSAC_PIXEL_SIZE
    return data


def source_of_stem(stem: str) -> str:
    """``train_12_003`` → ``train_12``; ``TCGA-..._4`` → ``TCGA-...``: the image or slide a patch is from."""
    m = re.match(r"(.+)_\d+$", stem)
    return m.group(1) if m else stem


def step_pairs(data: LabelledSet, step_classes: Sequence[str]) -> list[TrainingPair]:
    """The paper's protocol: images holding at least one pixel of a step class; in them every pixel
    not of a step class (old, future, background) is background, unlabelled pixels stay 255."""
    ids = [data.class_id(n) for n in step_classes]
    lut = np.zeros(256, np.uint8)
    lut[IGNORE] = IGNORE
    for local, cid in enumerate(ids, start=1):
        lut[cid] = local
    pairs = []
    for it in data.items:
        target = lut[it.labels]
        if ((target > 0) & (target != IGNORE)).any():
            pairs.append(TrainingPair(it.image, target, it.name))
    return pairs


def labelled_share(pairs: Sequence[TrainingPair], n_values: int) -> float | None:
    """The share of the pairs' pixels that carry a label, a target value below ``n_values``
    (background and the step's classes; 255 is unlabelled): about 1 for images labelled in full,
    a few per cent for a few painted nuclei; None for no pixels."""
    total = sum(p.target.size for p in pairs)
    return sum(int((p.target < n_values).sum()) for p in pairs) / total if total else None


def as_pairs(pairs: Sequence) -> list[TrainingPair]:
    """Training pairs as :class:`TrainingPair`: plain ``(image, target)`` or ``(image, target,
    name)`` tuples are taken too; anything else is a clear ValueError."""
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, TrainingPair):
            out.append(p)
        elif isinstance(p, (tuple, list)) and len(p) in (2, 3, 4):
            out.append(TrainingPair(*p))
        else:
            raise ValueError(
                f"training pair {i} is a {type(p).__name__}; give (image, target) tuples or TrainingPair(image, target)"
            )
    return out


def check_pairs(pairs: Sequence[TrainingPair], n_classes: int, allow_nucleus: bool = False) -> None:
    """Clear errors for training data that cannot teach the step's classes. ``allow_nucleus``: a
    base step's targets may also hold ``NUCLEUS`` (a nucleus of unknown class)."""
    if not pairs:
        raise ValueError("no training images: annotate at least one image")
    seen = np.zeros(n_classes + 1, bool)
    for i, p in enumerate(pairs):
        img, tgt = np.asarray(p.image), np.asarray(p.target)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"training image {p.name or i} must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        if tgt.shape != img.shape[:2]:
            raise ValueError(f"annotation of {p.name or i} is {tgt.shape} but its image is {img.shape[:2]}")
        if p.instances is not None:
            inst = np.asarray(p.instances)
            if inst.shape != img.shape[:2] or not np.issubdtype(inst.dtype, np.integer):
                raise ValueError(
                    f"instance map of {p.name or i} must be an integer map of its image's size {img.shape[:2]}, "
                    f"got {inst.dtype} {inst.shape}"
                )
        bad = np.setdiff1d(np.unique(tgt), np.r_[np.arange(n_classes + 1), IGNORE, [NUCLEUS] if allow_nucleus else []])
        if bad.size:
            raise ValueError(
                f"annotation of {p.name or i} has label(s) {bad.tolist()}; use 0 for background, "
                f"1..{n_classes} for the step's classes and 255 for unlabelled"
            )
        present = np.unique(tgt)
        seen[present[present <= n_classes]] = True
    missing = [c for c in range(1, n_classes + 1) if not seen[c]]
    if missing:
        raise ValueError(f"no pixel is painted for class(es) {missing} of this step; paint some examples first")
