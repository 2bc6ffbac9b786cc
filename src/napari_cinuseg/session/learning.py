"""Teaching a painted class: a base model when there is none, else one incremental step against
the frozen prior, in the prior's network."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

from ..runtime.events import CancelFlag
from ..training.steps import train_base, train_step

#: the budget of a step from painted nuclei, the panel's default (300 iterations: about 3 minutes
#: on two CPU cores)
STEP_ITERATIONS = 300
#: the method of a step the panel trains
STEP_METHOD = "cinuseg"


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
    corrections: Sequence[str] = (),
) -> Generator:
    """Teach a painted class: a base model (step 0) when there is no prior, which records the
    painted image's ``pixel_size``; else one CiNuSeg step against the frozen prior, in the prior's
    network, on the pairs resampled from ``pixel_size`` to the prior's pixel size (as Segment
    image resamples; unknown: the prior's assumed). ``name`` may be a class the prior has (a
    refining step), and ``corrections`` names the prior's classes painted after background
    (targets 2, 3, …: annotations.annotation_target's ``n_old``)."""
    if prior is None:
        if corrections:
            raise ValueError("there is no model whose classes could be corrected: paint the new class and background")
        return (
            yield from train_base(
                pairs, [name], settings, colours=[colour], out=out, cancel=cancel, pixel_size=pixel_size
            )
        )
    settings = settings.for_network(prior.arch)
    return (
        yield from train_step(
            prior,
            pairs,
            [name, *corrections],
            settings,
            method=STEP_METHOD,
            colours=[colour],
            out=out,
            cancel=cancel,
            pixel_size=pixel_size,
        )
    )
