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

from napari_cinuseg.benchmark.bootstrap import image_counts, paired_bootstrap
from napari_cinuseg.benchmark.report import across_seeds, write_seed_table

PROTOCOLS = {"consep": ("2-1", "1-1"), "monusac": ("1-1",)}
METHODS = ("offline", "cinuseg", "mib", "nest", "ewf", "conuseg", "finetune")
#: the paper's CiNuSeg: σ = 0.7 (eqs. 15-16), eq. 5 over every pixel, softmax scores (eqs. 4-5)
PAPER_LITERAL = ("--sigma", "0.7", "--pkd-on-new", "--pkd-scores", "softmax")
PAPER_NAME = "cinuseg-paper"
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


def report(args) -> dict:
    """Per protocol: the Means over the seeds with their bootstrap intervals and each method's
    difference from CiNuSeg's defaults; ``report.json`` and ``report.md`` in ``--out``."""
    out = Path(args.out)
    result: dict = {"seeds": args.seeds, "resamples": args.resamples, "protocols": {}}
    lines = ["# Test-split tables", ""]
    for dataset, protocols in PROTOCOLS.items():
        mains = [json.loads((folder(out, dataset, s) / "results.json").read_text()) for s in args.seeds]
        papers = [json.loads((folder(out, dataset, s, True) / "results.json").read_text()) for s in args.seeds]
        for run_ in mains + papers:
            if (run_["config"].get("split") or {}).get("name") != "test":
                raise SystemExit(f"a run of {dataset} was not scored on the test split: not a test table")
        write_seed_table(across_seeds(mains), out / f"{dataset}-seeds.md")
        for protocol in protocols:
            counts, images = {}, None
            for name, runs, method in [(m, mains, m) for m in METHODS] + [(PAPER_NAME, papers, "cinuseg")]:
                names, _, counts[name] = image_counts(runs, protocol, method)
                if images not in (None, names):
                    raise SystemExit(f"{name} was scored on other test images than the other methods")
                images = names
            rows = paired_bootstrap(counts, reference="cinuseg", resamples=args.resamples)
            key = f"{dataset} {protocol}"
            result["protocols"][key] = {"test_images": images, "methods": rows}
            lines += [f"## {key}, seeds {', '.join(map(str, args.seeds))}: {len(images)} test images", ""]
            lines += ["| Method | Mean [95 % CI] | − CiNuSeg [95 % CI] | draws above CiNuSeg |", "|---|---:|---:|---:|"]
            for m, r in sorted(rows.items(), key=lambda kv: -kv[1]["mean"]):
                diff = (
                    f"{r['difference']:+.2f} [{r['difference_low']:+.2f}, {r['difference_high']:+.2f}]"
                    if "difference" in r
                    else "–"
                )
                above = f"{r['above_reference']:.0%}" if "above_reference" in r else "–"
                lines.append(f"| {m} | {r['mean']:.2f} [{r['low']:.2f}, {r['high']:.2f}] | {diff} | {above} |")
            lines.append("")
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
    args = ap.parse_args(argv)
    return run(args) if args.what == "run" else report(args)


if __name__ == "__main__":
    main()
