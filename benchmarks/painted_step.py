"""Benchmark of the painted step, the plugin's core use: K painted nuclei of a new class, one step.

Painting is simulated from the data set's instance (CoNSeP) or class labels (MoNuSAC: connected
regions): K whole nuclei of the new class on M images of a few training sources, plus background
dabs away from every nucleus (benchmark/painting.py); nothing else is painted. One step is
trained from a prior (the bundled model by default) with the panel's defaults (method cinuseg,
the cpu preset, 300 iterations, 128-px crops) and scored with ``analysis.evaluation.evaluate``
on the other sources (split by source), or on ``--test-data``. Each row records the new class's
Dice, each old class's Dice against the prior's, the forgetting report, whether every loss was
finite, the skipped iterations and the seconds. With ``--objects`` it also scores the new class's
nuclei as objects on the same images (``new_objects``: detection F1 at IoU 0.5, PQ, AJI; see
:func:`class_object_scores`).

    CINUSEG_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/painted_step.py \\
        --dataset monusac --class Lymphocyte --k 35 --images 3 --sources 3 --seeds 0 1 2 3 4 \\
        --out runs/painted/monusac-lymphocyte.jsonl

Rows are appended to ``--out`` (JSON lines) as each run ends; a run already there is not run
again, so an interrupted benchmark goes on where it stopped. ``--table`` prints the Markdown
table of one or more such files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

RESOURCE = Path(__file__).resolve().parents[1] / "src" / "napari_cinuseg" / "resources" / "base-consep.cinuseg.pt"


def prior_dice(args, prior, scored, measure) -> dict:
    """The prior's Dice on the images a run scores, measured once: kept beside ``--out`` (in
    ``prior-dice.json``, by the prior's id, the data set, split and new class, and the number of
    images), as each run of a queue is its own process."""
    cache = Path(args.out).parent / "prior-dice.json"
    split = f"test-data:{args.test_data}" if args.test_data else args.split
    key = "|".join(map(str, (prior.id, args.dataset, split, args.cls, len(scored.items))))
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        known[key] = measure()
        fresh = json.loads(cache.read_text()) if cache.is_file() else {}  # another run may have added its own
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**fresh, key: known[key]}, indent=1))
        os.replace(tmp, cache)
    return known[key]


def painted_split(dataset: str, split: str, data: str | None = None):
    """The benchmark's sources for ``split``: ``paint`` (where nuclei are painted), ``tune``
    (where every rule and default of a painted step is chosen) or ``test`` (the tables; nothing
    is chosen on it), whole sources on one side only.

    MoNuSAC (12 slides, none seen by the bundled model): datasets.splits.split_three, seed 0,
    4 slides each, every class in each. CoNSeP: the bundled model trained on 22 of its 27
    source images and chose its training seed on the other 5 (benchmarks/nuclei_objects.py's
    split); no source is untouched by it. Test is those 5 (the painted step's rules never looked
    at them; the prior's seed was chosen there on Epithelial and Spindle-shaped), tune 5 of the
    22 (balanced over the classes), paint the other 17.
    """
    from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, read_monusac_images
    from napari_cinuseg.datasets.splits import balanced_sources, split_by_source, split_three

    root = data_dir(data)
    if dataset == "monusac":
        parts = split_three(read_monusac_images(root / "monusac"), seed=0)
    else:
        prior_train, prior_val = split_by_source(read_consep_patches(root / "consep"), 0.2, 0)
        tune = set(balanced_sources(prior_train, 5, 5 / len(prior_train.sources), 0))
        paint = prior_train.subset([s for s in prior_train.sources if s not in tune])
        parts = (paint, prior_train.subset(sorted(tune)), prior_val)
    return dict(zip(("paint", "tune", "test"), parts))[split]


def same_pixels(data, class_name: str):
    """``data`` with ``class_name``'s pixels unlabelled: the old classes of a prior and of its
    step are scored on the same pixels (the prior cannot name the new class, so its pixels are
    left out for both)."""
    from dataclasses import replace

    from napari_cinuseg.datasets.labelled import IGNORE, LabelledSet

    cid = data.class_id(class_name)
    items = [replace(it, labels=np.where(it.labels == cid, IGNORE, it.labels).astype(np.uint8)) for it in data.items]
    return LabelledSet(data.class_names, items, data.pixel_size)


def prior_objects(prior):
    """An image's nucleus objects as the prior finds them (Segment image's instances: watershed,
    objects of at least 3 µm² at the model's 0.25 µm per pixel): what a click takes."""
    from napari_cinuseg.inference.instances import min_area_pixels, split_nuclei

    min_px, _ = min_area_pixels(3.0, prior.pixel_size)

    def objects(item):
        return split_nuclei(prior.predict(item.image), min_area_px=min_px, min_distance_px=6)[0]

    return objects


def true_class_objects(data, class_name: str, instances: dict | None = None) -> dict[str, np.ndarray]:
    """Per image of ``data``, its true nuclei of ``class_name`` as an instance map, every other
    nucleus background. The nuclei are ``instances[name]`` (CoNSeP's instance maps) or, without
    them, the connected regions of each class of the class map (MoNuSAC: touching nuclei of a
    class merge); each is of the class most of its pixels carry. A ValueError where the images
    hold no nucleus of the class."""
    from napari_cinuseg.analysis.objects import class_objects, majority_classes
    from napari_cinuseg.benchmark.painting import nucleus_instances

    cid = data.class_id(class_name)
    out = {}
    for item in data.items:
        inst = np.asarray(instances[item.name] if instances is not None else nucleus_instances(item))
        if inst.shape != item.labels.shape:
            raise ValueError(f"{item.name}: its instance map is {inst.shape} but its class map {item.labels.shape}")
        out[item.name] = class_objects(inst, majority_classes(inst, item.labels), cid)
    if not any(m.any() for m in out.values()):
        raise ValueError(
            f"no true {class_name} nucleus in the {len(data.items)} images scored "
            f"(sources {', '.join(data.sources)}): the new class's objects cannot be scored there"
        )
    return out


def model_objects(model, device: str = "cpu"):
    """An image's nucleus objects as the product finds them: the image predicted whole, as
    ``evaluate`` scores it (``predict_maps``: the class map and, for a model with a separation
    head, its learned distance), split by :func:`instance_method`'s rule with ``nuclei_of``'s
    defaults (objects of at least 3 µm², watershed markers 1.5 µm apart) at the model's pixel
    size. Gives (instance map, class of each id in the model's channels)."""
    from napari_cinuseg.inference.instances import instance_method, nuclei_of

    method = instance_method(model.network.has_separation)

    def objects(item):
        cm, sep = model.predict_maps(item.image, device)
        nuclei = nuclei_of(cm, pixel_size_um=model.pixel_size, method=method, separation=sep)
        return nuclei.labels, nuclei.classes

    objects.method = method
    return objects


def class_object_scores(data, truths: dict, objects, channel: int) -> dict:
    """The predicted objects of class ``channel`` (``objects(item)``: instance map and classes,
    as :func:`model_objects`) against the true ones (``truths``, :func:`true_class_objects`),
    each side keeping only the class's objects: detection F1 at IoU 0.5, PQ, SQ and AJI
    (``analysis.objects``), the mean over the images where either side holds an object of the
    class (an image with neither says nothing of them), and pooled over those images; the
    matches, misses and false objects summed."""
    from napari_cinuseg.analysis.objects import ObjectScores, class_objects

    scores = ObjectScores()
    for item in data.items:
        truth = truths[item.name]
        labels, classes = objects(item)
        pred = class_objects(labels, classes, channel)
        if truth.any() or pred.any():
            scores.update(truth, pred)
    s = scores.summary()
    keys = ("f1", "pq", "sq", "aji", "f1_pooled", "pq_pooled", "aji_pooled", "tp", "fp", "fn", "true", "pred")
    return {
        **{k: s.get(k) for k in keys},
        "images": s.get("images", 0),
        "images_without": len(data.items) - s.get("images", 0),
    }


def corrections(args) -> dict[str, int]:
    """--corrections NAME=N …: how many nuclei of each old class are painted as corrections."""
    out = {}
    for given in args.corrections:
        name, _, count = given.rpartition("=")
        if not name or not count.isdigit():
            raise SystemExit(f"--corrections {given!r}: give an old class and a count, e.g. Spindle-shaped=10")
        out[name] = int(count)
    return out


def run_one(args, seed: int) -> dict:
    from napari_cinuseg import drain, load_model, train_step
    from napari_cinuseg.analysis.evaluation import evaluate
    from napari_cinuseg.annotations import painted_corrections
    from napari_cinuseg.benchmark.painting import painted_nuclei, simulate_painting
    from napari_cinuseg.datasets.labelled import data_dir
    from napari_cinuseg.runtime.events import IterationSkipped
    from napari_cinuseg.training.settings import parse_changes, preset

    instances = data_dir(args.data) / "consep" / "train" / "instances" if args.dataset == "consep" else None
    paint = painted_split(args.dataset, "paint", args.data)
    if args.test_data:
        from napari_cinuseg.datasets.layouts import read_dataset

        test = read_dataset(args.dataset, args.test_data)
    else:
        test = painted_split(args.dataset, args.split, args.data)
    truths = None
    if args.objects:  # the true objects first: a split without the class fails before the step
        from napari_cinuseg.datasets.labelled import read_consep_instances

        root = args.test_data or data_dir(args.data) / "consep"
        names = [it.name for it in test.items]
        truths = true_class_objects(
            test, args.cls, read_consep_instances(root, names) if args.dataset == "consep" else None
        )
    prior = load_model(args.prior)
    painting = simulate_painting(
        paint,
        args.cls,
        args.k,
        images=args.images,
        sources=args.sources,
        seed=seed,
        instances_dir=instances,
        margin=None if args.context == "whole" else int(args.context),
        objects=prior_objects(prior) if args.mode == "clicks" else None,
        corrections=corrections(args),
    )
    # the old classes painted as corrections, as the panel passes them (those some pair paints)
    pairs, fixed = painted_corrections(painting.pairs, list(corrections(args)))
    changes = parse_changes(args.set)
    panel = dict(iterations=args.iterations, crop_size=128, seed=seed, device="cpu")  # the panel's defaults
    settings = preset(args.preset, **{**panel, **changes})
    settings = settings.for_network(prior.arch)
    skipped: list[str] = []
    t0 = time.perf_counter()
    error = None
    model = None
    try:
        model = drain(
            train_step(prior, pairs, [args.cls, *fixed], settings, method=args.method),
            lambda ev: skipped.append(ev.message) if isinstance(ev, IterationSkipped) else None,
        )
    except FloatingPointError as exc:
        error = str(exc)
    seconds = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old_test = same_pixels(test, args.cls)
        before = prior_dice(args, prior, old_test, lambda: evaluate(prior, old_test, "cpu"))
        after = evaluate(model, old_test, "cpu") if model is not None else {}
        new = evaluate(model, test, "cpu").get(args.cls) if model is not None else None
        objects = None
        if truths is not None and model is not None:
            t1 = time.perf_counter()
            find = model_objects(model)
            objects = class_object_scores(test, truths, find, model.channel_of(args.cls))
            objects.update(instances=find.method, seconds=round(time.perf_counter() - t1, 1))
    record = model.steps[-1].results if model is not None else {}
    curve = record.get("loss_curve", {})
    finite = error is None and all(math.isfinite(v) for v in curve.get("loss", []) if v is not None)
    return {
        "dataset": args.dataset,
        "class": args.cls,
        "method": args.method,
        "prior": prior.id[:8],
        "split": "test-data" if args.test_data else args.split,
        "mode": args.mode,
        "context": args.context,
        "corrections": corrections(args),  # old classes' nuclei to paint as corrections
        "corrected": painting.corrected or {},  # and how many were painted
        "context_share": painting.context_share,  # each class's share of its pixels on the painted images in context
        "k": args.k,
        "painted_nuclei": painting.nuclei,
        "painted_regions": painted_nuclei(painting.pairs),  # touching nuclei make one region
        "clicked": painting.clicked,
        "by_hand": painting.by_hand,
        "images": painting.images,
        "sources": painting.sources,
        "seed": seed,
        "settings": changes,
        "iterations": args.iterations,
        "new_dice": new,
        "new_objects": objects,  # with --objects: the new class's nuclei as objects (class_object_scores)
        "old": {c: {"prior": before[c], "after": after.get(c)} for c in prior.class_names if c in before},
        "old_scored_on": "the same pixels for prior and step: the new class's left out",
        "forgetting": record.get("forgetting"),
        "finite": finite,
        "skipped": skipped,
        "error": error,
        "seconds": round(seconds, 1),
        "test_images": len(test.items),
        "test_sources": test.sources,
    }


def table(paths) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    out = [
        "| data set | class | split | painting | method (changes) | K | iterations | seed | new-class Dice "
        "| old classes: Dice after / prior (ratio) | finite | skipped | seconds |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        old = "; ".join(
            f"{c} {v['after']:.1f} / {v['prior']:.1f} ({v['after'] / v['prior']:.2f})"
            if v["after"] is not None and v["prior"]
            else f"{c} — / {v['prior']:.1f}"
            for c, v in r["old"].items()
        )
        new = f"{r['new_dice']:.1f}" if r["new_dice"] is not None else "—"
        tag = r["method"] + (
            "" if not r.get("settings") else " " + ",".join(f"{k}={v}" for k, v in r["settings"].items())
        )
        out.append(
            f"| {r['dataset']} | {r['class']} | {r.get('split', 'old split')} | {_painting(r)} "
            f"| {tag} | {r['painted_nuclei']} | {r['iterations']} | {r['seed']} "
            f"| {new} | {old} | "
            f"{'yes' if r['finite'] else 'NO'} | {len(r['skipped'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(out)


def summary(paths) -> str:
    """Per data set, class, painting and settings: the new class's Dice over the seeds (mean ± sd,
    range), the runs whose every old class kept at least 0.9 × the prior's Dice on the same
    pixels, the finite runs and the seconds."""
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    groups: dict = {}
    for r in rows:
        tag = ",".join(f"{k}={v}" for k, v in r.get("settings", {}).items())
        how = r.get("mode", "strokes") + "".join(f", {n} {c} corrected" for c, n in r.get("corrections", {}).items())
        how += "" if r.get("context", "64") == "64" else f", context {r['context']}"
        groups.setdefault((r["dataset"], r["class"], r.get("split", "old"), how, tag), []).append(r)
    out = [
        "| data set, class | split | painting | changes | seeds | new-class Dice, mean ± sd (range) "
        "| old classes ≥ 0.9 × the prior | finite | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, cls, split, how, tag), rs in groups.items():
        new = np.array([r["new_dice"] if r["new_dice"] is not None else np.nan for r in rs], float)
        kept = sum(
            all(v["after"] is not None and v["prior"] and v["after"] >= 0.9 * v["prior"] for v in r["old"].values())
            for r in rs
        )
        secs = [r["seconds"] for r in rs]
        out.append(
            f"| {ds}, {cls} | {split} | {how} | {tag or 'defaults'} | {','.join(str(r['seed']) for r in rs)} "
            f"| {np.nanmean(new):.1f} ± {np.nanstd(new):.1f} ({np.nanmin(new):.1f}-{np.nanmax(new):.1f}) "
            f"| {kept} of {len(rs)} | {sum(r['finite'] for r in rs)} of {len(rs)} | {min(secs):.0f}-{max(secs):.0f} |"
        )
    return "\n".join(out)


def _painting(r: dict) -> str:
    """How a row's nuclei were painted, and its context."""
    if r.get("mode", "strokes") == "clicks":
        how = f"clicks ({r['clicked']} took an object, {r['by_hand']} by hand)"
    else:
        how = "strokes"
    how += "".join(f", {n} {c} corrected" for c, n in r.get("corrected", {}).items())
    return how + ("" if r.get("context", "64") == "64" else f", context {r['context']}")


def _key(r: dict) -> tuple:
    """What makes a run: a row with the same key is not run again."""
    return (
        r.get("prior"),
        r["dataset"],
        r["class"],
        r["method"],
        r["k"],
        r["seed"],
        r.get("split", "old"),
        r.get("mode", "strokes"),
        r.get("context", "64"),
        json.dumps(r.get("settings", {}), sort_keys=True),
        json.dumps(r.get("corrections", {}), sort_keys=True),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("consep", "monusac"), default="consep")
    ap.add_argument("--class", dest="cls", default="Other", help="the new class to paint")
    ap.add_argument("--k", type=int, default=60, help="nuclei to paint (e.g. 10, 30, 100)")
    ap.add_argument("--images", type=int, default=30, help="images to paint on (M)")
    ap.add_argument("--sources", type=int, default=2, help="training sources the images come from")
    ap.add_argument("--method", default="cinuseg")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--iterations", type=int, default=300, help="the panel's default budget")
    ap.add_argument("--prior", default=str(RESOURCE), help="the prior model (default: the bundled one)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE setting changes, repeatable")
    ap.add_argument(
        "--split",
        choices=("tune", "test"),
        default="tune",
        help="score on the tune sources (where rules are chosen) or the test sources (the tables)",
    )
    ap.add_argument("--mode", choices=("strokes", "clicks"), default="strokes", help="how the nuclei are painted")
    ap.add_argument(
        "--context", default="whole", help="the training pairs' context: whole (the panel's) or a margin in pixels"
    )
    ap.add_argument(
        "--corrections",
        nargs="+",
        default=[],
        help="old classes' nuclei painted as corrections on the same images, e.g. Spindle-shaped=10",
    )
    ap.add_argument(
        "--objects",
        action="store_true",
        help="score the new class's nuclei as objects too (F1 at IoU 0.5, PQ, AJI against its true nuclei)",
    )
    ap.add_argument("--test-data", help="score on this folder (the data set's layout) instead of the held-out sources")
    ap.add_argument("--data", help="data root (default $CINUSEG_DATA, else ../shared/data)")
    ap.add_argument("--out", help="JSON lines file the rows are appended to")
    ap.add_argument("--table", nargs="+", help="print the Markdown table of these JSON lines files and stop")
    ap.add_argument("--summary", nargs="+", help="print the summary over seeds of these JSON lines files and stop")
    args = ap.parse_args(argv)
    if args.table or args.summary:
        print(table(args.table) if args.table else summary(args.summary))
        return 0
    if not args.out:
        ap.error("--out is needed to run")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.context != "whole" and not args.context.isdigit():
        ap.error(f"--context {args.context!r}: give whole or a margin in pixels, e.g. 64")
    done = set()  # runs there; with --objects only those that scored the new class's objects
    if out.exists():
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        done = {_key(r) for r in rows if r.get("new_objects") or not args.objects}
    from napari_cinuseg import load_model
    from napari_cinuseg.training.settings import parse_changes

    prior = load_model(args.prior).id[:8]

    split = "test-data" if args.test_data else args.split
    for seed in args.seeds:
        want = dict(
            prior=prior, dataset=args.dataset, k=args.k, seed=seed, split=split, mode=args.mode, context=args.context
        )
        made = {"class": args.cls, "method": args.method, "settings": parse_changes(args.set)}
        if _key({**want, **made, "corrections": corrections(args)}) in done:
            continue
        row = run_one(args, seed)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            json.dumps(
                {k: row[k] for k in ("dataset", "class", "seed", "new_dice", "new_objects", "old", "finite", "seconds")}
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
