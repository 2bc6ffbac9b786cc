"""What an input image may be, and how it becomes the RGB uint8 (H, W, 3) the engine needs.

Every conversion is *said*: it is made, and an :class:`ImageNotice` warning names it, so that the
CLI prints it and napari shows it as a notification. What cannot be an H&E image is refused with
a ValueError that says what to do.

- RGBA: an alpha channel that is the same everywhere is dropped (silently: routine, e.g. every
  MoNuSAC TIFF); one that varies is composited onto white, the colour of empty glass, and said
  (so that transparent pixels, whatever colour they hide, are never segmented as dark tissue).
- CMYK (a JPEG from print software): converted to RGB, and said.
- Grey (H, W): repeated to three channels (H&E is colour; a grey image segments poorly).
- Channels first (3, H, W): moved last (four planes are taken for a stack, not RGBA).
- 16-bit and other integers: rescaled from the image's own range (min..max) to 0..255, unless
  that range is too narrow to hold tissue (:data:`NARROWEST_RANGE` of the bit depth the values
  fit): then scaled from the bit depth's range and warned (:class:`ImageWarning`), never stretched;
  floats in 0..1 are multiplied by 255, other floats rescaled from their own range.
- NaN: replaced by the highest finite value (white, as empty glass: no data is no tissue); ±inf
  by the highest / lowest finite value.
- A stack or volume (more than two spatial axes): refused; save one 2-D plane.
- An empty image (a side of 0 pixels): refused.

This one function converts for the command line (:class:`~napari_cinuseg.io.slides.Slide`) and
for napari's reader alike: a TIFF that is not 8-bit RGB is read whole and converted here when it
fits in memory (:data:`IN_MEMORY_LIMIT_PX`). Only a larger slide is converted tile by tile, with
:func:`region_to_uint8`, from the dtype's range rather than the slide's own (which would need the
whole slide), so that every tile is scaled the same way.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: The one limit for holding a whole class map in memory (64 MB as uint8): above it the
#: segmentation builds the map on disk, the statistics go blockwise, and the napari reader opens
#: a masks file lazily (read-only) instead of whole (editable).
IN_MEMORY_LIMIT_PX = 64_000_000

__all__ = [
    "DamagedImage",
    "ImageNotice",
    "ImageWarning",
    "as_rgb_uint8",
    "check_image_file",
    "on_white",
    "read_rgb",
    "region_to_uint8",
    "rgb_view",
]


class ImageNotice(UserWarning):
    """A conversion made to an input image (shown to the user, never silent)."""


class DamagedImage(ValueError):
    """An image file whose data is damaged or incomplete; the message says to copy it again."""


class ImageWarning(ImageNotice):
    """What in an input image may make its result wrong (a range too narrow to hold tissue,
    pixels that are not square): said even where notes are not (``cinuseg --quiet``)."""


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
    alpha = None
    if img.shape[2] == 4:
        alpha = img[..., 3]
        img = img[..., :3]
        if alpha.min() == alpha.max():
            alpha = None  # routine (MoNuSAC's TIFFs are RGBA, alpha 255): not worth a notice
    rgb = _values_to_uint8(img, path)
    if alpha is not None:
        opacity = _alpha_fraction(alpha)
        rgb = on_white(rgb, opacity)
        _say(path, f"{int((opacity < 1).sum())} transparent or partly transparent pixel(s) composited onto white")
    return rgb


def _alpha_fraction(alpha: np.ndarray) -> np.ndarray:
    """An alpha channel as opacity in 0..1 (integers: of the dtype's maximum; floats: as they are)."""
    if np.issubdtype(alpha.dtype, np.integer):
        return alpha.astype(np.float32) / np.iinfo(alpha.dtype).max
    return np.nan_to_num(alpha.astype(np.float32), nan=0.0).clip(0, 1)


def on_white(rgb: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """RGB uint8 composited onto white (empty glass) by ``opacity`` (H, W) in 0..1."""
    a = opacity[..., None]
    return np.ascontiguousarray((rgb * a + 255.0 * (1 - a)).round().clip(0, 255).astype(np.uint8))


#: The narrowest share of its scale (:func:`_bit_depth_top`) an integer image's values may span to
#: be stretched to 0..255: an eighth, 32 of 256 levels, the least that can tell nuclei, stroma and
#: glass apart. A narrower image (glass at 64000..64039 of 65535) is scaled from its scale instead:
#: stretched, its noise would be segmented as nuclei.
NARROWEST_RANGE = 1 / 8


def _bit_depth_top(dtype: np.dtype, hi: float) -> float | None:
    """The top of the scale an unsigned-valued integer image was recorded on: 2^b - 1 for the
    fewest bits b of 8, 10, 12, 14, 16 (then the dtype's) that hold ``hi`` (12-bit data in a
    16-bit file is on 0..4095). None for floats."""
    if not np.issubdtype(dtype, np.integer):
        return None
    for bits in (8, 10, 12, 14, 16, np.iinfo(dtype).bits):
        if hi <= 2**bits - 1:
            return float(2**bits - 1)
    return float(np.iinfo(dtype).max)


def _values_to_uint8(img: np.ndarray, path) -> np.ndarray:
    """(H, W, 3) of any numeric dtype → uint8: from the image's own range, NaN/inf replaced, said."""
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
        values = np.nan_to_num(values, nan=hi, posinf=hi, neginf=lo)
        _say(
            path,
            f"{int((~finite).sum())} NaN/infinite value(s) replaced: NaN by the highest finite value (white: "
            "no data is taken for empty glass, not for dark tissue), +inf/-inf by the highest/lowest",
        )
    lo, hi = float(values.min()), float(values.max())
    top = _bit_depth_top(img.dtype, hi) if lo >= 0 else None
    if np.issubdtype(img.dtype, np.floating) and lo >= 0 and hi <= 1:
        out = values * 255
        _say(path, f"{img.dtype} values in 0..1 scaled to 0..255")
    elif top is not None and hi - lo < top * NARROWEST_RANGE:
        out = values / top * 255
        warnings.warn(
            f"{path}: its {img.dtype} values span only {lo:g}..{hi:g} of 0..{top:g}, too narrow a range to hold "
            f"tissue (blank glass, or an empty channel?): scaled from 0..{top:g}, not stretched (stretching it "
            "would turn noise into nuclei); check that this is the image you meant",
            ImageWarning,
            stacklevel=3,
        )
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
    floats: 0..1 if they fit there, else as they are), NaN → white; a fourth (alpha) channel is
    composited onto white."""
    if region.ndim == 3 and region.shape[2] == 4:
        opacity = _alpha_fraction(region[..., 3])
        return on_white(region_to_uint8(region[..., :3]), opacity)
    if region.dtype == np.uint8:
        return region
    if np.issubdtype(region.dtype, np.integer):
        info = np.iinfo(region.dtype)
        return (region.astype(np.float64) / info.max * 255).round().clip(0, 255).astype(np.uint8)
    region = region.astype(np.float64)
    finite = np.isfinite(region)
    top = float(region[finite].max()) if finite.any() else 1.0
    scale = 255.0 if top <= 1.0 else 1.0
    region = np.nan_to_num(region, nan=255.0 / scale, posinf=255.0 / scale, neginf=0.0)  # NaN: white glass
    return (region * scale).round().clip(0, 255).astype(np.uint8)


PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The most pixels a PNG/JPEG may have: it is decoded whole (3 bytes a pixel, 540 MB here), and
#: Pillow's own guard against decompression bombs (a tiny file that decodes to gigabytes) ends
#: there. A larger image belongs in a tiled TIFF, which is read tile by tile.
PLAIN_IMAGE_LIMIT_PX = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970
EXIF_ORIENTATION = 0x0112


class _TooLarge(Exception):
    def __init__(self, width: int, height: int):
        super().__init__(f"{width}×{height}")
        self.width, self.height = width, height


#: TIFF compressions whose every tile (or strip) is a whole JPEG stream, ending in the
#: end-of-image marker: 7 (JPEG, as in SVS), 34892 (lossy JPEG of DNG)
JPEG_COMPRESSIONS = (7, 34892)
END_OF_IMAGE = b"\xff\xd9"


def check_jpeg_tiles(tif, path: str | os.PathLike, pages: int = 64) -> None:
    """Refuse (ValueError) a TIFF whose JPEG tiles or strips do not end in JPEG's end-of-image
    marker: one cut short (its byte count shortened, or the file damaged) would be decoded in
    silence, its missing part made up by the decoder. The marker cannot occur inside the
    compressed data, so a complete tile always ends in it."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        for page in tif.pages[:pages]:
            if int(getattr(page, "compression", 1)) not in JPEG_COMPRESSIONS:
                continue
            ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
            for k, (end, count) in enumerate(zip(ends.tolist(), page.databytecounts)):
                if not count or end > size:
                    continue  # an empty tile is blank; data past the end is the truncation check's
                fh.seek(end - 2)
                if fh.read(2) != END_OF_IMAGE:
                    raise DamagedImage(
                        f"{path} is damaged or incomplete: JPEG tile {k} of image {page.index} does not end where "
                        "a JPEG ends (the file was cut or changed); copy or download it again"
                    )


def check_image_file(path: str | os.PathLike) -> None:
    """Raise a clear error unless ``path`` is a file that can be opened: a missing file is a
    FileNotFoundError, a folder, a symbolic-link loop or an empty file a ValueError."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise FileNotFoundError(
                f"{p} is a symbolic link to {os.readlink(p)}, which does not exist; choose the image itself"
            ) from None
        raise FileNotFoundError(f"no image at {p}; check the name and the folder") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(
                f"{p} is a symbolic link that points back to itself (a loop); choose the image file itself"
            ) from None
        raise ValueError(f"{p} cannot be opened ({exc.strerror}); choose another image") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{p} is a folder, not an image; choose an image file inside it (PNG, JPEG, TIFF or SVS)")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p} is not a regular file; choose an image file")
    if st.st_size == 0:
        raise ValueError(f"{p} is empty (0 bytes); copy or download it again")


def _read_plain(path: str) -> np.ndarray:
    """A PNG/JPEG through Pillow, in its own colour space made RGB: turned upright as its EXIF
    orientation says (said), CMYK converted (and said), palettes expanded, grey with alpha made
    RGBA; grey and 16-bit values returned as they are for :func:`as_rgb_uint8`. One of more than
    :data:`PLAIN_IMAGE_LIMIT_PX` pixels is refused before it is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is said below
            im = Image.open(path)
        with im:
            if im.width * im.height > PLAIN_IMAGE_LIMIT_PX:
                raise _TooLarge(im.width, im.height)
            im.load()
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            if orientation not in (None, 1):
                im = ImageOps.exif_transpose(im)
                _say(path, f"turned upright as its EXIF orientation ({orientation}) says, as photo viewers show it")
            mode = im.mode
            if mode == "CMYK":
                im = im.convert("RGB")
                _say(path, "CMYK image converted to RGB")
            elif mode == "P" or mode == "PA":
                im = im.convert("RGBA")
            elif mode in ("LA", "La"):
                im = im.convert("RGBA")
                _say(path, "grey image repeated to three channels; H&E models expect colour, results may be poor")
            elif mode == "1":
                im = im.convert("L")
            elif mode in ("YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (_TooLarge, Image.DecompressionBombError) as exc:
        said = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's words: "Image size (N pixels) exceeds …"
        size = (
            f"{exc.width:,} × {exc.height:,} px"
            if isinstance(exc, _TooLarge)
            else f"{int(said.group(1)):,} px"
            if said
            else "too many pixels"
        )
        raise ValueError(
            f"{path} is too large for a PNG/JPEG ({size}): such an image is decoded whole into memory, "
            f"and one of more than {PLAIN_IMAGE_LIMIT_PX:,} pixels is refused; save it as a tiled (pyramidal) "
            "TIFF, which is read tile by tile"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        with open(path, "rb") as fh:
            head = fh.read(8)
        kind = "PNG" if head.startswith(b"\x89PNG") else "JPEG" if head.startswith(b"\xff\xd8") else None
        if kind is None:
            raise ValueError(
                f"{path} could not be read as an image: its contents are not a PNG or a JPEG, whatever "
                "its name says (a renamed file?); choose the image itself, or convert it to PNG/JPEG/TIFF"
            ) from None
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{path} could not be read as a {kind} image ({cause}); it starts as a {kind} but is damaged "
            "or incomplete (truncated by a download or copy?); copy or download it again"
        ) from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 image (H, W, 3), converted as :func:`as_rgb_uint8`
    says (and warns); a file that is not a readable image is a ValueError."""
    check_image_file(path)
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in PLAIN_IMAGE_SUFFIXES:
        return as_rgb_uint8(_read_plain(os.fspath(path)), path)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile  # noqa: PLC0415 - tifffile loads only for a TIFF (+23 ms on `cinuseg --help`, which imports io.slides)

            with tifffile.TiffFile(str(path)) as tif:
                check_jpeg_tiles(tif, path)
                img = np.asarray(tif.asarray())
        else:
            from skimage import io as skio  # noqa: PLC0415 - scikit-image loads only for another format (+300 ms on `cinuseg --help`, which imports io.slides)

            img = np.asarray(skio.imread(str(path)))
    except DamagedImage:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes advice
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"{path} could not be read as an image ({type(exc).__name__}: {first}); is it complete "
            "(not truncated by a download or copy) and really a PNG/JPEG/TIFF?"
        ) from None
    if img.dtype == object:  # imageio's answer for some unreadable files
        raise ValueError(f"{path} could not be read as an image; is it really a PNG/JPEG/TIFF?")
    return as_rgb_uint8(img, path)
