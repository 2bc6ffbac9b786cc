"""A step's review on the painted regions, in plain words (:func:`review_step`,
:class:`StepReview`): how the new model calls the painted nuclei, and whether each old class is
kept there."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
from skimage.measure import label

from ..annotations import annotated_box
from ..inference.segmentation import segment
from ..inference.tiling import DEFAULT_TILE, panel_overlap
from ..runtime.events import CancelFlag
from ..runtime.names import IGNORE

KEPT_AGREEMENT = 0.8  # an old class that agrees this much with the prior is kept
SIZE_CHANGE = 1.25  # an old class whose pixels grew or shrank by more than this factor changed size


#: pixels around the labelled part of a training pair that the review segments
REVIEW_MARGIN = 64


def painted_region(target: np.ndarray, margin: int = REVIEW_MARGIN) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of a training pair's labelled pixels plus ``margin``, inside the pair; the
    whole pair where nothing is labelled. What the review looks at (a pair's context may be a
    whole image)."""
    target = np.asarray(target)
    return annotated_box(target != IGNORE, margin=margin) or (0, 0, *target.shape[:2])


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
    offsets: list = field(default_factory=list)  # (top, left) of each map in its training pair

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
            text += (
                f" Fewer than half: paint more {name} nuclei and some background, or train longer, then train again."
            )
        return text

    def old_class_sentences(self) -> list[str]:
        """One sentence per old class: kept, shrank, grew, moved, or not measured."""
        out = []
        for c, (p, n, _) in self.old_pixels.items():
            a = self.agreement(c)
            if a is None:
                out.append(
                    f"{c}: neither model finds it in the painted regions, so it was not checked here. A step "
                    f"on images without {c} can lose it elsewhere: segment an image that has {c} before keeping it."
                )
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


def review_step(
    prior,
    candidate,
    pairs: Sequence,
    class_name: str,
    *,
    device: str = "auto",
    tile: int = DEFAULT_TILE,
    image_pixel_size: float | None = None,
    cancel: CancelFlag = None,
) -> Generator:
    """Segment each pair's image (the painted region and its margin) with the candidate and the
    prior as Segment image segments an image: ``tile`` (in the model's pixels) with its overlap,
    resampled from ``image_pixel_size`` (µm per pixel; unknown: the model's assumed) to the
    model's pixel size, the maps back at the image's own size. Returns a :class:`StepReview`
    (None if cancelled). Yields the segmentation's events."""
    new = candidate.channel_of(class_name)
    old_names = list(prior.class_names) if prior is not None else []
    review = StepReview(class_name, [], old_pixels={c: (0, 0, 0) for c in old_names})
    painted_sizes, found_sizes = [], []
    # Segment image's path: its tile and overlap, resampled to the model's pixel size
    at = {"tile": tile, "overlap": panel_overlap(tile), "image_pixel_size": image_pixel_size}
    at.update(device=device, cancel=cancel)
    for pair in pairs:
        image, target = np.asarray(pair.image), np.asarray(pair.target)
        # the painted region and a margin, not the pair's whole context (a whole image)
        box = painted_region(target)
        image, target = image[box[0] : box[2], box[1] : box[3]], target[box[0] : box[2], box[1] : box[3]]
        review.offsets.append((int(box[0]), int(box[1])))
        after = yield from segment(candidate, image, **at)
        if after is None:
            return None
        review.maps.append(after)
        nuclei = label(target == 1)
        k = candidate.num_channels
        counts = np.bincount(
            nuclei.ravel().astype(np.int64) * k + after.ravel(), minlength=(nuclei.max() + 1) * k
        ).reshape(-1, k)[1:]
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
            before = yield from segment(prior, image, **at)
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
