"""The model: the network (``network.py``, ``efficientnet.py``), the model with its classes,
normalisation and steps (``segmenter.py``), and its file (``file.py``).

``napari_cinuseg.model`` gives the model's public names, as it always has.
"""

from .segmenter import (
    PALETTE,
    CiNuSegModel,
    NucleusClass,
    StepRecord,
    check_class_name,
    check_colour,
)

__all__ = ["PALETTE", "CiNuSegModel", "NucleusClass", "StepRecord", "check_class_name", "check_colour"]
