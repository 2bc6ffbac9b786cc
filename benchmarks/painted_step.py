"""Benchmark of the painted step, the plugin's core use: K painted nuclei of a new class, one step.

Painting is simulated from the data set's instance (CoNSeP) or class labels (MoNuSAC: connected
regions): K whole nuclei of the new class on M images of a few training sources, plus background
dabs away from every nucleus (benchmark/painting.py); nothing else is painted. One step is
trained from a prior (the bundled model by default) with the panel's defaults (method cinuseg,
the cpu preset, 300 iterations, 128-px crops) and scored with ``analysis.evaluation.evaluate``
on the other sources (split by source), or on ``--test-data``. Each row records the new class's
Dice, each old class's Dice against the prior's, the forgetting report, whether every loss was
finite, the skipped iterations and the seconds.

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
import time
import warnings
from pathlib import Path

RESOURCE = Path(__file__).resolve().parents[1] / "src" / "napari_cinuseg" / "resources" / "base-consep.cinuseg.pt"


_PRIOR_DICE: dict = {}  # the prior's Dice on the test set, measured once per run of the script


def run_one(args, seed: int) -> dict:
    from napari_cinuseg import drain, load_model, train_step
    from napari_cinuseg.analysis.evaluation import evaluate
    from napari_cinuseg.benchmark.painting import painted_nuclei, simulate_painting
    from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, read_monusac_images, split_by_source
    from napari_cinuseg.runtime.events import IterationSkipped
    from napari_cinuseg.training.settings import parse_changes, preset

    root = data_dir(args.data)
    if args.dataset == "consep":
        data, instances = read_consep_patches(root / "consep"), root / "consep" / "train" / "instances"
    else:
        data, instances = read_monusac_images(root / "monusac"), None
    train, test = split_by_source(data, args.val_fraction, seed=args.split_seed)
    if args.test_data:
        from napari_cinuseg.datasets.layouts import read_dataset

        test = read_dataset(args.dataset, args.test_data)
    painting = simulate_painting(
        train, args.cls, args.k, images=args.images, sources=args.sources, seed=seed, instances_dir=instances
    )
    prior = load_model(args.prior)
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
            train_step(prior, painting.pairs, [args.cls], settings, method=args.method),
            lambda ev: skipped.append(ev.message) if isinstance(ev, IterationSkipped) else None,
        )
    except FloatingPointError as exc:
        error = str(exc)
    seconds = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "dice" not in _PRIOR_DICE:
            _PRIOR_DICE["dice"] = evaluate(prior, test, "cpu")
        before = _PRIOR_DICE["dice"]
        after = evaluate(model, test, "cpu") if model is not None else {}
    record = model.steps[-1].results if model is not None else {}
    curve = record.get("loss_curve", {})
    finite = error is None and all(math.isfinite(v) for v in curve.get("loss", []) if v is not None)
    return {
        "dataset": args.dataset,
        "class": args.cls,
        "method": args.method,
        "prior": prior.id[:8],
        "k": args.k,
        "painted_nuclei": painting.nuclei,
        "painted_regions": painted_nuclei(painting.pairs),  # touching nuclei make one region
        "images": painting.images,
        "sources": painting.sources,
        "seed": seed,
        "settings": changes,
        "iterations": args.iterations,
        "new_dice": after.get(args.cls),
        "old": {c: {"prior": before[c], "after": after.get(c)} for c in prior.class_names if c in before},
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
        "| data set | class | method (changes) | K | iterations | seed | new-class Dice "
        "| old classes: Dice after / prior (ratio) | finite | skipped | seconds |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|---:|",
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
            f"| {r['dataset']} | {r['class']} | {tag} | {r['painted_nuclei']} | {r['iterations']} | {r['seed']} "
            f"| {new} | {old} | "
            f"{'yes' if r['finite'] else 'NO'} | {len(r['skipped'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(out)


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
    ap.add_argument("--val-fraction", type=float, default=0.4, help="share of sources held out for scoring")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--test-data", help="score on this folder (the data set's layout) instead of the held-out sources")
    ap.add_argument("--data", help="data root (default $CINUSEG_DATA, else ../shared/data)")
    ap.add_argument("--out", help="JSON lines file the rows are appended to")
    ap.add_argument("--table", nargs="+", help="print the Markdown table of these JSON lines files and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if not args.out:
        ap.error("--out is needed to run")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add(
                (
                    r["dataset"],
                    r["class"],
                    r["method"],
                    r["k"],
                    r["seed"],
                    json.dumps(r.get("settings", {}), sort_keys=True),
                )
            )
    from napari_cinuseg.training.settings import parse_changes

    changes = json.dumps(parse_changes(args.set), sort_keys=True)
    for seed in args.seeds:
        if (args.dataset, args.cls, args.method, args.k, seed, changes) in done:
            continue
        row = run_one(args, seed)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            json.dumps({k: row[k] for k in ("dataset", "class", "seed", "new_dice", "old", "finite", "seconds")}),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
