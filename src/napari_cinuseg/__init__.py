"""napari-cinuseg: class-incremental nuclei segmentation (CiNuSeg) in H&E histology.

The headless engine (this package, without its ``_widgets``) never imports Qt or napari.
"""

from .model import CiNuSegModel, NucleusClass
from .model_file import ModelFileError, load_model, read_record, save_model
from .settings import TrainSettings, preset
from .training import drain, train_base, train_step

__version__ = "0.1.0"

__all__ = [
    "CiNuSegModel",
    "ModelFileError",
    "NucleusClass",
    "TrainSettings",
    "drain",
    "load_model",
    "preset",
    "read_record",
    "save_model",
    "train_base",
    "train_step",
]
