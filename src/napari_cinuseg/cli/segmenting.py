"""``cinuseg segment``: its batch of images (shared out between processes), and its work on one
image: claimed for this run, skipped if done, segmented, split into nuclei and exported, every
scratch file removed whatever happens."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import tifffile

from ..io.atomic import describe_write_failure
from ..io.claims import OutputClaimed, claim
from ..io.export import masks_metadata
from ..io.slides import Slide
from ..session.storage import class_map_on_disk, nuclei_csv_path
from .console import CONSOLE
from .jobs import MAIN_RANK, drain


def segment_settings(args) -> dict:
    """What ``cinuseg segment``'s masks depend on besides the model and the image, as recorded in
    the masks file (its ``settings``): a file made otherwise is not this run's result."""
    return {
        "tile": args.tile,
        "overlap": args.overlap,
        "level": args.level,
        "pixel_size_um_given": args.pixel_size,
        "min_area_um2": args.min_area,
        "instances": args.instances,
    }


def why_not_reusable(target: Path, model, settings: dict) -> str | None:
    """None when the masks file ``target`` was made by ``model`` with ``settings`` (a resumed
    run may skip its image); else why not, in words. A file of an earlier version, which did not
    record its settings, is judged by its model alone."""
    try:
        with tifffile.TiffFile(target) as tif:
            meta = masks_metadata(tif)
    except Exception:  # noqa: BLE001 - any file that is not a readable masks file
        meta = None
    if meta is None:
        return "is not a napari-cinuseg masks file"
    if meta.get("model_id") != model.id:
        made_by = str(meta.get("model_id") or "an unknown model")[:8]
        return f"was made by another model ({made_by}…, not {Path(model.source_path or model.id).name})"
    recorded = meta.get("settings")
    if recorded is None:
        return None
    differ = [f"{k} {recorded.get(k)} (now {v})" for k, v in settings.items() if recorded.get(k) != v]
    return f"was made with other settings: {', '.join(differ)}" if differ else None


