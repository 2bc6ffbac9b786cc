"""2. tiling: segment() throughput ÷ the bare forward pass on the same tiles."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .common import TARGET_TILING_RATIO, Context, _status, _sync

# --------------------------------------------------------------------------------------------
# 2. tiling overhead


def bare_forward_seconds(model, batches, dev, amp: bool) -> float:
    """Seconds for the bare network forward over ``batches`` (uint8 NCHW tensors in host
    memory): upload, normalise, forward, in eval mode under inference_mode (with the model's
    AMP and channels_last on CUDA, as ``segment`` uses). The logits stay on the device."""
    import torch

    from napari_cinuseg.runtime import devices

    dtype = devices.amp_dtype(dev, amp)
    net = model.network
    _sync(dev)
    t0 = time.perf_counter()
    with torch.inference_mode(), devices.autocast(dev, dtype):
        for b in batches:
            x = b.to(dev, non_blocking=True)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            _ = net(model.normalize(x)).logits
    _sync(dev)
    return time.perf_counter() - t0


def _tiles_of(image, tile: int, overlap: int):
    from napari_cinuseg.inference.tiling import tile_origins
    from napari_cinuseg.io.slides import Slide

    own = isinstance(image, str)
    slide = Slide(image) if own else image
    try:
        h, w = slide.shape
        ys, xs = tile_origins(h, tile, overlap), tile_origins(w, tile, overlap)
        tiles = [slide.read(y, x, y + tile, x + tile) for y in ys for x in xs]
    finally:
        if own:
            slide.close()
    return (h, w), tiles


def time_segment(model, image, ctx: Context, settings) -> dict:
    from napari_cinuseg import drain
    from napari_cinuseg.inference.segmentation import segment
    from napari_cinuseg.runtime.events import MemoryReduced, SegmentFinished

    a = ctx.args
    info: dict = {}

    def on_event(ev):
        if isinstance(ev, SegmentFinished):
            info.update(tiles=ev.tiles, skipped=ev.skipped)
        elif isinstance(ev, MemoryReduced):
            info.setdefault("memory_reduced", []).append(ev.message)

    t0 = time.perf_counter()
    result = drain(
        segment(
            model,
            image,
            tile=a.tile,
            overlap=a.overlap,
            batch_size=a.infer_batch,
            device=str(ctx.dev),
            amp=settings.amp,
            min_tissue=0,
        ),
        on_event,
    )
    info["seconds"] = time.perf_counter() - t0
    info["result_shape"] = list(np.shape(result))
    return info


def part_tiling(ctx: Context) -> dict:
    import torch

    a = ctx.args
    model, dev = ctx.prior, ctx.dev
    settings = ctx.settings(model.arch)
    image, slide = ctx.image()
    try:
        (h, w), tiles = _tiles_of(image, a.tile, a.overlap)
        n = len(tiles)
        tile_mp = n * a.tile * a.tile / 1e6  # what both throughputs count
        batches = [
            torch.from_numpy(np.stack(tiles[i : i + a.infer_batch])).permute(0, 3, 1, 2)
            for i in range(0, n, a.infer_batch)
        ]
        del tiles
        net = model.network
        was_training = net.training

        def ready():  # segment hands the network back on the CPU: bring it to the device again
            net.eval().to(dev)
            if dev.type == "cuda":
                net.to(memory_format=torch.channels_last)

        try:
            ready()
            bare_forward_seconds(model, batches[:1], dev, settings.amp)  # warm-up, not timed
            bare_s, seg_runs = [], []
            for r in range(a.repeats):  # alternating order, the median of each
                for what in ("bare", "segment") if r % 2 == 0 else ("segment", "bare"):
                    if what == "bare":
                        ready()
                        bare_s.append(bare_forward_seconds(model, batches, dev, settings.amp))
                    else:
                        seg_runs.append(time_segment(model, image, ctx, settings))
        finally:
            net.train(was_training).cpu()
            if dev.type == "cuda":
                net.to(memory_format=torch.contiguous_format)
        del batches
    finally:
        if slide is not None:
            slide.close()
    seg_s = statistics.median(r["seconds"] for r in seg_runs)
    bare = statistics.median(bare_s)
    if seg_runs[0].get("tiles") != n:
        raise RuntimeError(f"segment used {seg_runs[0].get('tiles')} tiles, the bare forward {n}: not the same pixels")
    seg_mps, bare_mps = tile_mp / seg_s, tile_mp / bare
    ratio = seg_mps / bare_mps
    return {
        "what": "megapixels/s of segment() ÷ of the bare network forward on the same tiles held in memory",
        "pixels_counted": "tiles × tile² (the tiles' area including overlap), the same in both",
        "image": str(a.slide),
        "region": {"rows": h, "cols": w},
        "tile": a.tile,
        "overlap": a.overlap,
        "batch_size": a.infer_batch,
        "tiles": n,
        "tile_megapixels": tile_mp,
        "image_megapixels": h * w / 1e6,
        "amp": settings.amp and dev.type == "cuda",
        "segment_seconds": seg_s,
        "bare_forward_seconds": bare,
        "segment_mp_per_s": seg_mps,
        "bare_forward_mp_per_s": bare_mps,
        "segment_image_mp_per_s": h * w / 1e6 / seg_s,
        "ratio": ratio,
        "target": f">= {TARGET_TILING_RATIO}",
        "status": _status(ratio >= TARGET_TILING_RATIO),
        "repeats": a.repeats,
        "runs": {"segment": seg_runs, "bare_forward_seconds": bare_s},
    }
