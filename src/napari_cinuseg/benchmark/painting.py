"""Simulated painting: what a person paints in the panel, made from instance or class labels.

K whole nuclei of the new class on M images of a few sources, and small background dabs away
from every nucleus; nothing else is painted. The result is the panel's annotation layer
(0 unpainted, 1 the new class, 2 background), turned into training pairs the way the panel
does it (:func:`napari_cinuseg.annotations.training_pair`: cropped to the painted part plus a
margin).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import io as skio
from skimage.measure import label as connected

from ..annotations import training_pair
from ..datasets.labelled import LabelledImage, LabelledSet, TrainingPair
from ..session.picking import objects_at, paint_objects

#: how far (pixels) a simulated click may miss the model's nucleus object and still take it
CLICK_RADIUS = 3


def nucleus_instances(item: LabelledImage, instances_dir: str | Path | None = None) -> np.ndarray:
    """The nucleus instance map of an image: the data set's own (``<instances_dir>/<name>.png``,
    CoNSeP) where there is one, else connected regions of each class of the class map
    (MoNuSAC has no instance ids: touching nuclei of one class merge)."""
    if instances_dir is not None:
        p = Path(instances_dir) / f"{item.name}.png"
        if p.is_file():
            inst = np.asarray(skio.imread(str(p))).astype(np.int64)
            if inst.shape != item.labels.shape:
                raise ValueError(f"{p} is {inst.shape} but its class map is {item.labels.shape}")
            return inst
    out = np.zeros(item.labels.shape, np.int64)
    fg = (item.labels > 0) & (item.labels != 255)
    for c in np.unique(item.labels[fg]):
        lab = connected(item.labels == c)
        out[lab > 0] = lab[lab > 0] + out.max()
    return out


@dataclass
class Painting:
    pairs: list[TrainingPair]
    nuclei: int  # nuclei of the new class painted
    images: list[str]
    sources: list[str]
    dabs: int
    clicked: int = 0  # nuclei painted by a click: the model's object under it
    by_hand: int = 0  # nuclei a click found no object for, painted by hand instead
    corrected: dict[str, int] | None = None  # nuclei of each old class painted as corrections
    #: each class's share of its labelled pixels on the painted images that the pairs' context
    #: holds (1.0 where the context is the whole image): how much of an old class a step sees
    context_share: dict[str, float] | None = None


def _nuclei_of(item: LabelledImage, inst: np.ndarray, class_id: int, min_pixels: int) -> list[int]:
    """Instance ids whose pixels are mostly ``class_id`` and big enough to be a nucleus."""
    ids = []
    for i in np.unique(inst[inst > 0]):
        cls = item.labels[inst == i]
        if cls.size >= min_pixels and np.mean(cls == class_id) > 0.5:
            ids.append(int(i))
    return ids


def simulate_painting(
    data: LabelledSet,
    class_name: str,
    k: int,
    *,
    images: int = 3,
    sources: int | None = None,
    seed: int = 0,
    instances_dir: str | Path | None = None,
    dabs_per_nucleus: float = 1.0,
    dab_radius: int = 4,
    dab_clearance: int = 10,
    min_pixels: int = 20,
    margin: int | None = 64,
    objects: Callable[[LabelledImage], np.ndarray] | None = None,
    corrections: Mapping[str, int] | None = None,
) -> Painting:
    """Paint ``k`` whole nuclei of ``class_name`` on ``images`` images (from at most ``sources``
    sources, chosen at random by ``seed``) and background dabs: discs of ``dab_radius`` px at
    least ``dab_clearance`` px from any nucleus, about ``dabs_per_nucleus`` per painted nucleus
    (at least 3 per image). Nuclei are drawn at random over the chosen images' nuclei of the class;
    where ``images`` images hold fewer than ``k`` of them, more images of the sources are taken
    (fewer than ``k`` only if the sources have no more).

    ``objects`` (an image's nucleus objects as a model finds them: an instance map): clicks
    instead of strokes. Each chosen nucleus is clicked at its deepest pixel, and the model's
    object under the click is painted (session.picking, as the panel does); where the click finds
    no object the nucleus is painted by hand. ``margin``: the training pairs' context
    (annotations.training_pair; None: the whole image).

    ``corrections`` (an old class's name: how many): nuclei of classes the model already has,
    painted with that class on the same images as the panel's correction labels do (after
    background: 3, 4, … in the order given), as a user does after a review that says an old
    class was lost. They are drawn at random over those images' nuclei of the class, painted by
    the same strokes or clicks, and the pairs carry them (``annotation_target``'s ``n_old``).
    """
    rng = np.random.default_rng(seed)
    cid = data.class_id(class_name)
    cands = [it for it in data.items if (it.labels == cid).any()]
    if not cands:
        raise ValueError(f"no image of this data set has a pixel of {class_name!r}")
    srcs = sorted({it.source for it in cands})
    if sources is not None:
        srcs = [srcs[i] for i in rng.permutation(len(srcs))[:sources]]
    pool = [it for it in cands if it.source in srcs]
    order = rng.permutation(len(pool))
    chosen = []  # (item, instance map, its nuclei of the class)
    for i in order:
        if len(chosen) >= images and sum(len(c[2]) for c in chosen) >= k:
            break  # M images at least, more only where they hold fewer than K nuclei
        item = pool[i]
        inst = nucleus_instances(item, instances_dir)
        ids = _nuclei_of(item, inst, cid, min_pixels)
        if ids:
            chosen.append((item, inst, ids))
    if not chosen:
        raise ValueError(f"no nucleus of {class_name!r} of at least {min_pixels} px in the chosen sources")
    every = [(j, n) for j, (_, _, ids) in enumerate(chosen) for n in ids]
    picked = [every[i] for i in rng.permutation(len(every))[:k]]
    painted_on = sorted({j for j, _ in picked})
    fixes = {}  # image index -> [(instance id, correction label)]
    for i, (old, count) in enumerate((corrections or {}).items()):
        oid = data.class_id(old)
        theirs = [(j, m) for j in painted_on for m in _nuclei_of(chosen[j][0], chosen[j][1], oid, min_pixels)]
        for t in rng.permutation(len(theirs))[:count]:
            j, m = theirs[t]
            fixes.setdefault(j, []).append((m, 3 + i))
    pairs, n_dabs, clicked, by_hand = [], 0, 0, 0
    n = len(data.class_names) + 1  # background and the classes
    in_context, on_images = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for j, (item, inst, _) in enumerate(chosen):
        mine = [n for jj, n in picked if jj == j]
        if not mine:
            continue
        ann = np.zeros(item.labels.shape, np.uint8)
        found = objects(item) if objects is not None else None
        strokes = {1: mine}  # label: the instances painted with it (the new class first)
        for m, label in fixes.get(j, []):
            strokes.setdefault(label, []).append(m)
        for label, ids in strokes.items():
            if found is None:
                ann[np.isin(inst, ids) & (ann == 0)] = label
                continue
            hits = objects_at(found, [_deepest_pixel(inst == n) for n in ids], CLICK_RADIUS)
            paint_objects(ann, found, hits, label)
            missed = [n for n, hit in zip(ids, hits) if not hit]
            ann[np.isin(inst, missed) & (ann == 0)] = label
            if label == 1:
                clicked, by_hand = clicked + int((hits > 0).sum()), by_hand + len(missed)
        far = ndi.distance_transform_edt((inst == 0) & (item.labels == 0)) > dab_clearance
        ys, xs = np.nonzero(far)
        want = max(3, int(round(dabs_per_nucleus * len(mine))))
        yy, xx = np.ogrid[: ann.shape[0], : ann.shape[1]]
        for t in rng.permutation(len(ys))[:want]:
            disc = (yy - ys[t]) ** 2 + (xx - xs[t]) ** 2 <= dab_radius**2
            ann[disc & (ann == 0)] = 2
            n_dabs += 1
        made = training_pair(item.image, ann, 1, name=item.name, margin=margin, n_old=len(corrections or {}))
        if made is not None:
            pairs.append(made[0])
            (y0, x0), (h, w) = made[1], made[0].image.shape[:2]
            on_images += np.bincount(item.labels[item.labels < n].ravel(), minlength=n)[:n]
            box = item.labels[y0 : y0 + h, x0 : x0 + w]
            in_context += np.bincount(box[box < n].ravel(), minlength=n)[:n]
    return Painting(
        pairs=pairs,
        nuclei=len(picked),
        images=[p.name for p in pairs],
        sources=sorted({it.source for it, _, _ in chosen}),
        dabs=n_dabs,
        clicked=clicked,
        by_hand=by_hand,
        corrected={
            old: sum(lab == 3 + i for v in fixes.values() for _, lab in v) for i, old in enumerate(corrections or {})
        },
        context_share={
            name: round(float(in_context[c] / on_images[c]), 4)
            for c, name in enumerate(data.class_names, start=1)
            if on_images[c]
        },
    )


def _deepest_pixel(mask: np.ndarray) -> tuple[int, int]:
    """Where a person clicks a nucleus: its pixel farthest from its edge."""
    depth = ndi.distance_transform_edt(mask)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), mask.shape))


def painted_nuclei(pairs: Sequence[TrainingPair], cls: int = 1) -> int:
    """How many separate painted regions of step class ``cls`` the pairs hold."""
    return sum(int(connected(np.asarray(p.target) == cls).max()) for p in pairs)
