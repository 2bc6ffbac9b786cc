"""Which reader a data folder needs: the layouts of ../shared/data, the data sets' original
layouts, or a generic folder. One entry point for the CLI and the benchmark."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.names import DATASETS, NUCLEUS_DATASETS
from . import nucleus_only
from .labelled import LabelledSet, read_consep_patches, read_folder, read_monusac_images
from .original_layouts import read_consep_original, read_monusac_original


def read_dataset(kind: str, root: str | os.PathLike) -> LabelledSet:
    """Read ``root`` as data set ``kind``, telling its layout from the folders it holds."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; give --data or set CINUSEG_DATA")
    names = {p.name for p in root.iterdir() if p.is_dir()}
    if kind == "consep":
        if names & {"Images", "Train", "Test"}:
            return read_consep_original(root)  # HoVer-Net's Images/*.png + Labels/*.mat
        if names & {"images", "train", "test"}:
            return read_consep_patches(root)
    elif kind == "monusac":
        if "images" in names:
            return read_monusac_images(root)
        if any(n.startswith("TCGA-") for n in names) or any(root.glob("*.xml")):
            return read_monusac_original(root)  # per patient: *.tif/*.svs + *.xml
    elif kind == "folder":
        return read_folder(root)
    elif kind in NUCLEUS_DATASETS:
        return {
            "monuseg": nucleus_only.read_monuseg,
            "nuinsseg": nucleus_only.read_nuinsseg,
            "nuclei": nucleus_only.read_nuclei,
        }[kind](root)
    else:
        raise ValueError(f"unknown data set {kind!r}: choose one of {', '.join(DATASETS + NUCLEUS_DATASETS)}")
    raise ValueError(
        f"{root} is in no layout known for {kind}: expected "
        + (
            "train/images + train/labels (+ classes.json), or CoNSeP's Images/ + Labels/*.mat"
            if kind == "consep"
            else "images/ + labels/ + classes.json, or MoNuSAC's patient folders with *.tif/*.svs + *.xml"
        )
    )
