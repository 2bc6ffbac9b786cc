"""napari-cinuseg: class-incremental nuclei segmentation (CiNuSeg) in H&E histology.

The headless engine (this package, without ``ui/``) never imports Qt or napari. The
names below are imported on first use, so that importing the package (the napari reader, the
command line's help) does not import PyTorch.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "CiNuSegModel": "model.segmenter",
    "NucleusClass": "model.segmenter",
    "ModelFileError": "model.file",
    "load_model": "model.file",
    "read_record": "model.file",
    "save_model": "model.file",
    "TrainSettings": "training.settings",
    "preset": "training.settings",
    "drain": "runtime.events",
    "train_base": "training.steps",
    "train_step": "training.steps",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
