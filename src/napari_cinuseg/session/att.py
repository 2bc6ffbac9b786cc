"""What ATT did to a training iteration's crops (eqs. 14-16), in words a pathologist reads, and
in numbers for whoever wants them.

On a crop where most of the nuclei are the new class (r > σ), ATT raises the weight of keeping
the old classes (t_o = α_o) and eases the new class's (t_n = α_n); elsewhere both weigh 1.
"""

from __future__ import annotations


def _fired(crop) -> bool:
    return crop.t_o != 1


def att_words(crops) -> str:
    """One sentence for the crops of one iteration (:class:`~napari_cinuseg.runtime.events.CropStats`),
    e.g. "keeping the old classes weighs more on this crop (most of its nuclei are the new
    class)"; "" without crops."""
    crops = list(crops)
    if not crops:
        return ""
    fired = sum(_fired(c) for c in crops)
    if len(crops) == 1:
        if fired:
            return "keeping the old classes weighs more on this crop (most of its nuclei are the new class)"
        return "the old classes and the new one weigh the same on this crop (most of its nuclei are not the new class)"
    n = len(crops)
    if fired == n:
        return f"keeping the old classes weighs more on these {n} crops (most of their nuclei are the new class)"
    if fired == 0:
        return (
            f"the old classes and the new one weigh the same on these {n} crops (in none are most nuclei the new class)"
        )
    return (
        f"keeping the old classes weighs more on {fired} of these {n} crops (those where most nuclei are the new class)"
    )


def att_numbers(crops) -> str:
    """ATT's numbers for the crops of one iteration, their means: r (the new class's share of the
    crop's nuclei, eq. 14), t_o and t_n (the weights of the old classes' and the new class's
    losses, eqs. 15-16); "" without crops."""
    crops = list(crops)
    if not crops:
        return ""
    r, t_o, t_n = (sum(getattr(c, k) for c in crops) / len(crops) for k in ("r", "t_o", "t_n"))
    return (
        f"ATT, the mean over this iteration's {len(crops)} crop(s): r={r:.2f} (the new class's share of their "
        f"nuclei), t_o={t_o:.2f} (the weight of keeping the old classes), t_n={t_n:.2f} (the weight of the new class)"
    )
