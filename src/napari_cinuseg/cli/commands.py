"""What each ``cinuseg`` command does (the parser is in ``parser.py``). Engine modules are imported
inside each command, so that the help answers at once, without PyTorch."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..io.pixel_size import resampling_factor
from ..runtime.setting import CLI, offered
from ..training.settings import TrainSettings, preset
from .console import CONSOLE
from .data import load_data, more_pairs
from .jobs import BASE_MODEL_ROOM, MAIN_RANK, check_room, claim_model, drain, model_bytes, save_or_rescue


def _settings(args: argparse.Namespace, **extra):
    """The preset with the options given: training settings, and a method's own (e.g. --tau),
    which TrainSettings keeps in its method_settings for the step's method."""
    names = set(offered(TrainSettings, CLI)) | set(getattr(args, "_method_settings", ()))
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return preset(args.preset, **overrides)


def _with_encoder(settings, args: argparse.Namespace):
    """``settings`` with --encoder, --encoder-weights and --input applied."""
    weights = args.encoder_weights
    if args.encoder:
        settings = settings.replace(encoder=args.encoder)
        if weights is None:  # another encoder than the preset's: its own default weights
            weights = "imagenet" if args.encoder.startswith("efficientnet") else "random"
    if weights is not None:
        settings = settings.replace(encoder_weights=None if weights == "random" else weights)
    if getattr(args, "input_kind", None):
        settings = settings.replace(input=args.input_kind)
    return settings


def _model_out(text: str) -> Path:
    """--out of a new model: a file name. A name that ends in a slash or is a folder means a
    folder to a user, and a file named like that folder would surprise them: refused, with a name inside."""
    out = Path(text)
    if text.endswith(("/", os.sep)) or out.is_dir():
        raise ValueError(
            f"--out {text} is a folder; give the new model's file name, e.g. --out {out / 'model.cinuseg.pt'}"
        )
    return out


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def cmd_train_base(args) -> int:
    from ..datasets.labelled import step_pairs  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)
    from ..model.file import check_new_model_path  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast
    from ..training.steps import train_base  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    out = _model_out(args.out)
    check_new_model_path(out, None)
    check_room(out, BASE_MODEL_ROOM)
    with claim_model(out):  # a second run with the same --out is refused now, not after training
        data = load_data(args)
        classes = _names(args.classes) if args.classes else data.class_names
        pairs = step_pairs(data, classes)
        for spec in args.with_data or []:
            pairs += more_pairs(spec, classes, args)
        settings = _with_encoder(_settings(args), args)
        model = drain(train_base(pairs, classes, settings, pixel_size=args.pixel_size or data.pixel_size))
        if model is None:
            return 130
        if MAIN_RANK:
            save_or_rescue(model, out)
    return 0


def cmd_step(args) -> int:
    from ..datasets.labelled import step_pairs  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)

    # PyTorch loads only once a command runs: `cinuseg --help` stays fast
    from ..model.file import check_new_model_path, load_model  # noqa: PLC0415
    from ..training.steps import train_step  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    prior = load_model(args.prior)
    out = _model_out(args.out)
    check_new_model_path(out, prior)
    check_room(out, model_bytes(prior) + 2**20)  # the prior's weights in fp32, a class more and the record
    with claim_model(out):  # a second run with the same --out is refused now, not after training
        data = load_data(args)
        new = _names(args.new_classes)
        pairs = step_pairs(data, new)
        px = args.pixel_size or data.pixel_size
        _say_scale(px, prior.pixel_size)
        settings = _settings(args).for_network(prior.arch)
        model = drain(train_step(prior, pairs, new, settings, method=args.method, pixel_size=px))
        if model is None:
            return 130
        if MAIN_RANK:
            save_or_rescue(model, out)
            _print_forgetting(model.steps[-1].results.get("forgetting"))
    return 0


def _say_scale(pixel_size: float | None, prior_pixel_size: float | None) -> None:
    """At which pixel size the step trains: the prior's, the images resampled where theirs differs."""
    if not prior_pixel_size:
        return
    if not pixel_size:
        CONSOLE.note(
            f"the images' pixel size is unknown, so the prior's ({prior_pixel_size:g} µm/px) is assumed; "
            "give --pixel-size (or pixel_size_um in classes.json) if they are at another magnification"
        )
    elif resampling_factor(prior_pixel_size, pixel_size) != 1.0:
        CONSOLE.say(f"the images ({pixel_size:g} µm/px) are resampled to the prior's {prior_pixel_size:g} µm/px")


def _print_forgetting(report: dict | None, indent: str = "") -> None:
    """The step's forgetting report (forgetting.py) and a warning per class below the threshold."""
    from ..analysis.forgetting import forgetting_warnings, format_report  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    if not report:
        return
    print(f"{indent}{format_report(report)} ({report.get('images')} of the step's images)")
    for line in forgetting_warnings(report):
        if indent:  # part of `cinuseg info`'s listing
            print(f"{indent}warning: {line}")
        else:
            CONSOLE.warn(line)


