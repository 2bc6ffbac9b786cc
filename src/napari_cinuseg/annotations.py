"""From what a user painted to what the engine trains on (the plugin's headless twin).

An annotation is a labels array over an image: 0 unpainted, 1..n the step's new classes,
n + 1 "background". Unpainted pixels are unlabelled (255: no supervision for the new classes,
distillation still applies) unless they lie inside a region the user marked as exhaustively
annotated, where they count as background (the paper's protocol).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from skimage.draw import polygon as draw_polygon
from skimage.measure import label

from .datasets.labelled import IGNORE, TrainingPair


def exhaustive_mask(shapes: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside any of the polygons/rectangles (each (N, 2) vertices as (row, col))."""
    mask = np.zeros(shape, bool)
    for verts in shapes:
        v = np.asarray(verts, dtype=float)
        if v.ndim != 2 or v.shape[1] < 2:
            raise ValueError(f"a region needs (N, 2) vertices, got shape {v.shape}")
        rr, cc = draw_polygon(v[:, -2], v[:, -1], shape=shape)
        mask[rr, cc] = True
    return mask


def annotation_target(
    annotation: np.ndarray, n_new: int = 1, exhaustive: np.ndarray | None = None, n_old: int = 0
) -> np.ndarray:
    """The engine's step target: 0 background, 1..n_new the step's classes, 255 unlabelled; with
    ``n_old``, labels n_new + 2 .. n_new + 1 + n_old (after background) are classes the model has,
    painted as corrections, and become targets n_new + 1 .. n_new + n_old (the step's classes go
    on with them: :func:`napari_cinuseg.training.steps.train_step` takes names the prior has)."""
    ann = np.asarray(annotation)
    if ann.ndim != 2:
        raise ValueError(f"an annotation must be 2-D, got shape {ann.shape}")
    background = n_new + 1
    bad = np.setdiff1d(np.unique(ann), np.arange(background + n_old + 1))
    if bad.size:
        new = "label 1 for the new class" if n_new == 1 else f"labels 1 to {n_new} for the new classes"
        old = f", labels {background + 1} to {background + n_old} for the model's classes" if n_old else ""
        raise ValueError(
            f"the annotation uses label(s) {bad.tolist()}; paint with {new}{old} and label {background} for "
            f"background (erase label(s) {bad.tolist()} with the eraser or label 0)"
        )
    target = np.full(ann.shape, IGNORE, np.uint8)
    if exhaustive is not None:
        if exhaustive.shape != ann.shape:
            raise ValueError("the exhaustive regions do not cover the same pixels as the annotation")
        target[exhaustive] = 0
    target[ann == background] = 0
    painted = (ann >= 1) & (ann <= n_new)
    target[painted] = ann[painted]
    corrected = ann > background
    target[corrected] = ann[corrected] - 1
    return target


def painted_corrections(
    pairs: Sequence[TrainingPair], corrections: Sequence[str], n_new: int = 1
) -> tuple[list[TrainingPair], list[str]]:
    """Only the corrected classes that some pair paints, the targets renumbered to follow them:
    a class offered for correction but not painted is not a class of the step."""
    painted = set().union(*(np.unique(p.target).tolist() for p in pairs)) if pairs else set()
    kept = [i for i in range(len(corrections)) if n_new + 1 + i in painted]
    if len(kept) == len(corrections):
        return list(pairs), list(corrections)
    lut = np.arange(256, dtype=np.uint8)
    for i in range(len(corrections)):
        lut[n_new + 1 + i] = IGNORE  # not painted anywhere: no pixel holds it
    for new_index, i in enumerate(kept):
        lut[n_new + 1 + i] = n_new + 1 + new_index
    renumbered = [p._replace(target=lut[np.asarray(p.target)]) for p in pairs]
    return renumbered, [corrections[i] for i in kept]


