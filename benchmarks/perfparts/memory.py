"""3. memory: peak RSS segmenting synthetic slides of growing size, each in a fresh process."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from .common import FLAT_FACTOR, TARGET_PEAK_MB, Context, _band_class, _status, peak_rss_mb, rss_mb, run_child

# --------------------------------------------------------------------------------------------
# 3. memory: synthetic pyramidal JPEG TIFFs, each size segmented in a fresh process


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def write_synthetic_slide(path: Path, size: int, patches: list[np.ndarray], tile: int = 256, seed: int = 0) -> dict:
    """A size×size pyramidal, tiled, JPEG-compressed RGB TIFF: a mosaic of real H&E patches
    (each ``tile`` px), written tile by tile (the slide is never in memory). Level L halves
    level L-1 (each patch box-averaged), down to the last level of at least one tile; levels
    are SubIFDs of level 0, as tifffile writes pyramids."""
    import tifffile

    p0 = np.stack([p[:tile, :tile] for p in patches if p.shape[0] >= tile and p.shape[1] >= tile])
    if not len(p0):
        raise ValueError(f"no patch of at least {tile}×{tile} px to build a slide from")
    n0 = _ceil_div(size, tile)  # level-0 tiles per side
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(p0), size=(n0, n0))  # the patch of each level-0 tile
    levels = [0]
    while (size >> (levels[-1] + 1)) >= tile and (tile >> (levels[-1] + 1)) >= 1:
        levels.append(levels[-1] + 1)
    scaled = {}
    for lv in levels:
        f = 2**lv
        s = tile // f
        scaled[lv] = p0[:, : s * f, : s * f].reshape(len(p0), s, f, s, f, 3).mean(axis=(2, 4)).astype(np.uint8)

    def tiles(lv: int):
        f, s = 2**lv, tile // 2**lv
        n = _ceil_div(_ceil_div(size, f), tile)
        for ty in range(n):
            for tx in range(n):
                idx = which[ty * f : (ty + 1) * f, tx * f : (tx + 1) * f]
                a, b = idx.shape
                block = scaled[lv][idx].transpose(0, 2, 1, 3, 4).reshape(a * s, b * s, 3)
                out = np.full((tile, tile, 3), 255, np.uint8)
                out[: block.shape[0], : block.shape[1]] = block
                yield out

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    t0 = time.perf_counter()
    opts = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "compression": "jpeg",
        "compressionargs": {"level": 90},
        "photometric": "rgb",
    }
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(tiles(0), shape=(size, size, 3), subifds=len(levels) - 1, **opts)
        for lv in levels[1:]:
            side = _ceil_div(size, 2**lv)
            tif.write(tiles(lv), shape=(side, side, 3), subfiletype=1, **opts)
    os.replace(tmp, path)
    return {"seconds_to_write": round(time.perf_counter() - t0, 2), "levels": len(levels), "bytes": path.stat().st_size}


def ensure_slide(ctx: Context, size: int) -> tuple[Path, dict]:
    from napari_cinuseg.io.slides import Slide

    path = ctx.args.slides_dir / f"synthetic-consep-{size}.tif"
    if path.exists():
        try:
            with Slide(path) as s:
                if tuple(s.shape) == (size, size):
                    return path, {"reused": True, "levels": len(s.levels), "bytes": path.stat().st_size}
        except Exception:  # noqa: BLE001, S110 - a broken leftover: write it again
            pass
        path.unlink()
    patches = [it.image for it in ctx.data.items[:: max(1, len(ctx.data.items) // 64)]]
    return path, {"reused": False, **write_synthetic_slide(path, size, patches)}


def part_memory(ctx: Context) -> dict:
    a = ctx.args
    settings = ctx.settings(ctx.prior.arch)
    prior_file = ctx.prior_file()
    rows_asked = a.rows
    sizes = []
    for size in a.sizes:
        path, made = ensure_slide(ctx, size)
        rows = rows_asked if rows_asked and rows_asked < size else None
        res = run_child(
            "memory",
            {
                "slide": str(path),
                "rows": rows,
                "prior": str(prior_file),
                "tile": a.tile,
                "overlap": a.overlap,
                "batch_size": a.infer_batch,
                "device": str(ctx.dev),
                "amp": settings.amp,
                "threads": a.threads,
                "workdir": str(a.out / "work" / f"memory-{size}"),
            },
        )
        res.update(size=size, slide=str(path), slide_file=made)
        sizes.append(res)
        print(
            f"   {size}² ({res['segmented']}): peak RSS {res['peak_rss_mb']:.0f} MiB, {res['seconds']:.1f} s",
            flush=True,
        )
    peaks = [s["peak_rss_mb"] for s in sizes]
    under = max(peaks) < TARGET_PEAK_MB if dev_is_cpu(ctx) else None
    flat_ratio = peaks[-1] / peaks[0] if len(peaks) > 1 else 1.0
    flat = flat_ratio <= FLAT_FACTOR
    ok = (under is not False) and flat
    return {
        "what": "peak resident memory (VmHWM) of a fresh process segmenting each synthetic slide to a zarr on disk",
        "rows": rows_asked or "all",
        "note": (
            f"only the first {rows_asked} pixel rows of each full-width slide were segmented (--rows): "
            "the logits band spans one column strip (8192 px) of the full width and a tile's height, so "
            "further rows add time, not memory"
            if rows_asked
            else "every slide was segmented whole"
        ),
        "tile": a.tile,
        "overlap": a.overlap,
        "batch_size": a.infer_batch,
        "sizes": sizes,
        "peak_rss_mb_max": max(peaks),
        "flat_ratio": flat_ratio,
        "target": f"flat (largest <= {FLAT_FACTOR}x smallest) and < {TARGET_PEAK_MB:.0f} MiB on the CPU",
        "status_under_2gb": _status(under),
        "status_flat": _status(flat),
        "status": _status(ok),
    }


def dev_is_cpu(ctx: Context) -> bool:
    return ctx.dev.type == "cpu"


def child_memory(p: dict) -> dict:
    import torch

    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    from napari_cinuseg import drain, load_model
    from napari_cinuseg.inference.segmentation import (
        MemoryReduced,
        SegmentFinished,
        SegmentStarted,
        segment,
    )
    from napari_cinuseg.io.slides import Slide

    model = load_model(p["prior"])
    before = peak_rss_mb()
    out = Path(p["workdir"]) / "x.zarr"
    if out.exists():
        shutil.rmtree(out)
    info: dict = {}
    samples: list[float] = []
    stop = threading.Event()

    def sample():  # the current RSS over time, to see whether it creeps up
        while not stop.is_set():
            r = rss_mb()
            if r is not None:
                samples.append(r)
            stop.wait(0.25)

    def on_event(ev):
        if isinstance(ev, SegmentStarted):
            info.update(height=ev.height, width=ev.width, tiles=ev.tiles)
        elif isinstance(ev, SegmentFinished):
            info.update(skipped=ev.skipped)
        elif isinstance(ev, MemoryReduced):
            info.setdefault("memory_reduced", []).append(ev.message)

    dev = torch.device(p["device"])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    slide = Slide(p["slide"])
    h, w = slide.shape
    image = _band_class()(slide, p["rows"]) if p["rows"] else slide
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        drain(
            segment(
                model,
                image,
                tile=p["tile"],
                overlap=p["overlap"],
                batch_size=p["batch_size"],
                device=p["device"],
                amp=p["amp"],
                min_tissue=0,
                out=out,
            ),
            on_event,
        )
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        watcher.join(timeout=5)
        slide.close()
    peak = peak_rss_mb()
    import zarr

    written = list(zarr.open_array(str(out), mode="r").shape)
    shutil.rmtree(out, ignore_errors=True)
    rows = p["rows"] or h
    res = {
        "segmented": f"first {rows} of {h} rows × {w} px" if p["rows"] else f"whole {h} × {w}",
        "rows_segmented": rows,
        "width": w,
        "class_map_shape": written,
        "seconds": seconds,
        "image_mp_per_s": rows * w / 1e6 / seconds,
        "rss_after_model_load_mb": before,
        "peak_rss_mb": peak,
        "segmentation_rss_mb": peak - before,  # what segmenting added on top of torch + the model
        "rss_samples_mb": {
            "first": samples[0] if samples else None,
            "max": max(samples) if samples else None,
            "last": samples[-1] if samples else None,
            "count": len(samples),
        },
        **info,
    }
    if dev.type == "cuda":
        res["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return res
