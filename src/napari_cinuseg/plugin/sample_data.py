"""npe2 sample data: a 1024 × 1024 H&E crop of the OpenSlide CMU-1 test slide (CC0 1.0).

See ``resources/README.md`` for where the crop comes from.
"""

from __future__ import annotations

from importlib import resources

from ..io.images import read_rgb
from .layer_metadata import PIXEL_SIZE_KEY

SAMPLE_NAME = "H&E sample (CMU-1, CC0)"
SAMPLE_FILE = "cmu1-region.jpg"
SAMPLE_PIXEL_SIZE = 0.499  # µm/px: CMU-1 at 20× (its SVS says MPP = 0.499); the JPEG does not say


def sample_he() -> list[tuple]:
    """[(image, {"name": ..., "rgb": True, "metadata": {pixel size}})]: the packaged crop as
    (1024, 1024, 3) uint8, with the slide's pixel size, so the panel resamples it for a model."""
    with resources.as_file(resources.files("napari_cinuseg").joinpath("resources", SAMPLE_FILE)) as path:
        image = read_rgb(path)
    return [(image, {"name": SAMPLE_NAME, "rgb": True, "metadata": {PIXEL_SIZE_KEY: SAMPLE_PIXEL_SIZE}})]
