"""The benchmark's tables on the test split (``cinuseg benchmark --split test``), which no choice
has looked at: three seeds × {offline, CiNuSeg with its defaults, CiNuSeg as the paper writes it
(σ = 0.7, eq. 5 over every pixel, softmax scores), MiB, NeST, EWF, CoNuSeg, fine-tuning} × {CoNSeP
2-1, CoNSeP 1-1, MoNuSAC 1-1}, then each Mean with a paired bootstrap over the test images.

    nice -n 10 python3 benchmarks/tables_on_test.py run --out runs/test-tables      # resumable
    python3 benchmarks/tables_on_test.py run --out runs/test-tables --dry-run       # the commands only
    python3 benchmarks/tables_on_test.py report --out runs/test-tables              # tables + intervals

``run`` runs one ``cinuseg benchmark`` per data set and seed (every method but the paper's
CiNuSeg, the CoNSeP protocols together: they share the offline model), then the paper's CiNuSeg
in a folder of its own from a copy of that run's base models (the same bases as every other
method). Each is resumable: run it again after an interruption. The settings are the ones
frozen for the test tables: the ``cpu`` preset, ResNet-18 from scratch, 2,400 iterations of
base and offline, every method's defaults as they are in the code that runs it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from napari_cinuseg.benchmark.bootstrap import final_evaluation, image_counts, paired_bootstrap
from napari_cinuseg.benchmark.report import across_seeds, write_seed_table

PROTOCOLS = {"consep": ("2-1", "1-1"), "monusac": ("1-1",)}
METHODS = ("offline", "cinuseg", "mib", "nest", "ewf", "conuseg", "finetune")
#: the paper's CiNuSeg: σ = 0.7 (eqs. 15-16), eq. 5 over every pixel, softmax scores (eqs. 4-5)
PAPER_LITERAL = ("--sigma", "0.7", "--pkd-on-new", "--pkd-scores", "softmax")
PAPER_NAME = "cinuseg-paper"
DATASET_NAMES = {"consep": "CoNSeP", "monusac": "MoNuSAC"}
COMMON = (
    "--split", "test", "--preset", "cpu", "--encoder", "resnet18", "--encoder-weights", "random",
    "--base-iterations", "2400",
)  # fmt: skip


def folder(out: Path, dataset: str, seed: int, paper: bool = False) -> Path:
    return out / f"{dataset}-{'paper-' if paper else ''}seed{seed}"


def commands(out: Path, seeds: list[int], data: Path | None = None) -> list[tuple[list[str], Path | None]]:
    """(``cinuseg benchmark`` arguments, the run whose bases it starts from or None) of every
    run, in the order they run."""
    runs = []
    for dataset, protocols in PROTOCOLS.items():
        for seed in seeds:
            common = ["--dataset", dataset, "--protocol", ",".join(protocols), *COMMON, "--seed", str(seed)]
            if data is not None:
                common += ["--data", str(data / dataset)]
            main, paper = folder(out, dataset, seed), folder(out, dataset, seed, paper=True)
            runs.append(([*common, "--methods", ",".join(METHODS), "--out", str(main)], None))
            runs.append(([*common, "--methods", "cinuseg", *PAPER_LITERAL, "--out", str(paper)], main))
    return runs


def _copy_bases(main: Path, paper: Path) -> None:
    """The main run's base models into the paper run's folder, so that both start from them."""
    for base in main.glob("models/seed*/*/base.cinuseg.pt"):
        target = paper / base.relative_to(main)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base, target)


def run(args) -> None:
    for argv, bases in commands(Path(args.out), args.seeds, args.data):
        line = [sys.executable, "-m", "napari_cinuseg", "benchmark", *argv]
        print(" ".join(line), flush=True)
        if args.dry_run:
            continue
        if bases is not None:
            _copy_bases(bases, Path(argv[argv.index("--out") + 1]))
        subprocess.run(line, check=True)


def _finished(run_: dict, protocols: tuple[str, ...], methods: tuple[str, ...]) -> bool:
    """Whether a run has scored every method's last step of every protocol, with per-image counts."""
    for protocol in protocols:
        for method in methods:
            try:
                final_evaluation(run_, protocol, method)
            except (KeyError, ValueError):
                return False
    return True


