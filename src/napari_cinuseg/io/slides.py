"""Images and whole slides, read lazily: SVS, pyramidal TIFF and OME-TIFF through tifffile's
zarr view (only the tiles asked for are decoded), plain PNG/JPEG in memory."""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np

from .images import (
    IN_MEMORY_LIMIT_PX,
    ImageNotice,
    ImageWarning,
    as_rgb_uint8,
    check_image_file,
    check_jpeg_tiles,
    read_rgb,
    region_to_uint8,
)
from .pixel_size import checked_pixel_size, ome_length_um, plausible

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif")


@contextlib.contextmanager
def closed_on_failure(handle, unreadable: str):
    """Close ``handle`` if the block fails. A ValueError (already a clear message) passes as it
    is; any other error becomes a ValueError: ``unreadable`` with ``{cause}`` filled in."""
    try:
        yield handle
    except ValueError:
        handle.close()
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile and zarr raise many kinds for a broken file
        handle.close()
        raise ValueError(
            unreadable.replace("{cause}", f"{type(exc).__name__}: {exc}")
        ) from None  # a path may hold braces


def _ifd_chain_end(path: str | os.PathLike, size: int, limit: int = 4096) -> int | None:
    """The first image-directory offset of a TIFF's chain that lies past the file's ``size``
    bytes (the file was cut there), or None when the whole chain is inside the file (or the
    header is not a TIFF's: tifffile then says so itself)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return None
        bo = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(bo + "H", head[2:4])[0]
        if version == 42:
            offset, count_fmt, entry, off_fmt = struct.unpack(bo + "I", head[4:8])[0], "H", 12, "I"
        elif version == 43 and len(head) >= 16:
            offset, count_fmt, entry, off_fmt = struct.unpack(bo + "Q", head[8:16])[0], "Q", 20, "Q"
        else:
            return None
        count_size, off_size = struct.calcsize(count_fmt), struct.calcsize(off_fmt)
        seen = set()
        while offset and offset not in seen and len(seen) < limit:
            seen.add(offset)
            if offset + count_size > size:
                return offset
            fh.seek(offset)
            (n,) = struct.unpack(bo + count_fmt, fh.read(count_size))
            nxt = offset + count_size + n * entry
            if nxt + off_size > size:
                return offset
            fh.seek(nxt)
            (offset,) = struct.unpack(bo + off_fmt, fh.read(off_size))
    return None


def open_tiff(path: str | os.PathLike):
    """``tifffile.TiffFile(path)``, or a ValueError that says what is wrong with the file."""
    import tifffile  # noqa: PLC0415 - tifffile loads only for a TIFF (+23 ms on `cinuseg --help`, which imports io.slides)

    check_image_file(path)
    size = os.path.getsize(path)
    cut = _ifd_chain_end(path, size)
    if cut is not None:
        raise ValueError(
            f"{path} is truncated: an image directory should be at byte {cut:,} but the file has only "
            f"{size:,} bytes; copy or download it again"
        )
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises several kinds for a broken file
        raise ValueError(
            f"{path} is not a readable TIFF/SVS file ({type(exc).__name__}: {exc}); "
            "is the file complete (not truncated by a download or copy) and really a TIFF?"
        ) from None
    # A truncated file often still has its header: its image data would end past the file's end.
    try:
        for page in tif.pages[:64]:
            offsets, counts = np.asarray(page.dataoffsets, np.int64), np.asarray(page.databytecounts, np.int64)
            if offsets.size and int((offsets + counts).max()) > size:
                raise ValueError(
                    f"{path} is truncated: its image data should reach byte {int((offsets + counts).max()):,} "
                    f"but the file has {size:,} bytes; copy or download it again"
                )
    except ValueError:
        tif.close()
        raise
    except Exception:  # noqa: BLE001 - pages that cannot be parsed are reported when read
        pass
    try:
        check_jpeg_tiles(tif, path)  # a JPEG tile cut short would be decoded in silence
    except ValueError:
        tif.close()
        raise
    return tif


def file_pixel_size(tif) -> float | None:
    """µm per pixel of a TIFF's full-resolution image, as the file states it: the MPP of an
    Aperio SVS description, OME-XML's PhysicalSizeX (with its unit), or the TIFF resolution tags
    when their unit is a length. None when the file does not say. A size the file states that is
    not plausible (:mod:`.pixel_size`: an MPP of 1000 or inf) is a ValueError that says to give
    the pixel size; OME sizes of X and Y that differ are said (X's is used)."""
    where = f"{tif.filehandle.name}"
    page = tif.pages[0]
    desc = page.description or ""
    if tif.is_svs or desc.startswith("Aperio"):
        m = re.search(r"MPP\s*=\s*([^|\s]+)", desc)
        if m:
            return checked_pixel_size(m.group(1), f"{where}: the file's MPP")
    if tif.is_ome and tif.ome_metadata:
        sizes = {}
        for axis in "XY":
            m = re.search(rf'PhysicalSize{axis}="([^"]*)"', tif.ome_metadata)
            if m:
                unit = re.search(rf'PhysicalSize{axis}Unit="([^"]*)"', tif.ome_metadata)
                sizes[axis] = ome_length_um(
                    m.group(1), unit.group(1) if unit else None, f"{where}: the file's OME PhysicalSize{axis}"
                )
        if "X" in sizes:
            if "Y" in sizes and not math.isclose(sizes["X"], sizes["Y"], rel_tol=0.01):
                warnings.warn(
                    f"{where}: its pixels are not square (OME PhysicalSizeX {sizes['X']:g} µm, PhysicalSizeY "
                    f"{sizes['Y']:g} µm); X's is used, so sizes along Y are off by {sizes['Y'] / sizes['X']:.2f}×: "
                    "resample the image to square pixels first",
                    ImageWarning,
                    stacklevel=2,
                )
            return sizes["X"]
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num > 0 and den > 0 and unit in (2, 3):  # 2 inch, 3 centimetre; 1 = no unit
            per_unit = num / den  # pixels per unit
            um = (25400.0 if unit == 2 else 10000.0) / per_unit
            # 72 or 300 dpi (a screen's or a printer's, written by most image software) is no
            # microscope's pixel: only sizes a slide scanner or camera could have are believed.
            if plausible(um):
                return um
    return None


class Slide:
    """An RGB image of any size at one pyramid level; ``read(y0, x0, y1, x1)`` gives uint8 RGB.

    Regions reaching past the image are padded with white (255), the colour of empty glass.
    """

    def __init__(self, path: str | os.PathLike, level: int = 0):
        self.path = Path(path)
        check_image_file(self.path)  # missing, a folder, a link loop, empty: said so
        self.level = int(level)
        self._tif = None
        self._array = None
        self._pixel_size: float | None = None  # µm per pixel at this level, where the file says
        self._pixel_size_error: str | None = None  # why the file's pixel size is not believed
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            self._open_tiff()
        else:
            if self.level != 0:
                raise ValueError(
                    f"{self.path} is a plain image with one level (0), so level {self.level} cannot be read; "
                    "levels are of pyramidal slides (SVS, TIFF): leave --level out"
                )
            self._array = read_rgb(self.path)  # clear ValueError, conversions said

    def _open_tiff(self) -> None:
        import zarr  # noqa: PLC0415 - zarr loads only for a TIFF (+150 ms on `cinuseg --help`)

        self._tif = open_tiff(self.path)
        with closed_on_failure(self, f"{self.path} is not a readable TIFF/SVS ({{cause}}); is the file complete?"):
            series = self._tif.series[0]
            self.levels = [tuple(lv.shape) for lv in series.levels]
            if not 0 <= self.level < len(series.levels):
                raise ValueError(f"{self.path} has pyramid levels 0..{len(series.levels) - 1}, not {self.level}")
            lv = series.levels[self.level]
            axes = lv.axes
            channels = lv.shape[-1] if axes in ("YXS", "YXC") else lv.shape[0] if axes in ("SYX", "CYX") else None
            if channels is not None and channels not in (3, 4):
                raise ValueError(
                    f"{self.path} holds {channels} channel(s) ({lv.shape}, {axes}), but an RGB image (3 channels) "
                    "is needed; save it as RGB (e.g. a fluorescence image's channels are no H&E)"
                )
            if self._fits_in_memory(lv):
                # converted whole, as the panel's reader converts it (from the image's own range)
                self._array = as_rgb_uint8(lv.asarray(), self.path)
                self._pixel_size = self._file_pixel_size() if self.level == 0 else None
                self._tif.close()
                self._tif = None
                return
            self._z = zarr.open(series.aszarr(level=self.level), mode="r")
        if axes in ("YXS", "YXC"):
            self._channels_last = True
        elif axes in ("SYX", "CYX"):
            self._channels_last = False
        elif axes == "YX":
            self._channels_last = None
            warnings.warn(
                f"{self.path}: grey image repeated to three channels; H&E models expect colour, results may be poor",
                ImageNotice,
                stacklevel=3,
            )
        else:
            self.close()
            raise ValueError(f"{self.path} holds {axes} data ({lv.shape}); a 2-D RGB image is needed")
        shape = lv.shape
        self.height, self.width = (shape[0], shape[1]) if self._channels_last in (True, None) else (shape[1], shape[2])
        self.dtype = np.dtype(lv.dtype)
        if self.dtype != np.uint8:
            full = (
                f"0..{np.iinfo(self.dtype).max}" if np.issubdtype(self.dtype, np.integer) else "0..1 (or as they are)"
            )
            warnings.warn(
                f"{self.path}: {self.dtype} slide too large to read whole; each tile is scaled from the type's full "
                f"range {full}, not the slide's own: data of fewer bits (e.g. 12 in 16) come out dark, so convert "
                "such a slide to 8-bit RGB first",
                ImageNotice,
                stacklevel=3,
            )
        base = self._file_pixel_size()
        if base is not None:
            full = series.levels[0].shape
            full_w = full[1] if self._channels_last in (True, None) else full[2]
            self._pixel_size = base * full_w / self.width

    def _file_pixel_size(self) -> float | None:
        """:func:`file_pixel_size`, with a size that is not believed kept as the error that
        :attr:`pixel_size` raises (the image still opens: a pixel size given by the user is used
        instead)."""
        try:
            return file_pixel_size(self._tif)
        except ValueError as exc:
            self._pixel_size_error = str(exc)
            return None

    @property
    def pixel_size(self) -> float | None:
        """µm per pixel at this level as the file states it, None where it does not; a size it
        states that is not plausible is a ValueError that says to give one."""
        if self._pixel_size_error is not None:
            raise ValueError(self._pixel_size_error)
        return self._pixel_size

    @staticmethod
    def _fits_in_memory(level) -> bool:
        """A level that is not 8-bit RGB, or has an alpha channel, and is small enough to be
        read whole: converted by :func:`as_rgb_uint8` (its own range, NaN, alpha, said) rather
        than tile by tile from the dtype's range."""
        shape, axes = tuple(level.shape), level.axes
        if len(shape) < 2:
            return False
        pixels = shape[-2] * shape[-1] if axes in ("SYX", "CYX") else shape[0] * shape[1]  # Y × X
        plain = np.dtype(level.dtype) == np.uint8 and not (axes in ("YXS", "YXC") and shape[-1] == 4)
        return not plain and pixels <= IN_MEMORY_LIMIT_PX

    @property
    def shape(self) -> tuple[int, int]:
        if self._array is not None:
            return self._array.shape[:2]
        return (self.height, self.width)

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        h, w = self.shape
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if sy1 <= sy0 or sx1 <= sx0:
            return out
        if self._array is not None:
            region = self._array[sy0:sy1, sx0:sx1]
        else:
            try:
                region = self._read_tiff(sy0, sx0, sy1, sx1)
            except Exception as exc:  # noqa: BLE001 - a damaged tile anywhere in a slide
                raise ValueError(
                    f"{self.path}: the region y {sy0}..{sy1}, x {sx0}..{sx1} cannot be decoded "
                    f"({type(exc).__name__}: {exc}); the file is damaged or incomplete, copy it again"
                ) from None
        if region.dtype != np.uint8 or region.shape[2] == 4:
            region = region_to_uint8(region)
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = region
        return out

    def _read_tiff(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        if self._channels_last is None:
            return np.asarray(self._z[y0:y1, x0:x1])[..., None].repeat(3, axis=2)
        if self._channels_last:
            region = np.asarray(self._z[y0:y1, x0:x1])
            return region if region.shape[2] == 4 else region[..., :3]  # alpha: composited by read
        return np.moveaxis(np.asarray(self._z[:3, y0:y1, x0:x1]), 0, -1)

    def read_all(self) -> np.ndarray:
        h, w = self.shape
        return self.read(0, 0, h, w)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArraySlide:
    """An array-like RGB image (numpy, zarr, dask: (H, W, 3 or 4) uint8) behind the
    :class:`Slide` interface; only the regions asked for are read."""

    def __init__(self, array):
        shape, dtype = tuple(array.shape), np.dtype(array.dtype)
        if len(shape) != 3 or shape[2] not in (3, 4) or dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {dtype} {shape}")
        self.array = array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape[:2])

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        h, w = self.shape
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if sy1 > sy0 and sx1 > sx0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = np.asarray(self.array[sy0:sy1, sx0:sx1])[..., :3]
        return out

    def close(self) -> None:
        pass
