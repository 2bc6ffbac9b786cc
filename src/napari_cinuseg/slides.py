"""Images and whole slides, read lazily: SVS, pyramidal TIFF and OME-TIFF through tifffile's
zarr view (only the tiles asked for are decoded), plain PNG/JPEG in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data import read_rgb

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif")


def open_tiff(path: str | os.PathLike):
    """``tifffile.TiffFile(path)``, or a ValueError that says what is wrong with the file."""
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises several kinds for a broken file
        raise ValueError(
            f"{path} is not a readable TIFF/SVS file ({type(exc).__name__}: {exc}); "
            "is the file complete (not truncated by a download or copy) and really a TIFF?"
        ) from None


class Slide:
    """An RGB image of any size at one pyramid level; ``read(y0, x0, y1, x1)`` gives uint8 RGB.

    Regions reaching past the image are padded with white (255), the colour of empty glass.
    """

    def __init__(self, path: str | os.PathLike, level: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no image at {self.path}")
        self.level = int(level)
        self._tif = None
        self._array = None
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            self._open_tiff()
        else:
            try:
                self._array = read_rgb(self.path)
            except Exception as exc:  # noqa: BLE001 - any decoder failure becomes advice
                raise ValueError(f"{self.path} could not be read as an image ({type(exc).__name__}: {exc})") from None

    def _open_tiff(self) -> None:
        import zarr

        self._tif = open_tiff(self.path)
        try:
            series = self._tif.series[0]
            self.levels = [tuple(lv.shape) for lv in series.levels]
            if not 0 <= self.level < len(series.levels):
                raise ValueError(f"{self.path} has pyramid levels 0..{len(series.levels) - 1}, not {self.level}")
            lv = series.levels[self.level]
            axes = lv.axes
            self._z = zarr.open(series.aszarr(level=self.level), mode="r")
        except ValueError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise ValueError(
                f"{self.path} is not a readable TIFF/SVS ({type(exc).__name__}: {exc}); is the file complete?"
            ) from None
        if axes in ("YXS", "YXC"):
            self._channels_last = True
        elif axes in ("SYX", "CYX"):
            self._channels_last = False
        elif axes == "YX":
            self._channels_last = None
        else:
            self.close()
            raise ValueError(f"{self.path} holds {axes} data ({lv.shape}); a 2-D RGB image is needed")
        shape = lv.shape
        self.height, self.width = (shape[0], shape[1]) if self._channels_last in (True, None) else (shape[1], shape[2])
        self.dtype = np.dtype(lv.dtype)

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
        elif self._channels_last is None:
            region = np.asarray(self._z[sy0:sy1, sx0:sx1])[..., None].repeat(3, axis=2)
        elif self._channels_last:
            region = np.asarray(self._z[sy0:sy1, sx0:sx1])[..., :3]
        else:
            region = np.moveaxis(np.asarray(self._z[:3, sy0:sy1, sx0:sx1]), 0, -1)
        if region.dtype != np.uint8:
            region = _to_uint8(region)
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = region
        return out

    def read_all(self) -> np.ndarray:
        h, w = self.shape
        return self.read(0, 0, h, w)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_uint8(region: np.ndarray) -> np.ndarray:
    if np.issubdtype(region.dtype, np.integer):
        info = np.iinfo(region.dtype)
        return (region.astype(np.float64) / info.max * 255).round().clip(0, 255).astype(np.uint8)
    region = np.nan_to_num(region.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    scale = 255.0 if region.max() <= 1.0 else 1.0
    return (region * scale).round().clip(0, 255).astype(np.uint8)
