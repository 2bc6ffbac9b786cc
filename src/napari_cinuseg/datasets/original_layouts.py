"""CoNSeP and MoNuSAC in the layouts their authors published, read into a :class:`LabelledSet`.

* CoNSeP (Graham et al. 2019, HoVer-Net): ``<split>/Images/<stem>.png`` (1000x1000 RGB or RGBA)
  and ``<split>/Labels/<stem>.mat`` with ``type_map`` (0 background, 1 other, 2 inflammatory,
  3 healthy epithelial, 4 dysplastic/malignant epithelial, 5 fibroblast, 6 muscle,
  7 endothelial) and ``inst_map``; the split folders are ``Train/`` and ``Test/``.
  Regrouped as the CiNuSeg paper does: Epithelial (3, 4), Spindle-shaped (5, 6, 7), Other (1, 2).
* MoNuSAC 2020 (Verma et al. 2021): ``<patient>/<slide>_<n>.tif`` (or ``.svs``) and
  ``<patient>/<slide>_<n>.xml``, Aperio ImageScope annotations whose ``Annotation`` elements
  name their class in ``Attributes/Attribute@Name`` and hold polygons in
  ``Regions/Region/Vertices/Vertex@X,@Y``. "Ambiguous" regions become 255 (unlabelled).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile
from scipy.io import loadmat
from scipy.io.matlab import matfile_version
from skimage.draw import polygon as draw_polygon

from ..io.images import as_rgb_uint8, read_rgb
from .labelled import (
    CONSEP_PAPER_CLASSES,
    CONSEP_PIXEL_SIZE,
    IGNORE,
    IMAGE_SUFFIXES,
    MONUSAC_PAPER_CLASSES,
    MONUSAC_PIXEL_SIZE,
    LabelledImage,
    LabelledSet,
)

# ---------------------------------------------------------------------------------------- CoNSeP

CONSEP_CLASS_NAMES = list(CONSEP_PAPER_CLASSES)  # Epithelial, Spindle-shaped, Other

# CoNSeP's original type ids 0..7 → the paper's classes (1 Epithelial, 2 Spindle-shaped, 3 Other).
CONSEP_TYPE_TO_PAPER = np.array([0, 3, 3, 1, 1, 2, 2, 2], np.uint8)


def _subdir(folder: Path, name: str) -> Path | None:
    """``folder/name`` matched without regard to case (``Images`` or ``images``), else None."""
    exact = folder / name
    if exact.is_dir():
        return exact
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() == name.lower()), None)


def _consep_split_folder(root: Path, split: str | None) -> Path:
    layout = (
        "expected CoNSeP as published: a split folder holding Images/*.png and Labels/<stem>.mat, "
        "or a folder holding Train/ and/or Test/ split folders"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; {layout}")
    if split is not None:
        folder = _subdir(root, split)
        if folder is None and root.name.lower() == split.lower() and _subdir(root, "Images"):
            folder = root  # root is already the split folder asked for
        if folder is None:
            found = [p.name for p in (_subdir(root, "Train"), _subdir(root, "Test")) if p is not None]
            raise FileNotFoundError(
                f"{root} has no split folder {split!r}"
                + (f" (it has {', '.join(found)})" if found else "")
                + f"; {layout}"
            )
        return folder
    if _subdir(root, "Images") is not None:
        return root
    train, test = _subdir(root, "Train"), _subdir(root, "Test")
    if train is not None:
        return train  # with both splits, read Train: the test split stays held out unless asked for
    if test is not None:
        return test
    raise FileNotFoundError(f"{root} has no Images/ folder and no Train/ or Test/ split folder; {layout}")


def _read_mat(path: Path) -> dict:
    """The variables of a MATLAB file; v7.3 (HDF5) files need h5py, else a clear error."""
    try:
        with open(path, "rb") as f:
            major, _minor = matfile_version(f)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a MATLAB file"
        raise ValueError(f"{path} is not a readable MATLAB .mat file ({e})") from e
    if major == 2:  # MATLAB v7.3: an HDF5 file
        try:
            import h5py  # noqa: PLC0415 - optional dependency: only MATLAB v7.3 files need it
        except ImportError:
            raise ValueError(
                f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it as v7 "
                "(in MATLAB: save(file, 'inst_map', 'type_map', '-v7')) or install h5py"
            ) from None
        out = {}
        with h5py.File(path, "r") as f:
            for key, ds in f.items():
                if isinstance(ds, h5py.Dataset):
                    out[key] = np.asarray(ds).T  # MATLAB stores arrays column-major
        return out
    try:
        return loadmat(str(path))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable MATLAB .mat file ({e})") from e


def _integer_map(arr, path: Path, key: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {key!r} must be a 2-D numeric map, got {a.dtype} of shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"{path}: {key!r} must hold whole numbers")
    return a.astype(np.int64)


def _consep_type_map(mat: dict, path: Path) -> np.ndarray:
    """CoNSeP's 0..7 type map: ``type_map``, else built from ``inst_map`` and ``inst_type``."""
    if "type_map" in mat:
        types = _integer_map(mat["type_map"], path, "type_map")
    elif "inst_map" in mat and "inst_type" in mat:
        inst = _integer_map(mat["inst_map"], path, "inst_map")
        per_inst = np.asarray(mat["inst_type"]).reshape(-1).astype(np.int64)
        if inst.min(initial=0) < 0 or inst.max(initial=0) > per_inst.size:
            raise ValueError(f"{path}: inst_map has ids beyond the {per_inst.size} entries of inst_type")
        types = np.concatenate([[0], per_inst])[inst]
    else:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(
            f"{path} has no 'type_map' (nor 'inst_map' with 'inst_type'); it holds {keys or 'no variables'}. "
            "CoNSeP label files hold inst_map and type_map (class ids 0..7)"
        )
    bad = np.setdiff1d(np.unique(types), np.arange(8))
    if bad.size:
        raise ValueError(f"{path}: type ids must be CoNSeP's 0..7, found {bad.tolist()}")
    return types


