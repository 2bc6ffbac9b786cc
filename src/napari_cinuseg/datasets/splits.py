"""Splits of a labelled set by source (image or slide), never by patch: train and validation,
or train, tune and test; a held-out part balanced over the classes where asked; and how many
pixels of each class a part holds."""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np

from .labelled import LabelledSet


def _held_out(fraction: float, n_sources: int, at_most: int) -> int:
    """How many of ``n_sources`` a share ``fraction`` holds out: at least one, at most ``at_most``."""
    return min(max(1, round(fraction * n_sources)), at_most)


def _check_shares(**shares: float) -> None:
    """Each named share of the sources held out lies strictly between 0 and 1 (NaN does not), and
    together they leave some sources to train on."""
    for name, share in shares.items():
        if not 0 < share < 1:
            raise ValueError(
                f"{name} {share} holds out no share of the sources; give a share above 0 and below 1, e.g. 0.2"
            )
    if len(shares) > 1 and sum(shares.values()) >= 1:
        given = " and ".join(f"{name} ({share})" for name, share in shares.items())
        raise ValueError(f"{given} leave no sources to train on; keep their sum under 1")


def split_by_source(
    data: LabelledSet, val_fraction: float = 0.2, seed: int = 0, balanced: bool = False
) -> tuple[LabelledSet, LabelledSet]:
    """(train, validation) with whole sources on one side only; the same for the same seed.

    A random choice of sources, which on a small data set can leave a class out. ``balanced``: of the ways to
    hold out that many sources, one that gives every class about ``val_fraction`` of its pixels
    (:func:`balanced_sources`), so that no class is missing from the validation images or nearly
    so; ``seed`` chooses among the few best. The benchmark splits this way.
    """
    _check_shares(val_fraction=val_fraction)
    sources = data.sources
    if len(sources) < 2:
        raise ValueError("a validation split needs images from at least two sources (images or slides)")
    n_val = _held_out(val_fraction, len(sources), len(sources) - 1)
    if balanced and any(c.any() for c in class_pixels_by_source(data).values()):
        val = set(balanced_sources(data, n_val, val_fraction, seed))
    else:
        order = np.random.default_rng(seed).permutation(len(sources))
        val = {sources[i] for i in order[:n_val]}
    return data.subset([s for s in sources if s not in val]), data.subset(sorted(val))


def split_three(
    data: LabelledSet, tune_fraction: float = 1 / 3, test_fraction: float = 1 / 3, seed: int = 0
) -> tuple[LabelledSet, LabelledSet, LabelledSet]:
    """(train, tune, test), whole sources on one side only: every choice of a default, a budget
    or a rule is measured on *tune*; tables report *test*, which no choice has looked at.

    The test sources are held out first, balanced over the classes (:func:`balanced_sources`,
    ``test_fraction`` of the sources), then the tune sources from the rest the same way; both
    keep every class the data has where the sources allow it. The same for the same seed.
    """
    _check_shares(tune_fraction=tune_fraction, test_fraction=test_fraction)
    sources = data.sources
    if len(sources) < 3:
        raise ValueError("three splits by source need images from at least three sources (images or slides)")
    n_test = _held_out(test_fraction, len(sources), len(sources) - 2)
    test = set(balanced_sources(data, n_test, test_fraction, seed))
    rest = data.subset([s for s in sources if s not in test])
    n_tune = _held_out(tune_fraction, len(sources), len(rest.sources) - 1)
    tune = set(balanced_sources(rest, n_tune, n_tune / len(rest.sources), seed))
    train = [s for s in sources if s not in test and s not in tune]
    return data.subset(train), data.subset(sorted(tune)), data.subset(sorted(test))


def split_tune_test(
    data: LabelledSet, val_fraction: float = 0.2, test_fraction: float = 1 / 3, seed: int = 0
) -> tuple[LabelledSet, LabelledSet, LabelledSet]:
    """(train, tune, test) whose *tune* part is the balanced validation split,
    ``split_by_source(data, val_fraction, seed, balanced=True)``: the sources every choice made
    on that validation split was measured on. *test* is held out of the other sources, balanced
    over the classes (:func:`balanced_sources`, ``test_fraction`` of all the sources), so that
    no choice measured on the validation split has seen it; *train* is the rest.

    :func:`split_three` draws test first and may give it validation sources; this split never
    does. The same for the same seed."""
    _check_shares(val_fraction=val_fraction, test_fraction=test_fraction)
    if len(data.sources) < 3:
        raise ValueError("train, tune and test by source need images from at least three sources (images or slides)")
    rest, tune = split_by_source(data, val_fraction, seed, balanced=True)
    if len(rest.sources) < 2:
        raise ValueError(
            f"the validation split ({val_fraction}) leaves {len(rest.sources)} source for train and test; "
            "give a smaller --val-fraction"
        )
    n_test = _held_out(test_fraction, len(data.sources), len(rest.sources) - 1)
    test = set(balanced_sources(rest, n_test, n_test / len(rest.sources), seed))
    return rest.subset([s for s in rest.sources if s not in test]), tune, rest.subset(sorted(test))


def class_pixels(data: LabelledSet) -> dict[str, int]:
    """The pixel count of each class of ``data``, by name, over all its images."""
    counts = class_pixels_by_source(data)
    total = sum(counts.values()) if counts else np.zeros(len(data.class_names), np.int64)
    return {name: int(n) for name, n in zip(data.class_names, total)}


def class_pixels_by_source(data: LabelledSet) -> dict[str, np.ndarray]:
    """Per source, the pixel count of each class (index i for class id i + 1)."""
    k = len(data.class_names)
    counts: dict[str, np.ndarray] = {}
    for it in data.items:
        hist = np.bincount(it.labels.ravel(), minlength=256)[1 : k + 1]
        counts[it.source] = counts.get(it.source, np.zeros(k, np.int64)) + hist
    return counts


def balanced_sources(
    data: LabelledSet, n_val: int, val_fraction: float, seed: int = 0, candidates: int = 20000, among: int = 5
) -> list[str]:
    """``n_val`` sources to hold out whose share of each class's pixels is nearest
    ``val_fraction``: the cost of a choice is the sum over classes of (share − fraction)², plus
    1 for each class held out entirely or missing from the held-out sources although another
    source has it. Every choice is tried where there are at most ``candidates``, else that many
    random ones; ``seed`` picks one of the ``among`` cheapest."""
    counts = class_pixels_by_source(data)
    sources = sorted(counts)
    table = np.stack([counts[s] for s in sources]).astype(np.float64)  # (sources, classes)
    total = table.sum(0)
    present = (table > 0).sum(0)
    rng = np.random.default_rng(seed)
    if comb(len(sources), n_val) <= candidates:
        choices = [np.array(c) for c in combinations(range(len(sources)), n_val)]
    else:
        choices = [np.sort(rng.choice(len(sources), n_val, replace=False)) for _ in range(candidates)]
    costs = []
    for c in choices:
        held = table[c].sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, held / total, val_fraction)
        cost = float(((share - val_fraction) ** 2).sum())
        cost += float(((held == 0) & (present >= 2)).sum() + ((held == total) & (total > 0)).sum())
        costs.append(cost)
    best = np.argsort(costs, kind="stable")[: max(1, among)]
    pick = choices[best[rng.integers(len(best))]]
    return [sources[i] for i in pick]
