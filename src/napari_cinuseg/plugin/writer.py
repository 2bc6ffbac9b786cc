"""npe2 writer: a Labels layer (class map) to a CiNuSeg masks TIFF, its per-nucleus CSV and a
QuPath GeoJSON.

The files are the panel's Export's (:func:`napari_cinuseg.session.export.export_nuclei`): the masks
TIFF (the class map, then one binary mask per class, the class names, colours and the model's
identity in the metadata), ``<name>.nuclei.csv`` (one row per nucleus) and ``<name>.geojson``
beside it. The nuclei are the segmentation's where the panel made the layer and it was not edited
since; else the class map is split now as ``cinuseg segment`` splits it: by the model's learned
distance map where the layer carries it (a model with a separation head), else by the watershed.

Class names come from, in this order:

1. the layer's ``features``: a table (DataFrame or dict of columns) with the columns ``index``
   (the label value) and ``name``, and optionally ``colour`` (or ``color``); row 0 (background)
   is ignored;
2. ``metadata["cinuseg"]`` = ``{"class_names": [...], "colours": [...], "model_id": ...}``, which
   the CiNuSeg widget sets on the layers it makes;
3. otherwise ``"class 1"``, ``"class 2"``, ... up to the largest label value present.

Label values without a name get ``"class <value>"``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import describe_write_failure
from ..runtime.events import drain
from ..session.export import export_nuclei
from .layer_metadata import NUCLEI_KEY, RESULT_KEY, SEPARATION_KEY, layer_pixel_size

SUFFIXES = (".tif", ".tiff")
_ROWS = 2048  # rows scanned at a time when checking a lazy (zarr/dask) class map


def write_masks(path: str | os.PathLike, data: Any, attributes: dict) -> list[str]:
    """Write the Labels layer ``data`` to ``path`` as a masks TIFF; return ``[path]``."""
    path = Path(os.fspath(path))
    if path.suffix.lower() not in SUFFIXES:
        path = path.with_name(path.name + ".tif")
    attributes = attributes or {}
    if isinstance(data, (list, tuple)):  # multiscale labels: the full-resolution level
        if not data:
            raise ValueError("the labels layer has no data to write")
        data = data[0]
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    if len(data.shape) != 2:
        raise ValueError(
            f"CiNuSeg class masks are 2-D; this labels layer has shape {tuple(data.shape)}. "
            "Select a 2-D labels layer (one slice of a stack can be copied into a new layer)."
        )
    dtype = np.dtype(data.dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise ValueError(f"a class map holds integer labels, not {dtype} values")
    present = _label_values(data)
    if present.size and (present[0] < 0 or present[-1] > 255):
        raise ValueError(
            f"the labels layer holds values {int(present[0])}..{int(present[-1])}; a class map's labels are "
            "0 (background) to 255. Is this an instance (nucleus id) layer rather than a class layer?"
        )
    names, colours, model_id = _classes(attributes, int(present[-1]) if present.size else 0)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class names must be unique; {', '.join(map(repr, dupes))} name more than one class")
    extra = {"layer_name": attributes.get("name")} if attributes.get("name") else None
    # napari's save dialog has already asked before replacing an existing file.
    pixel_size = layer_pixel_size(attributes.get("metadata"))
    from ..inference.instances import nuclei_of  # noqa: PLC0415 - SciPy and scikit-image load only when a class map is saved (+250 ms on importing the writer)

    # the same files as the panel's Export: the masks TIFF, its per-nucleus table and the GeoJSON,
    # of the nuclei the segmentation found, or split from the class map now as it split them (by
    # the model's learned distance where the layer carries it, else by the watershed)
    class_map = _as_uint8(data)
    metadata = attributes.get("metadata") or {}
    separation = metadata.get(SEPARATION_KEY)
    if separation is not None and tuple(np.shape(separation)) != class_map.shape:
        warnings.warn(
            f"the layer's learned distance map is {tuple(np.shape(separation))} but the layer is "
            f"{class_map.shape} (cropped or resized since it was segmented): its nuclei are split by the "
            "watershed instead; segment the image again for the model's own split",
            stacklevel=2,
        )
        separation = None
    nuclei = metadata.get(NUCLEI_KEY) or nuclei_of(class_map, pixel_size_um=pixel_size, separation=separation)
    try:  # export_nuclei leaves no table or outlines without their masks file
        _, csv_path, gj_path = drain(
            export_nuclei(
                class_map,
                nuclei,
                path,
                names,
                colours,
                model_id,
                extra=extra,
                overwrite=True,
                pixel_size=pixel_size,
            )
        )
    except OSError as exc:
        raise OSError(
            exc.errno, f"{path} could not be written: {describe_write_failure(exc, path)}", str(path)
        ) from None
    return [str(path), str(csv_path), str(gj_path)]


def _label_values(data) -> np.ndarray:
    """The sorted distinct values of a 2-D array, scanning a lazy one a band of rows at a time."""
    if isinstance(data, np.ndarray):
        return np.unique(data)
    values: set = set()
    for y in range(0, data.shape[0], _ROWS):
        values.update(np.unique(np.asarray(data[y : y + _ROWS])).tolist())
    return np.array(sorted(values), dtype=np.int64)


def _as_uint8(data):
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False)
    return data  # a lazy array is tiled (and cast) by export_masks


def _column(table, *names: str):
    for name in names:
        if name in table:
            return list(table[name])
    return None


def _classes(attributes: dict, max_label: int) -> tuple[list[str], list | None, str | None]:
    """(class names for labels 1..n, colours or None, model id or None)."""
    meta = (attributes.get("metadata") or {}).get(RESULT_KEY) or {}
    model_id = meta.get("model_id")
    by_value: dict[int, str] = {}
    colour_of: dict[int, Any] = {}

    features = attributes.get("features")
    if features is not None and len(features):
        index = _column(features, "index")
        fnames = _column(features, "name")
        if index is not None and fnames is not None:
            fcolours = _column(features, "colour", "color") or [None] * len(index)
            for value, name, colour in zip(index, fnames, fcolours):
                if _missing(value) or _missing(name):
                    continue
                value = int(value)
                if 0 < value <= 255:
                    by_value[value] = str(name)
                    colour = _hex(colour)
                    if colour:
                        colour_of[value] = colour

    if not by_value and meta.get("class_names"):
        for i, name in enumerate(meta["class_names"], start=1):
            by_value[i] = str(name)
        for i, colour in enumerate(meta.get("colours") or [], start=1):
            colour = _hex(colour)
            if colour:
                colour_of[i] = colour

    n = max([max_label, *by_value])
    names = [by_value.get(i, f"class {i}") for i in range(1, n + 1)]
    colours = [colour_of.get(i) for i in range(1, n + 1)] if colour_of else None
    return names, colours, model_id


def _missing(x) -> bool:
    if x is None:
        return True
    try:
        import pandas as pd  # noqa: PLC0415 - optional here (napari brings it), and +700 ms on importing the writer

        return bool(pd.isna(x)) if np.ndim(x) == 0 else False
    except ImportError:  # pragma: no cover - napari brings pandas
        return isinstance(x, float) and np.isnan(x)


def _hex(colour) -> str | None:
    """A colour as given (a name or '#rrggbb') or an RGB(A) tuple in 0..1 as '#rrggbb'; else None."""
    if isinstance(colour, str):
        return colour or None
    if colour is None or np.ndim(colour) != 1 or len(colour) not in (3, 4):
        return None
    try:
        from matplotlib.colors import to_hex  # noqa: PLC0415 - matplotlib loads only for a colour given as numbers (+300 ms on importing the writer)

        return to_hex(np.asarray(colour, dtype=float), keep_alpha=False)
    except ValueError:
        return None