def cmd_evaluate(args) -> int:
    from ..analysis.evaluation import evaluate  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast
    from ..analysis.held_out import trained_images, trained_on, trained_on_warning  # noqa: PLC0415 - as the import beside it
    from ..model.file import load_model  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    model = load_model(args.model)
    data = load_data(args)
    seen = trained_on(model, [it.name for it in data.items])
    warning = trained_on_warning(seen, len(data.items))
    if warning:
        CONSOLE.warn(warning)
    bar = CONSOLE.bar(len(data.items), "img", "evaluate")
    try:
        dice = evaluate(model, data, args.device or "auto", lambda n, t: bar.update_to(n))
    finally:
        bar.close()
    fg = [v for v in dice.values() if v == v]
    result = {
        "model": str(args.model),
        "split": args.split,
        "images": len(data.items),
        "trained_on": len(trained_images(seen)),  # of the images scored, by name
        "dice": {name: v if v == v else None for name, v in dice.items()},  # NaN (no pixel of it): null
        "mean": sum(fg) / len(fg) if fg else None,
    }
    if args.json:
        print(json.dumps(result, indent=1, allow_nan=False))
    else:
        for name, v in result["dice"].items():
            print(f"{name:>20s}  Dice {_dice(v)}")
        print(f"{'mean':>20s}  Dice {_dice(result['mean'])}  ({len(data.items)} images, split {args.split})")
    return 0


def _dice(value: float | None) -> str:
    """A Dice score as printed; None: no pixel of the class in the images or the masks."""
    return "   n/a (no pixel of it)" if value is None else f"{value:6.2f}"


def instances_of_architecture(architecture: dict) -> str:
    """How a model's nuclei are split, from its record's architecture: the rule of
    :func:`~napari_cinuseg.inference.instances.instance_method`, in words."""
    from ..inference.instances import instance_method  # noqa: PLC0415 - SciPy and scikit-image load only once a command runs (+250 ms on `cinuseg --help`)

    if instance_method(architecture.get("separation", "none") == "distance") == "distance":
        return "watershed on the model's learned distance map (separation head)"
    return "watershed on the class map's distance transform (the model has no separation head)"


def cmd_info(args) -> int:
    from ..model.file import read_record  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast

    record = read_record(args.model)
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    a = record["architecture"] if isinstance(record["architecture"], dict) else {}
    print(
        f"model {record.get('id', '?')}  {a.get('encoder', '?')} / {a.get('decoder', '?')}  "
        f"created {record.get('created', '?')}"
    )
    seen = record.get("normalization", {}).get("input", "rgb")
    px = record.get("pixel_size_um")
    print(
        f"input: {'hematoxylin density only' if seen == 'hematoxylin' else 'RGB'}; "
        f"pixel size {f'{px:g} µm' if px else 'unknown'}"
    )
    print(f"instances: {instances_of_architecture(a)}")
    print("classes:")
    for i, c in enumerate(record["classes"], start=1):
        c = c if isinstance(c, dict) else {}
        print(f"  {i}: {str(c.get('name', '?')):<20s} {c.get('colour', '?')}  learned at step {c.get('step', '?')}")
    for s in record.get("steps", []):  # what a record lacks is shown as "?", never a KeyError
        s = s if isinstance(s, dict) else {}
        r = s.get("results") if isinstance(s.get("results"), dict) else {}
        new = ", ".join(map(str, s.get("new_classes") or []))
        data = s.get("data") if isinstance(s.get("data"), dict) else {}
        refined = ", ".join(map(str, data.get("refined_classes") or []))
        new = "; ".join(filter(None, [new, f"refined {refined}" if refined else ""])) or "?"
        print(
            f"step {s.get('step', '?')}: {s.get('method', '?')} → {new}; {r.get('iterations')} iterations, "
            f"{r.get('seconds')} s, final loss {r.get('final_loss')}"
        )
        _print_forgetting(r.get("forgetting"), indent="  ")
    return 0


