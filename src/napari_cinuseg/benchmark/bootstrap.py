"""How sure a benchmark's Means are: a paired bootstrap over the test images.

Each resample draws the test images with replacement, the same draw for every method and seed;
a method's Mean on it is its Dice per class from the drawn images' summed counts (a class the
draw holds no pixel of is left out, for every method alike), averaged over the classes and then
over the seeds. The spread of a Mean over the resamples is how much it owes to which images were
tested; the spread of a difference of two methods' Means, paired on the same draws, is whether
one is above the other on these images or only on some of them.

The counts come from the benchmark's results (``run.py``: each evaluation's ``per_image``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..datasets.protocols import Protocol


def final_evaluation(results: dict, protocol: str, method: str) -> dict:
    """The evaluation a protocol's summary row stands on: offline's only one, or the last step's."""
    steps = results["config"]["protocols"][protocol]
    key = f"{protocol}/{method}/step{0 if method == 'offline' else len(steps) - 1}"
    found = results.get("evaluations", {}).get(key)
    if found is None:
        raise ValueError(f"no evaluation {key} in the results: run the benchmark until {method} has finished")
    if "per_image" not in found:
        raise ValueError(
            f"the evaluation {key} keeps no per-image counts (it was scored before they were kept): "
            "run the benchmark again with the same --out, which scores it again and trains nothing"
        )
    return found


def image_counts(runs: Sequence[dict], protocol: str, method: str) -> tuple[list[str], list[str], np.ndarray]:
    """(test images, the protocol's classes, counts) of one method in runs at several seeds:
    counts[seed, image, class] = (true positives, class pixels, pixels predicted as the class).
    Refuses runs scored on other images."""
    if not runs:
        raise ValueError("give at least one run's results")
    classes = list(Protocol(protocol, tuple(tuple(s) for s in runs[0]["config"]["protocols"][protocol])).all_classes)
    images: list[str] | None = None
    out = []
    for run in runs:
        per_image = final_evaluation(run, protocol, method)["per_image"]
        names = sorted(per_image)
        if images is None:
            images = names
        elif names != images:
            raise ValueError(f"{method}'s runs of {protocol} were scored on other test images: not one benchmark")
        zero = [0, 0, 0]
        out.append([[per_image[i].get(c, zero) for c in classes] for i in images])
    return images or [], classes, np.asarray(out, np.int64)


def means(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean Dice (0..100) over the classes, then over the seeds, of each draw: ``counts``
    (seeds, images, classes, 3) as :func:`image_counts`; ``weights`` (draws, images), how often
    each image is drawn. A class without pixels in a draw is left out of that draw's mean."""
    summed = np.einsum("bi,sick->bsck", weights.astype(np.float64), counts.astype(np.float64))
    tp, truth, called = summed[..., 0], summed[..., 1], summed[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(truth > 0, 200 * tp / (truth + called), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw with no pixel of any class: NaN
        return np.nanmean(np.nanmean(dice, axis=2), axis=1)


def paired_bootstrap(
    counts: dict[str, np.ndarray],
    reference: str | None = None,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per method of ``counts`` (each (seeds, images, classes, 3) over the same images, as
    :func:`image_counts`), its Mean on the test images as scored and the ``level`` percentile
    interval of the Mean over ``resamples`` draws of the images; beside ``reference``, the
    difference of the two Means, its interval over the same draws, and the share of draws in
    which the method is above the reference."""
    if not counts:
        raise ValueError("give the counts of at least one method")
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not a share: give e.g. 0.95")
    n_images = {c.shape[1] for c in counts.values()}
    if len(n_images) != 1:
        raise ValueError("the methods were scored on different numbers of test images: not one benchmark")
    if reference is not None and reference not in counts:
        raise ValueError(f"the reference {reference!r} is not one of the methods ({', '.join(counts)})")
    n = n_images.pop()
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    whole = np.ones((1, n))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    drawn = {m: means(c, draws) for m, c in counts.items()}
    out: dict[str, dict[str, float]] = {}
    for m, c in counts.items():
        row = {"mean": float(means(c, whole)[0]), "low": float(np.nanpercentile(drawn[m], lo))}
        row["high"] = float(np.nanpercentile(drawn[m], hi))
        if reference is not None and m != reference:
            diff = drawn[m] - drawn[reference]
            row["difference"] = row["mean"] - float(means(counts[reference], whole)[0])
            row["difference_low"] = float(np.nanpercentile(diff, lo))
            row["difference_high"] = float(np.nanpercentile(diff, hi))
            row["above_reference"] = float(np.mean(diff > 0))
        out[m] = row
    return out
