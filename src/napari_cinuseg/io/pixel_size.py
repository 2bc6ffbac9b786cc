"""The one range of pixel sizes believed, from whatever source states one.

A pixel size scales everything: each tile is resampled by the ratio of the image's to the
model's, and areas go into µm². A wrong one (an SVS ``MPP = 1000``, an OME ``PhysicalSizeX`` read
without its unit, a typo in ``--pixel-size``) silently segments at the wrong scale: thousands of
phantom nuclei, or none. So every source (a file's metadata, ``--pixel-size``, a model's record,
a data set's ``classes.json``) is checked here, against one range, before it is used.

:data:`PLAUSIBLE_UM`, 0.05 to 20 µm per pixel: the finest is below what any light microscope
resolves (about 0.2 µm; a 100× oil objective's camera pixel is about 0.06 µm, a 40× scanner's
0.25); the coarsest is a 0.5× overview, where a nucleus (5-10 µm) is already smaller than a
pixel, so nothing coarser can hold nuclei to segment. The panel's pixel-size field has the same
top. Only a slide's coarser pyramid levels, derived from a believed level 0, go beyond it.
"""

from __future__ import annotations

import math

#: µm per pixel believed, inclusive (see the module's docstring for why)
PLAUSIBLE_UM = (0.05, 20.0)

#: µm per unit of the length units OME-XML may give (PhysicalSizeXUnit; µm when none is given)
OME_UNITS_UM = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,  # the micro sign
    "μm": 1.0,  # the Greek mu
    "um": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def plausible(value: float) -> bool:
    """Whether ``value`` µm per pixel lies in :data:`PLAUSIBLE_UM` (NaN and inf do not)."""
    return math.isfinite(value) and PLAUSIBLE_UM[0] <= value <= PLAUSIBLE_UM[1]


def checked_pixel_size(value, where: str, fix: str = "give --pixel-size (µm per pixel, e.g. 0.25 for 40×)") -> float:
    """``value`` as µm per pixel if it is a number in :data:`PLAUSIBLE_UM`; else a ValueError
    that names ``where`` it came from, the value and what to do (``fix``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the pixel size {value!r} is not a number of µm per pixel; {fix}") from None
    if isinstance(value, bool) or not plausible(number):
        lo, hi = PLAUSIBLE_UM
        raise ValueError(
            f"{where}: a pixel size of {number:g} µm is not plausible (microscope images have {lo:g} to {hi:g} µm "
            f"per pixel; 0.25 at 40×, 0.5 at 20×); {fix}"
        )
    return number


def ome_length_um(value: str, unit: str | None, where: str) -> float:
    """An OME-XML length (``PhysicalSizeX`` and its ``PhysicalSizeXUnit``) in µm, checked; a unit
    that is not a length is a ValueError."""
    unit = unit or "µm"
    if unit not in OME_UNITS_UM:
        raise ValueError(
            f"{where}: its pixel size is given in {unit!r}, which is not a length unit napari-cinuseg knows "
            f"({', '.join(OME_UNITS_UM)}); give --pixel-size (µm per pixel)"
        )
    try:
        number = float(value)
    except ValueError:
        raise ValueError(
            f"{where}: its pixel size {value!r} is not a number; give --pixel-size (µm per pixel)"
        ) from None
    return checked_pixel_size(number * OME_UNITS_UM[unit], where)


def resampling_factor(model_pixel_size: float | None, image_pixel_size: float | None, tolerance: float = 0.05) -> float:
    """How many model pixels one image pixel spans (image µm/px ÷ model µm/px); 1 when either is
    unknown or they differ by at most ``tolerance``. The one rule for every resampling to a
    model's pixel size: segmentation's tiles, a step's training pairs, its review and preview."""
    if not model_pixel_size or not image_pixel_size:
        return 1.0
    f = float(image_pixel_size) / float(model_pixel_size)
    return 1.0 if abs(f - 1) <= tolerance else f