def _runs(
    out: Path, dataset: str, protocol: str, seeds: list[int], finished_only: bool
) -> tuple[list[int], list, list]:
    """(seeds, main runs, paper runs) of one protocol of a data set; ``finished_only``: only the
    seeds whose two runs have scored every method of it (a missing or unfinished one is an error
    otherwise)."""
    kept, mains, papers = [], [], []
    for s in seeds:
        files = [folder(out, dataset, s, paper) / "results.json" for paper in (False, True)]
        if finished_only and not all(f.exists() for f in files):
            continue
        main_, paper_ = (json.loads(f.read_text()) for f in files)
        for run_ in (main_, paper_):
            if (run_["config"].get("split") or {}).get("name") != "test":
                raise SystemExit(f"a run of {dataset} was not scored on the test split: not a test table")
        if finished_only and not (
            _finished(main_, (protocol,), METHODS) and _finished(paper_, (protocol,), ("cinuseg",))
        ):
            continue
        kept.append(s)
        mains.append(main_)
        papers.append(paper_)
    return kept, mains, papers


def _class_dice(runs: list[dict], protocol: str, method: str, classes: list[str]) -> dict[str, float]:
    """Each class's Dice after the protocol's last step, the mean over the runs (seeds)."""
    values = {c: [final_evaluation(r, protocol, method)["dice"].get(c, float("nan")) for r in runs] for c in classes}
    return {c: float(np.nanmean(v)) if any(x == x for x in v) else float("nan") for c, v in values.items()}


def _budget(run_: dict) -> str:
    """The budgets and preset a run trained with, in words."""
    cfg, st = run_["config"], run_["config"]["settings"]
    steps = (
        f"{st['iterations']} iterations"
        if st.get("iterations")
        else (f"{st['epochs']} epochs of the step's images, at least {st['min_iterations']} iterations")
    )
    return (
        f"base and offline {cfg.get('base_iterations')} iterations; each step {steps}; {st['encoder']} from "
        f"{'scratch' if not st.get('encoder_weights') else st['encoder_weights']}, crops {st['crop_size']}, batch "
        f"{st['batch_size']}, lr {st['lr_base']} / {st['lr_step']}, gradient norm clipped to {st['grad_clip']}"
    )


def protocol_table(key: str, rows: dict, dice: dict, classes: list[str], pixels: dict, head: list[str]) -> list[str]:
    """The lines of one protocol's table: every method's Mean with its interval, its Dice per
    class, its ratio to offline and its difference from CiNuSeg's defaults, then what the data
    can and cannot tell apart."""
    offline = rows.get("offline", {}).get("mean")
    lines = [f"### {key}", "", *head, ""]
    lines.append("Classes scored (test pixels): " + ", ".join(f"{c} {pixels.get(c, 0):,}" for c in classes) + ".")
    columns = ["Method", "Mean [95 % CI]", *classes, "/ offline", "− CiNuSeg [95 % CI]", "draws above CiNuSeg"]
    lines += ["", "| " + " | ".join(columns) + " |"]
    lines.append("|---|---:|" + "---:|" * len(classes) + "---:|---:|---:|")
    for m, r in sorted(rows.items(), key=lambda kv: -kv[1]["mean"]):
        diff = (
            f"{r['difference']:+.2f} [{r['difference_low']:+.2f}, {r['difference_high']:+.2f}]"
            if "difference" in r
            else "–"
        )
        above = f"{r['above_reference']:.0%}" if "above_reference" in r else "–"
        ratio = f"{r['mean'] / offline:.3f}" if offline else "–"
        per_class = " | ".join(f"{dice[m][c]:.2f}" for c in classes)
        name = {"cinuseg": "**CiNuSeg (defaults)**", PAPER_NAME: "CiNuSeg (the paper's settings)"}.get(m, m)
        mean = f"{r['mean']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"
        lines.append(f"| {name} | {mean} | {per_class} | {ratio} | {diff} | {above} |")
    lines += ["", *verdict(rows)]
    return lines


