"""npe2 reader: H&E images and whole slides for napari.

SVS, NDPI, (OME-)TIFF and pyramidal TIFF are opened through tifffile's zarr view, so nothing is
decoded until napari asks for a region: a pyramid becomes a multiscale layer (one zarr array per
level), a single-level TIFF one lazy zarr array. Only series 0 (the baseline and its pyramid) is
read; an SVS's thumbnail, label and macro images are not layers. PNG and JPEG are read in memory.

A TIFF written by :func:`napari_cinuseg.io.export.export_masks` (page 0 a class map, its description
naming the classes) opens as a Labels layer with the class names in its ``features``, so that a
saved class map can be opened, corrected and saved again.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io.export import masks_metadata, masks_pyramidal
from ..io.images import IN_MEMORY_LIMIT_PX, ImageWarning, as_rgb_uint8, check_image_file, read_rgb
from ..io.slides import TIFF_SUFFIXES, Slide, closed_on_failure, file_pixel_size, open_tiff
from .layer_metadata import PIXEL_SIZE_KEY, RESULT_KEY, result_metadata

# .ome.tif / .ome.tiff end in .tif / .tiff; napari.yaml lists the same (a test checks it)
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")

LayerData = tuple  # (data, kwargs, layer_type)

# A class map up to this many pixels is read into memory, so it can be edited; a larger one (a
# whole slide's) opens lazily and read-only, its pyramid as a multiscale layer.
EDITABLE_PIXELS = IN_MEMORY_LIMIT_PX


def labels_colormap(colours: dict[int, str]):
    """A Labels layer's colours: each label in its own, background transparent; for the reader's
    layers and the panel's (napari is imported here only, when a layer is made)."""
    from napari.utils.colormaps import DirectLabelColormap  # noqa: PLC0415 - napari loads only when a layer is made: the reader imports without it, headless too

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colours})


def _suffix(path: str | os.PathLike) -> str:
    return Path(os.fspath(path)).suffix.lower()


def _handles(path) -> bool:
    if not isinstance(path, (str, os.PathLike)):
        return False
    return _suffix(path) in TIFF_SUFFIXES + PLAIN_SUFFIXES and not Path(os.fspath(path)).is_dir()


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path`` (a path or a list of paths), or None if this plugin does not read it.

    Only the suffix is checked here; a file that turns out to be unreadable raises a
    ``ValueError`` that says what is wrong when the returned function reads it.
    """
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_handles(p) for p in paths):
        return None
    return read_he


def read_he(path: str | os.PathLike | list) -> list[LayerData]:
    """Layer data for one path or a list of paths (one layer each)."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    layers: list[LayerData] = []
    for p in paths:
        layers.append(_read_one(Path(os.fspath(p))))
    return layers


def _layer_name(path: Path) -> str:
    stem = path.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem


def _read_one(path: Path) -> LayerData:
    try:
        check_image_file(path)  # missing, a folder, a link loop, empty: said so
    except FileNotFoundError as exc:
        raise ValueError(f"cannot open {path}: there is no such file") from exc
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path)
    if suffix in PLAIN_SUFFIXES:
        image = read_rgb(path)  # a ValueError that names the file and says what to do
        meta = {"path": str(path), "level_shapes": [tuple(image.shape)]}
        return (image, {"name": _layer_name(path), "rgb": True, "metadata": meta}, "image")
    raise ValueError(f"{path}: napari-cinuseg reads {', '.join(TIFF_SUFFIXES + PLAIN_SUFFIXES)} files, not {suffix!r}")


def _read_tiff(path: Path) -> LayerData:
    unreadable = (
        f"{path} could not be read as an image ({{cause}}); is the file complete (not truncated by a download or copy)?"
    )
    with closed_on_failure(open_tiff(path), unreadable) as tif:
        masks_meta = masks_metadata(tif)
        if masks_meta is not None:
            return _masks_layer(tif, path, masks_meta)
        return _image_layer(tif, path)


def _open_zarr(store, tif):
    """``zarr.open`` of a tifffile store that keeps ``tif`` (its open file) alive with it."""
    import zarr  # noqa: PLC0415 - zarr loads only when a TIFF is opened (+150 ms on importing the reader)

    # The store reads tiles through the TiffFile's file handle: hold the handle as long as the
    # store (and so every zarr array of the layer, which holds the store) lives.
    store._cinuseg_tiff = tif
    return zarr.open(store, mode="r")


def _probe(array) -> None:
    """Decode the first and the last chunk, so a truncated file fails now, not in the viewer."""
    first = tuple(slice(0, 1) for _ in array.shape)
    last = tuple(slice(n - 1, n) for n in array.shape)
    np.asarray(array[first])
    np.asarray(array[last])


