"""Segment an image or a whole slide: overlapping tiles, blended logits, bounded memory.

A generator like every long job: it yields :class:`SegmentStarted`, :class:`TileProgress` and
:class:`SegmentFinished` (or :class:`~napari_cinuseg.runtime.events.Cancelled`) and returns the class
map (uint8, 0 = background, i = the model's class i), in memory or in a zarr array on disk.

Memory: the slide is read tile by tile, in vertical strips of at most ``strip`` output pixels
wide, and within a strip row of tiles by row of tiles; logits are accumulated in one band of
tile rows across the strip (K × tile × (strip + up to 2 tiles) floats), finished rows are written
out and dropped. Memory is bounded by the strip width and the tile size, not by the slide's
size. A strip also segments the tiles left of it that reach into its columns, so every pixel
gets the blended logits of every tile covering it, exactly as without strips; these seam tiles
are recomputed (about one column of tiles per seam, none for a slide narrower than a strip).
Tiles are read by a background thread while the model works on the previous batch; tiles with
no tissue are skipped (their pixels stay background unless a neighbouring tile covers them).

A model with a separation head (model/network.py) can also write its learned distance map
(``separation_out``): blended like the logits, as one more channel of the band, and written as
uint8 (0..255 for 0..1) row by row beside the class map, for inference/instances.py.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.pixel_size import resampling_factor
from ..io.slides import ArraySlide, Slide
from ..model.segmenter import CiNuSegModel
from ..runtime import devices
from ..runtime.events import (
    CancelFlag,
    Cancelled,
    MemoryReduced,
    SegmentFinished,
    SegmentStarted,
    TileProgress,
    is_cancelled,
)
from .tiling import DEFAULT_TILE, blend_window, tile_origins, tissue_fraction


def _prefetch(slide: Slide, boxes: list[tuple[int, int]], tile: int, workers: int = 2) -> Iterator[np.ndarray]:
    """Tiles in order, read ahead by a small thread pool (reading and decoding release the GIL)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = 2 * workers + 2
        futures = [pool.submit(slide.read, y, x, y + tile, x + tile) for y, x in boxes[:ahead]]
        nxt = len(futures)
        for i in range(len(boxes)):
            img = futures[i].result()
            futures[i] = None  # drop the reference: memory stays bounded
            if nxt < len(boxes):
                y, x = boxes[nxt]
                futures.append(pool.submit(slide.read, y, x, y + tile, x + tile))
                nxt += 1
            yield img


def _strips(w: int, xs: list[int], tile: int, strip: int) -> list[tuple[int, int, list[int]]]:
    """Vertical strips of the tile columns ``xs`` of an image ``w`` wide: (x0, x1, origins) with
    [x0, x1) the strip's output columns (at most ``strip`` wide, ``strip`` >= ``tile``) and
    ``origins`` every tile column that covers any of them, in order. A strip owns the tile columns
    from its first to its last, its output running from the first's origin to the next strip's
    first origin (to ``w`` for the last strip): columns that no later tile reaches. Tile columns
    left of the strip that reach into it are recomputed there; none right of it can. One strip,
    with all of ``xs``, when the image is at most ``strip`` wide."""
    strips, a = [], 0
    while a < len(xs):
        b = a + 1  # a single tile column is at most ``tile`` <= ``strip`` wide
        while b < len(xs) and (xs[b + 1] if b + 1 < len(xs) else w) - xs[a] <= strip:
            b += 1
        x0, x1 = xs[a], (xs[b] if b < len(xs) else w)
        first = a
        while first > 0 and xs[first - 1] + tile > x0:
            first -= 1
        strips.append((x0, x1, xs[first:b]))
        a = b
    return strips


