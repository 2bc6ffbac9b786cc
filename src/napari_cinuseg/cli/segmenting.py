"""``cinuseg segment``'s work on one image: claimed for this run, skipped if done, segmented,
split into nuclei and exported, every scratch file removed whatever happens."""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

from ..io.atomic import describe_write_failure
from ..io.claims import OutputClaimed, claim
from ..io.slides import Slide
from ..session.storage import class_map_on_disk
from .console import CONSOLE
from .jobs import MAIN_RANK, drain


def segment_image(args, model, image, target: Path, device: str) -> int:
    """One image of ``cinuseg segment``: claimed for this run, skipped if done, segmented, split
    into nuclei and exported (masks, table, GeoJSON). Returns 0 (done or skipped), 1 (failed,
    said) or 130 (cancelled)."""
    import zarr  # noqa: PLC0415 - zarr loads only once a command runs (+150 ms on `cinuseg --help`)

    from ..inference.instances import nuclei_of  # noqa: PLC0415 - SciPy and scikit-image load only once a command runs (+250 ms on `cinuseg --help`)
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
    if target.exists():
        held.close()
        CONSOLE.say(f"{target} exists: skipped (delete it to segment {image} again)")
        return 0
    try:
        slide = Slide(image, level=args.level)
    except (ValueError, FileNotFoundError) as exc:
        held.close()
        CONSOLE.error(str(exc))
        return 1
    if slide.pixel_size_error and not args.pixel_size:
        held.close()
        slide.close()
        CONSOLE.error(slide.pixel_size_error)
        return 1
    h, w = slide.shape
    pixel_size = args.pixel_size or slide.pixel_size
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
    scratch = out / f".{target.name}.zarr"
    if scratch.exists():
        shutil.rmtree(scratch)
    bar = CONSOLE.bar(1, "tile", Path(image).name)
    try:
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
            method=args.instances,
            out=out / f".{target.name}.instances.zarr" if on_disk else None,
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
                extra={"source": str(image), "level": args.level},
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
        shutil.rmtree(out / f".{target.name}.instances.zarr", ignore_errors=True)
        held.close()
    return 0