def segment_image(args, model, image, target: Path, device: str) -> int:
    """One image of ``cinuseg segment``: claimed for this run, skipped if done, segmented, split
    into nuclei and exported (masks, table, GeoJSON). Returns 0 (done or skipped), 1 (failed,
    said) or 130 (cancelled)."""
    import zarr  # noqa: PLC0415 - zarr loads only once a command runs (+150 ms on `cinuseg --help`)

    from ..inference.instances import instance_method, nuclei_of  # noqa: PLC0415 - SciPy and scikit-image load only once a command runs (+250 ms on `cinuseg --help`)
    from ..inference.segmentation import resampling_factor, segment  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast
    from ..runtime.events import SegmentStarted, TileProgress  # noqa: PLC0415 - runtime.events' event classes take +10 ms to define, on `cinuseg --help` too
    from ..session.export import export_nuclei  # noqa: PLC0415 - its readers and writers load only once a command runs

    out = target.parent
    held = contextlib.ExitStack()  # this run's claim on the target (and its scratch folder)
    try:
        held.enter_context(claim(target))
    except OutputClaimed as exc:
        CONSOLE.error(str(exc))
        return 1
    try:
        method = instance_method(model.network.has_separation, args.instances)
    except ValueError as exc:
        held.close()
        CONSOLE.error(f"--instances {args.instances}: {exc}")
        return 1
    settings = {**segment_settings(args), "instances": method}  # what was used, for a resumed run
    if target.exists():
        held.close()
        stale = why_not_reusable(target, model, settings)
        if stale:
            CONSOLE.error(
                f"{target} exists but {stale}: it is not the result of this run; delete it (and "
                f"{nuclei_csv_path(target).name}) to segment {image} again, or give another --out"
            )
            return 1
        CONSOLE.say(f"{target} exists (the same model and settings): skipped (delete it to segment {image} again)")
        return 0
    out_scratch = (
        out / f".{target.name}.zarr",
        out / f".{target.name}.instances.zarr",
        out / f".{target.name}.separation.zarr",
    )
    for left in out_scratch:  # we hold the claim: a scratch folder here is a dead run's
        if left.exists():
            shutil.rmtree(left, ignore_errors=True)
            CONSOLE.note(f"removed {left}, left by a run that was killed")
    try:
        slide = Slide(image, level=args.level)
    except (ValueError, FileNotFoundError) as exc:
        held.close()
        CONSOLE.error(str(exc))
        return 1
    h, w = slide.shape
    try:
        pixel_size = args.pixel_size or slide.pixel_size
    except ValueError as exc:  # the file states a pixel size that is not believed
        slide.close()
        held.close()
        CONSOLE.error(str(exc))
        return 1
    scale = resampling_factor(model.pixel_size, pixel_size)
    if MAIN_RANK:
        said = (
            f"{pixel_size:g} µm/px" + (" (given)" if args.pixel_size else " (from the file)")
            if pixel_size
            else "pixel size unknown (give --pixel-size)"
        )
        model_px = f"{model.pixel_size:g} µm/px" if model.pixel_size else "unknown"
        how = (
            f"resampled ×{scale:.2f} for the model ({model_px})"
            if scale != 1.0
            else f"model at {model_px}: not resampled"
        )
        CONSOLE.say(f"{Path(image).name}: {w}×{h} px, {said}; {how}")
    on_disk = class_map_on_disk(h, w, limit=args.in_memory_limit)
    scratch, instances_scratch, separation_scratch = out_scratch
    bar = CONSOLE.bar(1, "tile", Path(image).name)
    try:
        separation = None  # the model's learned distance map, written beside the class map
        if method == "distance":
            separation = (
                zarr.open_array(
                    str(separation_scratch), mode="w", shape=(h, w), chunks=(min(h, 1024), min(w, 1024)), dtype="uint8"
                )
                if on_disk
                else np.zeros((h, w), np.uint8)
            )
        job = segment(
            model,
            slide,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            device=device,
            compile=args.compile,
            image_pixel_size=pixel_size,
            out=scratch if on_disk else None,
            separation_out=separation,
        )

        def show(ev):
            if isinstance(ev, SegmentStarted):
                bar.reset(total=ev.tiles)
            elif isinstance(ev, TileProgress):
                bar.update_to(ev.done, skipped=ev.skipped)

        result = drain(job, show)
        if result is None:
            return 130
        class_map = zarr.open_array(str(result), mode="r") if on_disk else result
        nuclei = nuclei_of(
            class_map,
            pixel_size_um=pixel_size,
            min_area_um2=args.min_area,
            method=method,
            out=instances_scratch if on_disk else None,
            separation=separation,
        )
        if nuclei.note and MAIN_RANK:
            CONSOLE.note(nuclei.note)
        if isinstance(nuclei.labels, Path):
            nuclei.labels = zarr.open_array(str(nuclei.labels), mode="r")
        levels = getattr(slide, "levels", None)
        downsample = max(levels[0]) / max(levels[args.level]) if levels and args.level else 1.0
        # the table first: a masks file on disk means this image is done (a resumed run skips it)
        _, csv_path, gj = drain(
            export_nuclei(
                class_map,
                nuclei,
                target,
                model.class_names,
                [c.colour for c in model.classes],
                model.id,
                extra={"source": str(image), "level": args.level, "settings": settings},
                pixel_size=pixel_size,
                geojson=args.geojson,
                downsample=downsample,
                overwrite=False,
            )
        )
        CONSOLE.say(f"saved {target} and {csv_path.name}{' and ' + gj.name if gj else ''}: {nuclei.count} nuclei")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
            raise
        raise ValueError(f"{target} could not be written: {describe_write_failure(exc, target)}") from None
    finally:
        bar.close()
        slide.close()
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(instances_scratch, ignore_errors=True)
        shutil.rmtree(separation_scratch, ignore_errors=True)
        held.close()
    return 0


def image_stem(image: str) -> str:
    """The image's name without its extension (two for OME-TIFF: ``a.ome.tif`` → ``a``)."""
    name = Path(image).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def shard(images: list[str], spec: str | None) -> list[str]:
    """This process's share of a cohort: ``K/N`` takes images K, K+N, K+2N, … (0-based); under
    torchrun (and without --shard) it is RANK/WORLD_SIZE. Shares never overlap, and each image's
    output is its own file, so processes need not talk to each other."""
    if spec is None:
        k, n = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    else:
        try:
            k, n = (int(v) for v in spec.split("/"))
        except ValueError:
            raise ValueError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {spec!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {k}/{n}")
    return list(images)[k::n]


def cmd_segment(args) -> int:
    import torch  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    from ..model.file import BUNDLED_MODEL, load_model  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    if args.model is None and MAIN_RANK:
        CONSOLE.say(
            f"no --model given: using the bundled base model {BUNDLED_MODEL.name} (CoNSeP's classes, 0.25 µm/px)"
        )
    model = load_model(args.model or BUNDLED_MODEL)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--out {out} is a file; segment writes a folder of masks and tables: give a folder's name (it is created)"
        )
    images, device = shard(args.images, args.shard), args.device
    if os.environ.get("LOCAL_RANK") and device == "auto" and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"  # one GPU per process
    targets = {image: out / (image_stem(image) + ".masks.tif") for image in images}
    clash = [t.name for t in targets.values() if list(targets.values()).count(t) > 1]
    if clash:
        raise ValueError(
            f"several images would write {sorted(set(clash))[0]}; give them different names or run them into "
            "different --out folders"
        )
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for image in images:
        status = segment_image(args, model, image, targets[image], device)
        if status == 130:
            return 130
        failed += status
    return 2 if failed else 0