def verdict(rows: dict) -> list[str]:
    """What one protocol's table says of CiNuSeg (defaults): against every incremental method
    and against 0.9 × offline, and which differences the bootstrap tells apart (the interval of
    the difference leaves out 0)."""
    ref = rows["cinuseg"]
    others = {m: r for m, r in rows.items() if m not in ("cinuseg", "offline")}
    above = [m for m, r in others.items() if r["difference"] > 0]
    apart = [m for m, r in rows.items() if "difference" in r and (r["difference_low"] > 0 or r["difference_high"] < 0)]
    close = [m for m, r in others.items() if m not in apart]
    beaten_by = ", ".join(
        f"{m} {others[m]['difference']:+.2f} ({'told apart' if m in apart else 'not told apart'})" for m in above
    )
    out = [
        f"- CiNuSeg (defaults) ≥ every incremental method: **{'no' if above else 'yes'}**"
        + (f"; above it: {beaten_by}." if above else ".")
    ]
    if "offline" in rows:
        ratio = ref["mean"] / rows["offline"]["mean"]
        out.append(f"- CiNuSeg (defaults) / offline = {ratio:.3f}: {'≥' if ratio >= 0.9 else 'below'} 0.9.")
    out.append(
        "- Told apart by the test images (the difference's interval leaves out 0): "
        + (", ".join(f"{m} ({rows[m]['difference']:+.2f})" for m in apart) or "none")
        + "; not told apart: "
        + (", ".join(close) or "none")
        + "."
    )
    return out


def report(args) -> dict:
    """Per protocol: the Means over the seeds with their bootstrap intervals, the Dice per class,
    each method's ratio to offline and difference from CiNuSeg's defaults, and what the data can
    tell apart; ``report.json`` and ``report.md`` in ``--out``. ``--finished``: only the seeds
    whose runs have finished, each protocol on its own (an interim report, which says so)."""
    out = Path(args.out)
    result: dict = {"seeds": args.seeds, "resamples": args.resamples, "protocols": {}}
    lines = ["# Test-split tables", ""]
    for dataset, protocols in PROTOCOLS.items():
        for protocol in protocols:
            seeds, mains, papers = _runs(out, dataset, protocol, args.seeds, args.finished)
            key = f"{DATASET_NAMES[dataset]} {protocol}"
            if not seeds:
                lines += [f"### {key}", "", "No seed has finished yet.", ""]
                continue
            if protocol == protocols[-1] and seeds == args.seeds:
                write_seed_table(across_seeds(mains), out / f"{dataset}-seeds.md")
            split = mains[0]["config"]["split"]
            counts, dice, images, classes = {}, {}, None, None
            for name, runs, method in [(m, mains, m) for m in METHODS] + [(PAPER_NAME, papers, "cinuseg")]:
                names, classes, counts[name] = image_counts(runs, protocol, method)
                if images not in (None, names):
                    raise SystemExit(f"{name} was scored on other test images than the other methods")
                images = names
                dice[name] = _class_dice(runs, protocol, method, classes)
            rows = paired_bootstrap(counts, reference="cinuseg", resamples=args.resamples)
            order = " → ".join("+".join(s) for s in mains[0]["config"]["protocols"][protocol])
            interim = "" if seeds == args.seeds else f" (interim: {len(seeds)} of the {len(args.seeds)} seeds)"
            head = [
                f"Split: test ({len(images)} images of {len(split['sources']['test'])} sources, seed "
                f"{split['seed']}), which no choice has looked at. Seeds {', '.join(map(str, seeds))}{interim}, each "
                f"with its own base. Class order: {order}.",
                f"Budgets: {_budget(mains[0])}. Intervals: 95 %, paired bootstrap over the test images "
                f"({args.resamples} draws, the same for every method and seed).",
            ]
            result["protocols"][key] = {"seeds": seeds, "test_images": images, "methods": rows, "dice": dice}
            lines += protocol_table(key, rows, dice, classes, split["class_pixels"]["test"], head) + [""]
    (out / "report.json").write_text(json.dumps(result, indent=1))
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("run", "report"))
    ap.add_argument("--out", required=True, help="the folder of every run (one sub-folder each)")
    ap.add_argument("--seeds", type=lambda t: [int(s) for s in t.split(",")], default=[0, 1, 2])
    ap.add_argument("--data", type=Path, help="the folder holding consep/ and monusac/ (default: $CINUSEG_DATA)")
    ap.add_argument("--dry-run", action="store_true", help="run: print the commands, run nothing")
    ap.add_argument("--resamples", type=int, default=2000, help="report: bootstrap draws of the test images")
    ap.add_argument(
        "--finished",
        action="store_true",
        help="report: per protocol, only the seeds whose runs have finished it (an interim report)",
    )
    args = ap.parse_args(argv)
    return run(args) if args.what == "run" else report(args)


if __name__ == "__main__":
    main()