def annotated_box(
    annotation: np.ndarray, exhaustive: np.ndarray | None = None, margin: int = 64
) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) around every painted or exhaustive pixel plus a margin; None if none."""
    used = np.asarray(annotation) > 0
    if exhaustive is not None:
        used = used | exhaustive
    rows, cols = np.nonzero(used.any(axis=1))[0], np.nonzero(used.any(axis=0))[0]
    if rows.size == 0:
        return None
    h, w = used.shape
    return (
        max(rows[0] - margin, 0),
        max(cols[0] - margin, 0),
        min(rows[-1] + 1 + margin, h),
        min(cols[-1] + 1 + margin, w),
    )


#: an image of at most this many pixels is a step's context whole; a larger one (a slide) the
#: annotated part plus :data:`CONTEXT_MARGIN`
WHOLE_IMAGE_PIXELS = 4096 * 4096
CONTEXT_MARGIN = 1024


def training_pair(
    image: np.ndarray,
    annotation: np.ndarray,
    n_new: int = 1,
    exhaustive_regions: Sequence[np.ndarray] = (),
    name: str = "",
    margin: int | None = None,
    n_old: int = 0,
) -> tuple[TrainingPair, tuple[int, int]] | None:
    """A training pair of the part of ``image`` a step learns from, and its (top, left) in the
    image; None if nothing is painted.

    The step's context is the whole image the user annotated on (``margin`` None), so that
    distillation holds the old classes where the painting does not reach: an image of more than
    :data:`WHOLE_IMAGE_PIXELS` (a slide) gives its annotated box plus :data:`CONTEXT_MARGIN`
    pixels. A ``margin`` gives the annotated box plus that many pixels instead.

    ``image`` may be any array-like that slices to RGB uint8 (a lazy slide level too): only the
    pair's box is read.
    """
    ann = np.asarray(annotation)
    if tuple(ann.shape[:2]) != tuple(image.shape[:2]):
        raise ValueError(
            f"the annotation layer is {ann.shape[:2]} but its image is {tuple(image.shape[:2])}; "
            "paint in a layer made for this image"
        )
    ex = exhaustive_mask(exhaustive_regions, ann.shape) if len(exhaustive_regions) else None
    if margin is None:
        whole = ann.shape[0] * ann.shape[1] <= WHOLE_IMAGE_PIXELS
        margin = max(ann.shape[:2]) if whole else CONTEXT_MARGIN
    box = annotated_box(ann, ex, margin)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    img = np.asarray(image[y0:y1, x0:x1])
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"the image must be RGB uint8 for training, got {img.dtype} {img.shape}")
    target = annotation_target(ann[y0:y1, x0:x1], n_new, ex[y0:y1, x0:x1] if ex is not None else None, n_old)
    return TrainingPair(np.ascontiguousarray(img), target, name), (y0, x0)


MIN_EXAMPLES = 10  # painted nuclei below which a step rarely learns a usable class


def sparse_annotation_advice(pairs: Sequence[TrainingPair], n_new: int = 1) -> str | None:
    """A sentence for the user when the annotation is too sparse to teach much: fewer than
    :data:`MIN_EXAMPLES` painted objects (connected regions) of a new class, or no background
    painted at all (then nothing says what is *not* the class, except exhaustive regions)."""

    notes = []
    for c in range(1, n_new + 1):
        n = sum(int(label(np.asarray(p.target) == c).max()) for p in pairs)
        if n < MIN_EXAMPLES:
            notes.append(
                f"only {n} painted example(s) of class {c}; paint {MIN_EXAMPLES} or more nuclei for a useful model"
            )
    if not any((np.asarray(p.target) == 0).any() for p in pairs):
        notes.append(f"no background is painted; paint some background (label {n_new + 1}) too")
    return "; ".join(notes) or None


# --- an annotation saved beside its model, and opened again ------------------------------------

ANNOTATION_SUFFIX = ".annotation.tif"


def annotation_file(model_path: str | Path, image_name: str) -> Path:
    """Where the annotation of ``image_name`` that taught the model ``model_path`` is kept:
    beside it, ``<model name>.<image name>.annotation.tif``."""

    model_path = Path(model_path)
    stem = model_path.name.removesuffix(".pt").removesuffix(".cinuseg")
    image = re.sub(r"[^A-Za-z0-9._-]+", "-", image_name).strip("-") or "image"
    return model_path.with_name(f"{stem}.{image}{ANNOTATION_SUFFIX}")


def save_annotation(
    path: str | Path,
    labels,
    image_name: str,
    class_name: str,
    colour: str | None = None,
    corrections: Sequence[str] = (),
    tile: int = 512,
) -> Path:
    """Write a labels array (numpy, or a lazy zarr array of a slide: read tile by tile) as a
    tiled, compressed uint8 TIFF whose description names its image, class and colour, and the
    model's classes painted as corrections (label 3 on), if any."""

    path = Path(path)
    h, w = labels.shape[:2]
    info = {"cinuseg_annotation": {"image": image_name, "class": class_name, "colour": colour}}
    if corrections:
        info["cinuseg_annotation"]["corrections"] = list(corrections)

    def tiles():
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                block = np.zeros((tile, tile), np.uint8)
                part = np.asarray(labels[y : y + tile, x : x + tile])
                block[: part.shape[0], : part.shape[1]] = part
                yield block

    tmp = path.with_name(f".{path.name}.partial")
    try:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(h, w),
            dtype=np.uint8,
            tile=(tile, tile),
            compression="zlib",
            description=json.dumps(info),
            metadata=None,
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_annotation(path: str | Path) -> tuple[np.ndarray, dict]:
    """An annotation TIFF written by :func:`save_annotation`: (labels, {"image", "class",
    "colour"}). A file that is not such a TIFF is a ValueError that names it."""

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            description = page.description or ""
            labels = page.asarray()
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a readable TIFF ({exc}); choose an annotation saved by CiNuSeg (*{ANNOTATION_SUFFIX})"
        ) from exc
    try:
        info = json.loads(description)["cinuseg_annotation"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{path} is a TIFF but not a CiNuSeg annotation (its description does not name an image and a "
            f"class); choose a file saved by CiNuSeg (*{ANNOTATION_SUFFIX})"
        ) from None
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"{path} holds a {labels.dtype} array of shape {labels.shape}, not a 2-D uint8 annotation")
    return labels, info
