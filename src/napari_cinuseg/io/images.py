"""What an input image may be, and how it becomes the RGB uint8 (H, W, 3) the engine needs.

Every conversion is *said*: it is made, and an :class:`ImageNotice` warning names it, so that the
CLI prints it and napari shows it as a notification. What cannot be an H&E image is refused with
a ValueError that says what to do.

- RGBA: the alpha channel is dropped (silently: routine, e.g. every MoNuSAC TIFF).
- Grey (H, W): repeated to three channels (H&E is colour; a grey image segments poorly).
- Channels first (3, H, W): moved last (four planes are taken for a stack, not RGBA).
- 16-bit and other integers: rescaled from the image's own range (min..max) to 0..255; floats in
  0..1 are multiplied by 255, other floats rescaled from their own range.
- NaN and ±inf: replaced by the lowest / highest finite value.
- A stack or volume (more than two spatial axes): refused; save one 2-D plane.
- An empty image (a side of 0 pixels): refused.

Whole slides are converted tile by tile with :func:`region_to_uint8`, from the dtype's range
rather than the slide's own (which would need the whole slide), so that every tile is scaled the
same way.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

#: The one limit for holding a whole class map in memory (64 MB as uint8): above it the
#: segmentation builds the map on disk, the statistics go blockwise, and the napari reader opens
#: a masks file lazily (read-only) instead of whole (editable).
IN_MEMORY_LIMIT_PX = 64_000_000

__all__ = ["ImageNotice", "as_rgb_uint8", "region_to_uint8", "rgb_view"]


class ImageNotice(UserWarning):
    """A conversion made to an input image (shown to the user, never silent)."""


def _say(path, what: str) -> None:
    warnings.warn(f"{path}: {what}", ImageNotice, stacklevel=3)


def as_rgb_uint8(img: np.ndarray, path: str | os.PathLike = "image") -> np.ndarray:
    """Any 2-D image array → RGB uint8 (H, W, 3), with an :class:`ImageNotice` per conversion."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[2] not in (3, 4):
        img = np.moveaxis(img, 0, -1)
        _say(path, "channels were stored first (3, H, W); moved last")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
        _say(path, "grey image repeated to three channels; H&E models expect colour, results may be poor")
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(
            f"{path}: a 2-D RGB image is needed, but this holds an array of shape {img.shape} "
            "(a stack, a volume or several channels); save one 2-D RGB plane and open that"
        )
    if 0 in img.shape[:2]:
        raise ValueError(f"{path}: the image is empty (shape {img.shape}); choose another image")
    if img.shape[2] == 4:
        img = img[..., :3]  # routine (MoNuSAC's TIFFs are RGBA): not worth a notice
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == bool or not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"{path}: pixel type {img.dtype} is not an image's; save it as 8- or 16-bit RGB")
    values = img.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        if not finite.any():
            raise ValueError(f"{path}: every pixel is NaN or infinite; there is no image to read")
        lo, hi = float(values[finite].min()), float(values[finite].max())
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
        _say(path, f"{int((~finite).sum())} NaN/infinite value(s) replaced by the lowest/highest finite value")
    lo, hi = float(values.min()), float(values.max())
    if np.issubdtype(img.dtype, np.floating) and lo >= 0 and hi <= 1:
        out = values * 255
        _say(path, f"{img.dtype} values in 0..1 scaled to 0..255")
    else:
        out = (values - lo) / max(hi - lo, 1e-12) * 255
        _say(path, f"{img.dtype} values rescaled from their range {lo:g}..{hi:g} to 0..255")
    return np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))


def rgb_view(array, name: str = "image"):
    """An image array as the engine reads it (sliceable, (H, W, 3|4) uint8): returned as it is
    when it already is that (a lazy zarr/dask level stays lazy); an in-memory numpy array of any
    other form is converted by :func:`as_rgb_uint8` (said, or refused); a lazy array of another
    form is refused, since converting it would load it whole."""
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    if len(shape) == 3 and shape[2] in (3, 4) and dtype == np.uint8 and 0 not in shape:
        return array
    if isinstance(array, np.ndarray):
        return as_rgb_uint8(array, name)
    raise ValueError(
        f"{name}: a large image must be 8-bit RGB (H, W, 3) to be read lazily, but it is {dtype} "
        f"{shape}; convert it to 8-bit RGB (e.g. a pyramidal TIFF) and open that"
    )


def region_to_uint8(region: np.ndarray) -> np.ndarray:
    """A tile of a slide that is not uint8 → uint8 from the dtype's range (integers: 0..max;
    floats: 0..1 if they fit there, else as they are), NaN → 0."""
    if np.issubdtype(region.dtype, np.integer):
        info = np.iinfo(region.dtype)
        return (region.astype(np.float64) / info.max * 255).round().clip(0, 255).astype(np.uint8)
    region = np.nan_to_num(region.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    scale = 255.0 if region.max() <= 1.0 else 1.0
    return (region * scale).round().clip(0, 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 image (H, W, 3), converted as :func:`as_rgb_uint8`
    says (and warns); a file that is not a readable image is a ValueError."""
    try:
        from skimage import io as skio

        img = np.asarray(skio.imread(str(path)))
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}") from None
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes advice
        raise ValueError(
            f"{path} could not be read as an image ({type(exc).__name__}: {exc}); is it complete "
            "(not truncated by a download or copy) and really a PNG/JPEG/TIFF?"
        ) from None
    if img.dtype == object:  # imageio's answer for some unreadable files
        raise ValueError(f"{path} could not be read as an image; is it really a PNG/JPEG/TIFF?")
    return as_rgb_uint8(img, path)