def segment(
    model: CiNuSegModel,
    image,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = 64,
    batch_size: int = 4,
    device: str = "auto",
    amp: bool = True,
    min_tissue: float = 0.01,
    strip: int = 8192,
    compile: bool = False,
    image_pixel_size: float | None = None,
    out: str | os.PathLike | None = None,
    separation_out=None,
    cancel: CancelFlag = None,
) -> Generator[object, None, np.ndarray | Path | None]:
    """Class map of ``image``: a file path, a :class:`Slide`, or an array-like (H, W, 3) uint8
    (numpy, or a lazy zarr/dask level of a napari layer).

    ``out``: a ``.zarr`` folder to write the class map to (for slides too big for memory); it is
    written under a temporary name and renamed at the end, so a cancelled or failed run leaves
    nothing. ``min_tissue`` = 0 segments every tile.

    ``compile``: run the network through ``torch.compile`` (TorchInductor). The first batches
    wait for the compilation (tens of seconds; again for the last, smaller batch), so it pays
    off on large slides; see docs/performance.md for what it gave where it was measured.

    ``strip``: the widest run of output columns segmented at a time (pixels, at least ``tile``).
    ``image_pixel_size``: µm per pixel of ``image`` (default: what a slide file says). Where it
    and the model's pixel size are both known and differ by more than 5 %, each tile is resampled
    to the model's pixel size before the network and its logits back to the image's, so the class
    map always has the image's size; ``tile`` and ``overlap`` are then in the model's pixels.

    ``separation_out``: an array (H, W) uint8 (numpy, or a zarr array for a slide too big for
    memory) that receives the model's learned distance map, 0..255 for 0..1; only for a model with
    a separation head (``model.network.has_separation``). It is filled as the class map is.

    The logits buffer is K × tile × (``strip`` + up to 2 tiles) floats whatever the slide's width
    or height. The result does not depend on it: a strip also segments the tiles left of it that
    reach into its columns, so each seam between strips costs one or two columns of tiles
    segmented twice (counted in ``SegmentStarted.tiles`` and ``TileProgress.total``). An image
    at most ``strip`` wide is one strip, with no extra tiles.
    """
    strip = _checked(tile, strip)
    if separation_out is not None and not model.network.has_separation:
        raise ValueError(
            "this model has no separation head, so it has no distance map to write; leave separation_out "
            "out (its nuclei are split by the watershed on the class map)"
        )
    own = isinstance(image, (str, os.PathLike))
    slide = _as_slide(image)
    scale = resampling_factor(model.pixel_size, image_pixel_size or getattr(slide, "pixel_size", None))
    net_tile = tile
    if scale != 1.0:  # tiles of the image that cover ``tile`` model pixels
        tile, overlap = max(32, int(round(tile / scale))), int(round(overlap / scale))
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.exists():
        raise FileExistsError(f"{out_path} exists; choose another output or delete it")
    tmp_path = out_path.with_name(f".{out_path.name}.partial") if out_path is not None else None
    dev = devices.resolve_device(device)
    dtype = devices.amp_dtype(dev, amp)
    net = model.network
    was_training = net.training
    net.eval().to(dev)
    if dev.type == "cuda":
        net.to(memory_format=torch.channels_last)
    forward = torch.compile(net, dynamic=False) if compile else net
    t0 = time.perf_counter()
    try:
        h, w = slide.shape
        if separation_out is not None and tuple(separation_out.shape) != (h, w):
            raise ValueError(f"separation_out is {tuple(separation_out.shape)} but the image is {(h, w)}")
        ys, xs = tile_origins(h, tile, overlap), tile_origins(w, tile, overlap)
        strips = _strips(w, xs, tile, strip)
        total = len(ys) * sum(len(sx) for _, _, sx in strips)
        yield SegmentStarted(h, w, total, devices.describe(dev))
        result = _new_class_map(tmp_path, h, w)
        window = torch.from_numpy(blend_window(tile, overlap))
        boxes = [(y, x) for _, _, sx in strips for y in ys for x in sx]
        tiles = _prefetch(slide, boxes, tile)
        tally = _TilePass(total, batch_size, time.perf_counter())
        for band in strips:
            finished = yield from _segment_strip(
                model,
                forward,
                tally,
                tiles,
                result,
                ys,
                band,
                (h, w),
                tile,
                window,
                min_tissue,
                dev,
                dtype,
                net_tile if scale != 1.0 else None,
                separation_out,
                cancel,
            )
            if not finished:
                return None
        yield tally.progress()
        if tmp_path is not None:
            os.replace(tmp_path, out_path)
            result = out_path
        seconds = time.perf_counter() - t0
        yield SegmentFinished(result, seconds, total, tally.skipped)
        return result
    except OSError as exc:
        if tmp_path is None or exc.filename is not None:
            raise
        # zarr's writes fail without a file name ("[Errno 28] No space left on device"): name it
        raise OSError(exc.errno, exc.strerror or str(exc), str(out_path)) from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)
        net.train(was_training).cpu()
        if dev.type == "cuda":
            net.to(memory_format=torch.contiguous_format)
        devices.release(dev)
        if own:
            slide.close()