def read_consep_original(root: str | os.PathLike, split: str | None = None) -> LabelledSet:
    """CoNSeP as published (``Images/*.png`` + ``Labels/<stem>.mat``), in the paper's classes.

    ``root`` is a split folder (holding ``Images/`` and ``Labels/``) or a folder holding ``Train/``
    and/or ``Test/``; ``split`` names the split folder to read (default: ``Train`` when there is
    one, else ``Test``). Type ids are regrouped into Epithelial (3 healthy, 4 dysplastic/malignant),
    Spindle-shaped (5 fibroblast, 6 muscle, 7 endothelial) and Other (1 other, 2 inflammatory).
    Each CoNSeP image is its own source (its stem, e.g. ``train_1``).
    """
    folder = _consep_split_folder(Path(root), split)
    img_dir, lab_dir = _subdir(folder, "Images"), _subdir(folder, "Labels")
    if img_dir is None:
        raise FileNotFoundError(f"{folder} has no Images/ folder; CoNSeP keeps its images in <split>/Images/*.png")
    if lab_dir is None:
        raise FileNotFoundError(
            f"{folder} has no Labels/ folder; CoNSeP keeps its annotations in <split>/Labels/<stem>.mat"
        )
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{img_dir} holds no image (.png); CoNSeP keeps its images in Images/*.png")
    mats = {p.stem: p for p in lab_dir.iterdir() if p.is_file() and p.suffix.lower() == ".mat"}
    missing = [p.name for p in images if p.stem not in mats]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"no .mat of the same name in {lab_dir} for {shown}; each image needs Labels/<stem>.mat"
        )
    items = []
    for ip in images:
        lp = mats[ip.stem]
        img = read_rgb(ip)
        types = _consep_type_map(_read_mat(lp), lp)
        if types.shape != img.shape[:2]:
            raise ValueError(f"{lp}: the type map is {types.shape} but its image is {img.shape[:2]}")
        items.append(LabelledImage(img, CONSEP_TYPE_TO_PAPER[types], ip.stem, ip.stem))
    return LabelledSet(list(CONSEP_CLASS_NAMES), items, CONSEP_PIXEL_SIZE)


# --------------------------------------------------------------------------------------- MoNuSAC

MONUSAC_CLASS_NAMES = list(MONUSAC_PAPER_CLASSES)  # Epithelial, Lymphocyte, Macrophage, Neutrophil
MONUSAC_AMBIGUOUS = "ambiguous"
MONUSAC_IMAGE_SUFFIXES = (".tif", ".tiff", ".svs")  # in order of preference for one stem


def _rgb_from_array(img: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """:func:`read_rgb`'s conventions for an array read from a TIFF/SVS."""
    img = np.asarray(img)
    if "S" in axes and axes.index("S") != len(axes) - 1 and img.ndim == len(axes):
        img = np.moveaxis(img, axes.index("S"), -1)  # planar (S, Y, X) → (Y, X, S)
    while img.ndim > 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3 and img.shape[2] not in (3, 4) and img.shape[0] == 1:
        img = img[0]
    return as_rgb_uint8(img, path)


def read_tiff_rgb(path: str | os.PathLike) -> np.ndarray:
    """The baseline (series 0, level 0) of a TIFF or Aperio SVS as RGB uint8, alpha dropped."""
    path = Path(path)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            if not tif.series:
                raise ValueError("it holds no image")
            level = tif.series[0].levels[0]
            arr, axes = level.asarray(), level.axes
    except Exception as e:  # noqa: BLE001 - tifffile raises several kinds for a broken file
        raise ValueError(f"{path} is not a readable TIFF/SVS image ({e})") from e
    return _rgb_from_array(arr, axes, path)


def _annotation_class(ann: ET.Element) -> str:
    for att in ann.findall("Attributes/Attribute"):
        name = (att.get("Name") or "").strip()
        if name:
            return name
    return (ann.get("Name") or "").strip()


def read_monusac_xml(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """The polygons of a MoNuSAC XML file as ``(class name, (N, 2) array of (x, y))``, in file order."""
    path = Path(path)
    try:
        tree = ET.parse(str(path))
    except (ET.ParseError, OSError) as e:
        raise ValueError(
            f"{path} is not readable MoNuSAC XML ({e}); expected Annotations/Annotation elements with "
            "Attributes/Attribute@Name and Regions/Region/Vertices/Vertex@X,@Y"
        ) from e
    root = tree.getroot()
    annotations = [root] if root.tag == "Annotation" else list(root.iter("Annotation"))
    polygons = []
    for k, ann in enumerate(annotations, start=1):
        regions = ann.findall("Regions/Region")
        if not regions:
            continue
        cls = _annotation_class(ann)
        if not cls:
            raise ValueError(
                f"{path}: Annotation {ann.get('Id', k)} has regions but no class name in Attributes/Attribute@Name"
            )
        for region in regions:
            vertices = region.findall("Vertices/Vertex")
            try:
                xy = np.array([(float(v.get("X")), float(v.get("Y"))) for v in vertices], np.float64).reshape(-1, 2)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"{path}: Region {region.get('Id', '?')} of {cls!r} has a Vertex without numeric X and Y ({e})"
                ) from e
            polygons.append((cls, xy))
    return polygons


def monusac_class_map(polygons, shape: tuple[int, int], path: str | os.PathLike = "") -> np.ndarray:
    """Rasterise ``(class name, (x, y) vertices)`` polygons into a uint8 class map of ``shape``.

    Epithelial 1, Lymphocyte 2, Macrophage 3, Neutrophil 4 in file order (a later polygon paints
    over an earlier one); Ambiguous regions are painted last, as 255, so they win every overlap.
    Pixels whose centres lie inside or on a polygon are painted; parts outside the image are clipped.
    """
    ids = {n.lower(): i for i, n in enumerate(MONUSAC_CLASS_NAMES, start=1)}
    labels = np.zeros(shape, np.uint8)
    ambiguous = []
    for cls, xy in polygons:
        key = cls.strip().lower()
        if key == MONUSAC_AMBIGUOUS:
            ambiguous.append(xy)
            continue
        if key not in ids:
            raise ValueError(
                f"{path}: unknown MoNuSAC class {cls!r}; expected one of {', '.join(MONUSAC_CLASS_NAMES)} or Ambiguous"
            )
        if len(xy):
            rr, cc = draw_polygon(xy[:, 1], xy[:, 0], shape)
            labels[rr, cc] = ids[key]
    for xy in ambiguous:
        if len(xy):
            rr, cc = draw_polygon(xy[:, 1], xy[:, 0], shape)
            labels[rr, cc] = IGNORE
    return labels


def _monusac_files(folder: Path) -> dict[str, Path]:
    """stem → image file of a patient folder (``.tif`` preferred over ``.svs`` for one stem)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        suffix = p.suffix.lower()
        if not p.is_file() or suffix not in MONUSAC_IMAGE_SUFFIXES:
            continue
        old = found.get(p.stem)
        if old is None or MONUSAC_IMAGE_SUFFIXES.index(suffix) < MONUSAC_IMAGE_SUFFIXES.index(old.suffix.lower()):
            found[p.stem] = p
    return found


def read_monusac_original(root: str | os.PathLike) -> LabelledSet:
    """MoNuSAC as published: ``root/<patient>/<slide>_<n>.tif`` (or ``.svs``) + same-stem ``.xml``.

    Polygons are rasterised into Epithelial 1, Lymphocyte 2, Macrophage 3, Neutrophil 4 (the
    paper's order); Ambiguous regions become 255 (unlabelled). The source of an image is its
    patient folder, so splits never cut a patient (nor, therefore, a slide) in two. ``root`` may
    also be a single patient folder.
    """
    root = Path(root)
    layout = (
        "expected MoNuSAC as published: <root>/<patient>/<slide>_<n>.tif (or .svs) with "
        "<slide>_<n>.xml beside each image"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; {layout}")
    patients = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and _monusac_files(p)]
    if not patients:
        if _monusac_files(root):
            patients = [root]  # root is one patient folder
        else:
            raise FileNotFoundError(f"{root} has no patient folder holding .tif or .svs images; {layout}")
    items = []
    for folder in patients:
        files = _monusac_files(folder)
        xmls = {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".xml"}
        missing = [files[s].name for s in sorted(files) if s not in xmls]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(f"no .xml of the same name in {folder} for {shown}; {layout}")
        for stem in sorted(files):
            img = read_tiff_rgb(files[stem])
            labels = monusac_class_map(read_monusac_xml(xmls[stem]), img.shape[:2], xmls[stem])
            items.append(LabelledImage(img, labels, folder.name, stem))
    return LabelledSet(list(MONUSAC_CLASS_NAMES), items, MONUSAC_PIXEL_SIZE)
