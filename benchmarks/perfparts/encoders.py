"""5. encoders: training crops/s and inference MP/s per encoder."""

from __future__ import annotations

import traceback

from .common import Context, GpuUtilisation
from .tiling import time_segment
from .training import time_step

# --------------------------------------------------------------------------------------------
# 5. throughput per encoder


def part_encoders(ctx: Context) -> dict:
    from napari_cinuseg import CiNuSegModel

    a = ctx.args
    rows = []
    for enc in a.encoders:
        row: dict = {"encoder": enc}
        try:
            settings = ctx.settings().replace(encoder=enc)
            model = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], settings.architecture())
            settings = settings.for_network(model.arch)
            with GpuUtilisation(ctx.dev) as gpu:
                step = time_step(model, ctx.pairs, settings, "cinuseg", a.warmup)
            row.update(
                batch_size=settings.batch_size,
                crop_size=settings.crop_size,
                train_seconds_per_iteration=step["seconds_per_iteration"],
                train_crops_per_s=settings.batch_size / step["seconds_per_iteration"],
                train_gpu_utilisation=gpu.result(),
            )
            image, slide = ctx.image()
            try:
                with GpuUtilisation(ctx.dev) as gpu:
                    seg = time_segment(model, image, ctx, settings)
            finally:
                if slide is not None:
                    slide.close()
            h, w = seg["result_shape"][:2]
            row.update(
                infer_seconds=seg["seconds"],
                infer_tiles=seg.get("tiles"),
                infer_image_mp_per_s=h * w / 1e6 / seg["seconds"],
                infer_tile_mp_per_s=(seg.get("tiles") or 0) * a.tile * a.tile / 1e6 / seg["seconds"],
                infer_gpu_utilisation=gpu.result(),
                amp=settings.amp and ctx.dev.type == "cuda",
            )
        except Exception as exc:  # noqa: BLE001 - one encoder failing leaves the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
        rows.append(row)
        print(
            f"   {enc}: "
            + (
                row.get("error")
                or f"{row['train_crops_per_s']:.2f} crops/s training, {row['infer_image_mp_per_s']:.3f} MP/s inference"
            ),
            flush=True,
        )
    errors = [r for r in rows if "error" in r]
    res = {
        "what": "CiNuSeg step crops/s (batch × iterations ÷ s, after warm-up) and segment() megapixels/s of image "
        "per encoder; untrained models (weights do not change the time)",
        "image": str(a.slide),
        "tile": a.tile,
        "overlap": a.overlap,
        "infer_batch_size": a.infer_batch,
        "encoders": rows,
        "status": "n/a",
    }
    if errors and len(errors) == len(rows):
        raise RuntimeError("; ".join(f"{r['encoder']}: {r['error']}" for r in errors))
    return res