def _believed_pixel_size(tif) -> float | None:
    """The file's pixel size, or None (unknown, and said) when it states one that is not plausible:
    the image still opens, and the panel's pixel-size field is where to give the right one."""
    try:
        return file_pixel_size(tif)
    except ValueError as exc:
        warnings.warn(
            f"{str(exc).replace('give --pixel-size', 'set the pixel size in the panel')} (taken as unknown)",
            ImageWarning,
            stacklevel=2,
        )
        return None


def _image_layer(tif, path: Path) -> LayerData:
    if not tif.series:
        raise ValueError(
            f"{path} holds no readable image (its image directory is missing or damaged); "
            "is the file complete (not truncated by a download or copy)?"
        )
    series = tif.series[0]
    levels = series.levels
    axes = levels[0].axes
    shape = tuple(levels[0].shape)
    if axes in ("YXS", "YXC") and shape[-1] in (3, 4):
        rgb = True
    elif axes == "YX":
        rgb = False
    else:
        raise ValueError(
            f"{path} holds {axes} data of shape {shape}; napari-cinuseg opens 2-D RGB (or grey) "
            "H&E images. Open stacks and multichannel images with napari's own TIFF reader."
        )
    level_shapes = [tuple(lv.shape) for lv in levels]
    if len(levels) == 1 and Slide._fits_in_memory(levels[0]):
        # 16-bit, float, NaN, alpha: converted (and said) by the function the command line uses
        data = as_rgb_uint8(levels[0].asarray(), path)
        meta = {"path": str(path), "level_shapes": [tuple(data.shape)], PIXEL_SIZE_KEY: _believed_pixel_size(tif)}
        tif.close()
        return (data, {"name": _layer_name(path), "rgb": True, "multiscale": False, "metadata": meta}, "image")
    root = _open_zarr(series.aszarr(), tif)
    if len(levels) > 1:
        data: Any = [root[str(i)] for i in range(len(levels))]
        _probe(data[0])
        _probe(data[-1])
    else:
        data = root
        _probe(data)
    kwargs: dict[str, Any] = {
        "name": _layer_name(path),
        "rgb": rgb,
        "multiscale": len(levels) > 1,
        "metadata": {"path": str(path), "level_shapes": level_shapes, PIXEL_SIZE_KEY: _believed_pixel_size(tif)},
    }
    if not rgb:
        kwargs["colormap"] = "gray"
    return (data, kwargs, "image")


def _masks_layer(tif, path: Path, meta: dict) -> LayerData:
    """The class map of a masks file as a Labels layer: in memory (editable) when small, else its
    pyramid, lazily (only the tiles napari shows are decoded)."""
    series = tif.series[0]
    levels = series.levels if masks_pyramidal(tif) else [series]
    page_shape = tuple(levels[0].shape)
    if len(page_shape) != 2:
        raise ValueError(f"{path}: the class map has shape {page_shape}; a 2-D map was expected")
    if page_shape[0] * page_shape[1] <= EDITABLE_PIXELS:
        data: Any = levels[0].asarray()  # in memory: the class map can be painted on and saved again
        tif.close()
    elif len(levels) > 1:
        root = _open_zarr(series.aszarr(), tif)  # a whole slide's map stays on disk (read-only)
        data = [root[str(i)] for i in range(len(levels))]
        _probe(data[-1])
    else:
        data = _open_zarr(tif.pages[0].aszarr(), tif)
        _probe(data)
    classes = {int(k): str(v) for k, v in meta["classes"].items()}
    colours = {int(k): v for k, v in (meta.get("colours") or {}).items()}
    n = max(classes, default=0)
    names = [classes.get(i, f"class {i}") for i in range(1, n + 1)]
    colour_list = [colours.get(i) for i in range(1, n + 1)]
    features: dict[str, list] = {"index": list(range(n + 1)), "name": ["background"] + names}
    if any(colour_list):
        features["colour"] = [None] + colour_list
    known = {i: c for i, c in enumerate(colour_list, start=1) if c}
    colormap = labels_colormap(known) if known else None
    kwargs = {
        "name": _layer_name(path),
        "features": features,
        "metadata": {
            "path": str(path),
            "level_shapes": [tuple(lv.shape) for lv in levels],
            PIXEL_SIZE_KEY: meta.get("pixel_size_um"),
            RESULT_KEY: result_metadata(names, colour_list, meta.get("model_id"), meta.get("pixel_size_um")),
        },
    }
    if isinstance(data, list):
        kwargs["multiscale"] = True
    if colormap is not None:
        kwargs["colormap"] = colormap
    return (data, kwargs, "labels")