@dataclass
class _TilePass:
    """One pass over a slide's tiles: its counts, and the batch of tiles (fewer after the device
    ran out of memory)."""

    total: int
    batch_size: int
    t0: float
    done: int = 0
    skipped: int = 0

    def progress(self) -> TileProgress:
        return TileProgress(self.done, self.total, self.skipped, time.perf_counter() - self.t0)


def _segment_strip(
    model,
    forward,
    tally: _TilePass,
    tiles,
    result,
    ys,
    band,
    shape,
    tile,
    window,
    min_tissue,
    dev,
    dtype,
    net_tile,
    separation_out,
    cancel,
):
    """One strip of output columns (``band`` = (x0, x1, its tile columns)), row of tiles by row:
    tiles with too little tissue skipped, the rest through the network in batches and blended
    into the strip's logits, each row's final part written to ``result``. Returns False when
    cancelled."""
    h, w = shape
    x0, x1, sx = band
    left = sx[0]  # band column 0 is image column ``left``
    band_w = sx[-1] + tile - left  # max(w, tile) for a single strip, as without strips
    with_sep = separation_out is not None
    acc = torch.zeros((model.num_channels + int(with_sep), tile, band_w), dtype=torch.float32)
    wsum = torch.zeros((tile, band_w), dtype=torch.float32)
    for r, y in enumerate(ys):
        row_imgs, row_x = [], []
        for x in sx:
            img = next(tiles)
            # tissue is measured inside the image only, not on the white padding past its edge
            if min_tissue > 0 and tissue_fraction(img[: h - y, : w - x]) < min_tissue:
                tally.skipped += 1
                tally.done += 1
                continue
            row_imgs.append(img)
            row_x.append(x - left)
        b = 0
        while b < len(row_imgs):
            if is_cancelled(cancel):
                yield Cancelled(
                    step=-1, iteration=tally.done, message="segmentation was cancelled; nothing was written"
                )
                return False
            chunk = row_imgs[b : b + tally.batch_size]
            logits, parts = _forward_tiles(model, forward, chunk, dev, dtype, net_tile, with_sep)
            if parts > 1:  # out of memory: fewer tiles at a time from now on
                before, tally.batch_size = tally.batch_size, max(1, -(-len(chunk) // parts))
                yield _fewer_tiles(dev, tile, before, tally.batch_size)
            _accumulate(acc, wsum, logits, window, row_x[b : b + len(chunk)], tile)
            tally.done += len(chunk)
            b += len(chunk)
            yield tally.progress()
        # rows [y, next_y) of this strip are final: no later tile reaches them
        next_y = ys[r + 1] if r + 1 < len(ys) else min(y + tile, h)
        acc, wsum = _write_final_rows(result, acc, wsum, y, next_y, h, x0, x1, left, tile, separation_out)
    return True


def _checked(tile: int, strip) -> int:
    """``strip`` as an int, after checking ``tile`` and ``strip`` (see :func:`segment`)."""
    if tile % 32 or tile < 64:
        raise ValueError(f"tile must be a multiple of 32 and at least 64, got {tile}")
    if isinstance(strip, bool) or not isinstance(strip, (int, np.integer)) or strip <= 0:
        raise ValueError(f"strip must be a positive whole number of pixels, got {strip!r}")
    if strip < tile:
        raise ValueError(f"strip must be at least one tile wide ({tile} px), got {strip}")
    return int(strip)


def _as_slide(image):
    """A file path opened as a :class:`Slide` (the caller closes it), a Slide as it is, or an
    array-like behind the Slide interface."""
    if isinstance(image, (str, os.PathLike)):
        return Slide(image)
    return image if isinstance(image, (Slide, ArraySlide)) else ArraySlide(image)


def _new_class_map(tmp_path: Path | None, h: int, w: int):
    """The class map being written: a zarr array at ``tmp_path``, or in memory."""
    if tmp_path is None:
        return np.zeros((h, w), np.uint8)
    import zarr  # noqa: PLC0415 - zarr (+150 ms) loads only for a map written to disk: the napari writer and the panel work in memory

    if tmp_path.exists():
        shutil.rmtree(tmp_path)
    return zarr.open_array(str(tmp_path), mode="w", shape=(h, w), chunks=(min(h, 1024), min(w, 1024)), dtype="uint8")


def _fewer_tiles(dev, tile: int, before: int, after: int) -> MemoryReduced:
    return MemoryReduced(
        "tiles",
        before,
        after,
        f"the {devices.describe(dev)} ran out of memory with {before} tiles of {tile} px at a time; "
        f"going on with {after}",
    )


def _accumulate(
    acc: torch.Tensor, wsum: torch.Tensor, logits: torch.Tensor, window: torch.Tensor, xs: list[int], tile: int
) -> None:
    """Add each tile's logits, weighted by the blending window, into the strip's band at its column."""
    for i, bx in enumerate(xs):
        acc[:, :, bx : bx + tile] += logits[i] * window
        wsum[:, bx : bx + tile] += window


def _write_final_rows(
    result, acc, wsum, y: int, next_y: int, h: int, x0: int, x1: int, left: int, tile: int, separation_out=None
):
    """Write rows [y, next_y) of the strip's columns [x0, x1) to the class map (their argmax; 0
    where no tile reached), and with ``separation_out`` the blended distance (the band's last
    channel) to it, then move the band up by as many rows; returns the band."""
    rows = min(next_y, h) - y
    k = acc.shape[0] - int(separation_out is not None)
    weight = wsum[:rows, x0 - left : x1 - left]
    labels = acc[:k, :rows, x0 - left : x1 - left].argmax(0).to(torch.uint8)
    labels[weight == 0] = 0
    result[y : y + rows, x0:x1] = labels.numpy()
    if separation_out is not None:
        dist = acc[k, :rows, x0 - left : x1 - left] / weight.clamp_min(1e-6)
        separation_out[y : y + rows, x0:x1] = (dist.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    shift = next_y - y
    acc = torch.roll(acc, -shift, dims=1)
    wsum = torch.roll(wsum, -shift, dims=0)
    acc[:, tile - shift :] = 0
    wsum[tile - shift :] = 0
    return acc, wsum


def _forward_tiles(
    model: CiNuSegModel,
    net,
    tiles: list[np.ndarray],
    dev: torch.device,
    dtype,
    net_size: int | None = None,
    separation: bool = False,
) -> tuple[torch.Tensor, int]:
    """Logits (N, K, t, t) on the CPU of ``tiles`` (with ``separation``, the learned distance,
    sigmoid of the separation head, as channel K + 1), and into how many parts the batch had to be
    cut to fit in the device's memory (1: it fitted). Out of memory even for one tile is a
    MemoryError that says what to do. ``net_size``: the tiles are resized to it for the network
    (the model's pixel size) and the logits back to the tiles' size."""
    parts = 1
    while True:
        size = -(-len(tiles) // parts)
        try:
            out = []
            for i in range(0, len(tiles), size):
                batch = torch.from_numpy(np.stack(tiles[i : i + size])).permute(0, 3, 1, 2).to(dev, non_blocking=True)
                if dev.type == "cuda":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), devices.autocast(dev, dtype):
                    x = model.normalize(batch)
                    if net_size is not None:
                        x = F.interpolate(
                            x, size=(net_size, net_size), mode="bicubic", align_corners=False, antialias=True
                        )
                    y = net(x)
                    logits = y.logits.float()
                    if separation:
                        logits = torch.cat([logits, torch.sigmoid(y.separation.float())], dim=1)
                    if net_size is not None:
                        logits = F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=False)
                    out.append(logits.cpu())
            return torch.cat(out), parts
        except Exception as exc:  # noqa: BLE001 - only an allocation failure is retried
            if not devices.is_out_of_memory(exc):
                raise
        out = batch = None  # released once the exception (and its frames' tensors) is gone
        devices.release(dev)
        if size == 1:
            raise MemoryError(
                f"the {devices.describe(dev)} ran out of memory for a single tile of "
                f"{tiles[0].shape[0]} px; choose a smaller tile size, or the CPU"
            )
        parts *= 2