def cmd_benchmark(args) -> int:
    from ..benchmark.run import BenchmarkConfig, run_benchmark  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast
    from ..benchmark.split import benchmark_split  # noqa: PLC0415 - as the import beside it
    from ..datasets.labelled import data_dir  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)
    from ..datasets.layouts import read_dataset  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)
    from ..runtime.events import BenchmarkStarted, CurvePoint, PriorUnconfident, StepEvaluated, StepPlanned  # noqa: PLC0415 - runtime.events' event classes take +10 ms to define, on `cinuseg --help` too

    if not args.out and not args.describe_split:
        raise ValueError("give --out FOLDER for the results (or --describe-split to only print the split)")
    if args.test_data and args.split:
        raise ValueError(
            f"--test-data is scored whole, so --split {args.split} has no meaning with it: give one of the two"
        )
    data = read_dataset(args.dataset, args.data or data_dir() / args.dataset)
    test = read_dataset(args.dataset, args.test_data) if args.test_data else None
    split = benchmark_split(data, args.split, test, args.val_fraction, args.test_fraction, args.split_seed)
    if args.describe_split:
        print(split.describe())
        return 0
    cfg = BenchmarkConfig(
        dataset=args.dataset,
        train=split.train,
        test=split.scored,
        protocols=_names(args.protocol),
        methods=_names(args.methods),
        settings=_with_encoder(_settings(args), args),
        out=Path(args.out),
        class_order=_names(args.class_order) if args.class_order else None,
        steps_only=args.steps_only,
        base_iterations=args.base_iterations,
        curve_every=args.curve_every,
        test_description=split.description,
        split=split.record(),
        command="cinuseg " + " ".join(sys.argv[1:])
        if sys.argv and (sys.argv[0].endswith("cinuseg") or Path(sys.argv[0]).match("napari_cinuseg/__main__.py"))
        else "",
    )

    def show(ev) -> None:
        if isinstance(ev, BenchmarkStarted):
            CONSOLE.say(
                f"benchmark {', '.join(ev.protocols)} × {', '.join(ev.methods)}: {ev.train_images} training images, "
                f"{ev.test_images} test images, {ev.device}"
            )
        elif isinstance(ev, StepPlanned):
            what = "cached" if ev.cached else "training"
            CONSOLE.say(f"[{ev.protocol} {ev.method} step {ev.step}] {what}: {', '.join(ev.classes)}")
        elif isinstance(ev, StepEvaluated):
            dice = ", ".join(f"{k} {v:.1f}" for k, v in ev.dice.items())
            CONSOLE.say(f"[{ev.protocol} {ev.method} step {ev.step}] Dice: {dice}")
        elif isinstance(ev, CurvePoint):
            dice = ", ".join(f"{k} {v:.1f}" for k, v in ev.dice.items())
            CONSOLE.say(f"[{ev.protocol} {ev.method}] iteration {ev.iteration}/{ev.total}: mean {ev.mean:.1f} ({dice})")
        elif isinstance(ev, PriorUnconfident):
            shares = ", ".join(f"{c} {v:.0%}" for c, v in ev.shares.items())
            CONSOLE.warn(
                f"[{ev.protocol} {ev.method} step {ev.step}] the prior scores few test pixels of {shares} above "
                f"tau = {ev.tau}: the step's pseudo-labels (eq. 1) will hold little of them, whatever the method"
            )

    results = drain(run_benchmark(cfg), show)
    if results is None:
        return 130
    table = Path(args.out) / "table.md"
    if table.exists():
        print(table.read_text())
    return 0


def cmd_export(args) -> int:
    from skimage import io as skio  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)

    from ..inference.instances import nuclei_of  # noqa: PLC0415 - SciPy and scikit-image load only once a command runs (+250 ms on `cinuseg --help`)
    from ..model.file import load_model  # noqa: PLC0415 - PyTorch loads only once a command runs: `cinuseg --help` stays fast
    from ..session.export import export_nuclei  # noqa: PLC0415 - its readers and writers load only once a command runs

    model = load_model(args.model)
    if Path(args.out).exists():
        raise ValueError(f"{args.out} exists; choose another --out (export never replaces a file)")
    folder = Path(args.out).absolute().parent
    if not folder.is_dir():
        raise ValueError(f"the folder {folder} does not exist; create it or choose another --out")
    class_map = np.asarray(skio.imread(args.class_map))
    if class_map.ndim != 2:
        raise ValueError(f"{args.class_map} is not a 2-D class map (shape {class_map.shape})")
    if not (np.issubdtype(class_map.dtype, np.integer) or class_map.dtype == bool):
        odd = class_map[np.isfinite(class_map) & (class_map != np.round(class_map))] if class_map.size else []
        if not np.isfinite(class_map).all() or len(odd):
            example = odd[0] if len(odd) else class_map[~np.isfinite(class_map)][0]
            raise ValueError(
                f"{args.class_map} holds {class_map.dtype} values that are not class ids (e.g. {example:g}); a "
                "class map holds whole numbers (0 background, 1.. the model's classes): save it as an integer image"
            )
    if class_map.min(initial=0) < 0:
        raise ValueError(
            f"{args.class_map} holds negative values (down to {class_map.min():g}); a class map holds 0 for background "
            f"and 1..{len(model.classes)} for the model's classes: fix the map"
        )
    if class_map.max(initial=0) > len(model.classes):
        raise ValueError(
            f"{args.class_map} has class ids up to {class_map.max()}, but the model knows {len(model.classes)} classes"
        )
    class_map = class_map.astype(np.uint8)
    nuclei = nuclei_of(class_map, pixel_size_um=args.pixel_size)
    if nuclei.note:
        CONSOLE.note(nuclei.note)
    out, csv_path, gj = drain(
        export_nuclei(
            class_map,
            nuclei,
            args.out,
            model.class_names,
            [c.colour for c in model.classes],
            model.id,
            extra={"source": str(args.class_map)},
            pixel_size=args.pixel_size,
        )
    )
    CONSOLE.say(f"saved {out}, {csv_path.name} and {gj.name}: {nuclei.count} nuclei")
    return 0


def cmd_methods(args) -> int:
    from ..methods import available  # noqa: PLC0415 - the method registry imports PyTorch: `cinuseg --help` stays fast

    print("\n".join(available()))
    return 0
