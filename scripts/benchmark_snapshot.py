"""Copy a running benchmark's results.json into docs with only the methods whose every step
finished and was evaluated (their summary computed and scored as `cinuseg benchmark` does now,
``benchmark.report.rescored``), so no figure of an unfinished step reaches the docs.

    python3 scripts/benchmark_snapshot.py runs/monusac-1-1-s0/results.json \
        docs/benchmarks/monusac-1-1-balanced-seed0.json [--curves docs/benchmarks/]

One run's methods may be split over several output folders that share its base model (a copy of
the folder, run with other `--methods` on another core). Give each results.json with `--with`:
they are merged into one, after checking that data, split and settings are the same, and each
method keeps the figures of the folder where it finished.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_cinuseg.benchmark.report import rescored, seen_mean, summarize, write_curves, write_training_curves
from napari_cinuseg.datasets.protocols import Protocol
from napari_cinuseg.io.atomic import atomic_json


def _curve(evals: dict, protocol: str, method: str, last: int, steps: Protocol) -> list[float]:
    """The benchmark's per-step curve of a method: the mean Dice over the classes seen so far, from
    the base (step 0) to the last step, for a method that finished after the run last wrote it."""
    if method == "offline":  # one model of every class: its Mean, drawn flat across the steps
        return [summarize(steps, evals[f"{protocol}/offline/step0"]["dice"])["mean"]] * (last + 1)
    keys = [f"{protocol}/base/step0"] + [f"{protocol}/{method}/step{t}" for t in range(1, last + 1)]
    return [seen_mean(evals[k]["dice"]) for k in keys]


def snapshot(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k not in ("evaluations", "train_seconds", "curves", "summary")}
    out.update(evaluations={}, train_seconds={}, curves={}, summary={})
    for protocol, per_method in results.get("summary", {}).items():
        evals = {k: v for k, v in results["evaluations"].items() if k.startswith(protocol + "/")}
        last = max(int(k.rsplit("step", 1)[1]) for k in evals)  # the protocol's last step
        steps = Protocol(protocol, tuple(tuple(s) for s in results["config"]["protocols"][protocol]))
        done = {k.split("/")[1] for k in evals if k.endswith(f"/step{last}")} | ({"offline"} & set(per_method))
        for method in sorted(done):
            if method not in per_method:  # finished after the run last wrote its summary
                dice = evals[f"{protocol}/{method}/step{last}"]["dice"]
                per_method = {**per_method, method: {**summarize(steps, dice), "per_class": dice}}
            out["summary"].setdefault(protocol, {})[method] = per_method[method]
        for k, v in evals.items():
            if k.split("/")[1] in done | {"base"}:
                out["evaluations"][k] = v
        written = results.get("curves", {}).get(protocol, {})
        out["curves"][protocol] = {m: written.get(m) or _curve(evals, protocol, m, last, steps) for m in sorted(done)}
    finished = set().union(*(out["summary"][p] for p in out["summary"])) | {"base"}
    out["train_seconds"] = {
        k: v for k, v in results.get("train_seconds", {}).items()
        if Path(k).parent.name in finished or Path(k).name.startswith(("base", "offline"))
    }
    return out


SAME_RUN = ("dataset", "protocols", "settings", "test", "test_images", "test_sources", "train_sources")


def merge(first: dict, *others: dict) -> dict:
    """One results dictionary from parts of the same run: the first part's, plus each method that
    finished in another part and not in the first (with its evaluations, times and curves)."""
    merged = snapshot(first)
    merged["config"]["commands"] = [first["config"].get("command", "")]
    for other in others:
        for key in SAME_RUN:
            if other["config"].get(key) != first["config"].get(key):
                raise SystemExit(f"cannot merge: the parts differ in {key!r}; they are not one run")
        part = snapshot(other)
        for key, value in part["evaluations"].items():  # the same base model: the same base figures
            if key.split("/")[1] == "base" and key in merged["evaluations"] and merged["evaluations"][key] != value:
                raise SystemExit(f"cannot merge: the parts' base models differ ({key}); they are not one run")
        merged["config"]["commands"].append(other["config"].get("command", ""))
        for protocol, methods in part["summary"].items():
            have = merged["summary"].setdefault(protocol, {})
            new = {m for m in methods if m not in have}
            for m in sorted(new):
                have[m] = methods[m]
                merged["curves"].setdefault(protocol, {})[m] = part["curves"].get(protocol, {}).get(m)
            for k, v in part["evaluations"].items():
                if k.startswith(protocol + "/") and k.split("/")[1] in new:
                    merged["evaluations"][k] = v
            for k, v in part["train_seconds"].items():
                if Path(k).parent.name in new:
                    merged["train_seconds"][k] = v
        merged["config"]["methods"] = list(dict.fromkeys([*merged["config"]["methods"], *other["config"]["methods"]]))
    return merged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--with", dest="parts", type=Path, action="append", default=[],
                    help="results.json of another part of the same run (a copy of its folder "
                         "that ran other methods); may repeat")
    ap.add_argument("--curves", type=Path, help="also draw the per-step curves, as <out stem>.png in this folder, and the base and offline models' curves while they trained (a run with --curve-every) as <out stem>-training.png")
    args = ap.parse_args(argv)
    parts = [rescored(json.loads(p.read_text())) for p in args.parts]
    first = rescored(json.loads(args.results.read_text()))
    snap = merge(first, *parts) if parts else snapshot(first)
    atomic_json(args.out, snap)
    if args.curves:
        write_curves(snap, args.curves)
        for protocol in snap["curves"]:
            (args.curves / f"curve-{protocol}.png").replace(args.curves / f"{args.out.stem}.png")
        write_training_curves(snap, args.curves)  # the base and offline models' Dice while they trained
        if (args.curves / "training-curve.png").exists():
            (args.curves / "training-curve.png").replace(args.curves / f"{args.out.stem}-training.png")
    for p, methods in snap["summary"].items():
        print(p, ", ".join(f"{m} {s['mean']:.2f}" for m, s in methods.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
