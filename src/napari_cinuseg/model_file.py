"""``napari_cinuseg.model_file``, the public path of the model file: it lives in
:mod:`napari_cinuseg.model.file`."""

from .model.file import BUNDLED_MODEL, ModelFileError, load_model, read_record, save_model

__all__ = ["BUNDLED_MODEL", "ModelFileError", "load_model", "read_record", "save_model"]
