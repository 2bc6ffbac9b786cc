"""Copy a running benchmark's results.json into docs with only the methods whose every step
finished and was evaluated (their summary computed and scored as `cinuseg benchmark` does now,
``benchmark.report.rescored``), so no figure of an unfinished step reaches the docs.

    python3 scripts/benchmark_snapshot.py runs/monusac-1-1-s0/results.json \
        docs/benchmarks/monusac-1-1-paper-order-seed0.json [--curves docs/benchmarks/]

One run's methods may be split over several output folders that share its base model (a copy of
the folder, run with other `--methods` on another core). Give each results.json with `--with`:
they are merged into one, after checking that data, split, base model (its figures: a base
trained again from the same seed scores the same) and settings are the same
(a method's own settings, such as CiNuSeg's σ, may differ: each part's are kept under
``config.method_settings_by_method``), and each method keeps the figures of the folder where it
finished.

The offline model is one model of every class of the data set, trained with the base model's
settings: the benchmark keeps it under a path that names no protocol, so every protocol of a run
over the same classes shares it. `--offline-from` takes it from another run of the same data,
split, seed and base settings (CoNSeP 2-1's for CoNSeP 1-1, say) instead of training it again,
after checking that it is the same model: same classes, data, split, settings and budget.
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
    written_summary = results.get("summary", {})
    # a protocol's summary is written when a method finishes it: a run stopped earlier has none yet
    for protocol in dict.fromkeys([*written_summary, *(k.split("/")[0] for k in results.get("evaluations", {}))]):
        per_method = written_summary.get(protocol, {})
        evals = {k: v for k, v in results["evaluations"].items() if k.startswith(protocol + "/")}
        steps = Protocol(protocol, tuple(tuple(s) for s in results["config"]["protocols"][protocol]))
        last = len(steps.steps) - 1  # the protocol's last step, whether or not any method reached it
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
    # a run resumed in one folder with other --methods records only its last call's methods
    out["config"]["methods"] = list(
        dict.fromkeys([*results["config"].get("methods", []), *sorted(finished - {"base"})])
    )
    out["train_seconds"] = {
        k: v
        for k, v in results.get("train_seconds", {}).items()
        if Path(k).parent.name in finished or Path(k).name.startswith(("base", "offline"))
    }
    return out


def _figures(evaluation: dict) -> dict:
    """What an evaluation measured, without the model's id: a base trained again from the same seed
    and settings that scores the same to the last digit is the same base (its file has a new id)."""
    return {k: v for k, v in evaluation.items() if k != "model_id"}


SAME_RUN = ("dataset", "protocols", "settings", "test", "test_images", "test_sources", "train_sources")


def merge(first: dict, *others: dict) -> dict:
    """One results dictionary from parts of the same run: the first part's, plus each method that
    finished in another part and not in the first (with its evaluations, times and curves)."""

    def own(run):  # the methods' own settings given to the run (every step records its own too)
        return run["config"].get("settings", {}).get("method_settings") or {}

    def common(run, key):
        value = run["config"].get(key)
        return {k: v for k, v in value.items() if k != "method_settings"} if key == "settings" and value else value

    merged = snapshot(first)
    merged["config"]["commands"] = [first["config"].get("command", "")]
    by_method = {m: own(first) for m in set().union(*merged["summary"].values())}
    for other in others:
        for key in SAME_RUN:
            if common(other, key) != common(first, key):
                raise SystemExit(f"cannot merge: the parts differ in {key!r}; they are not one run")
        part = snapshot(other)
        for key, value in part["evaluations"].items():  # the same base model: the same base figures
            if (
                key.split("/")[1] == "base"
                and key in merged["evaluations"]
                and _figures(merged["evaluations"][key]) != _figures(value)
            ):
                raise SystemExit(f"cannot merge: the parts' base models differ ({key}); they are not one run")
        merged["config"]["commands"].append(other["config"].get("command", ""))
        for key, curve in (other.get("training_curves") or {}).items():  # the base and offline models' curves
            if curve and not (merged.get("training_curves") or {}).get(key):
                merged.setdefault("training_curves", {})[key] = curve
        for protocol, methods in part["summary"].items():
            have = merged["summary"].setdefault(protocol, {})
            new = {m for m in methods if m not in have}
            for m in sorted(new):
                have[m] = methods[m]
                by_method[m] = own(other)
                merged["curves"].setdefault(protocol, {})[m] = part["curves"].get(protocol, {}).get(m)
            for k, v in part["evaluations"].items():
                if k.startswith(protocol + "/") and k.split("/")[1] in new:
                    merged["evaluations"][k] = v
            for k, v in part["train_seconds"].items():
                if Path(k).parent.name in new:
                    merged["train_seconds"][k] = v
        merged["config"]["methods"] = list(dict.fromkeys([*merged["config"]["methods"], *other["config"]["methods"]]))
    if any(v != own(first) for v in by_method.values()):
        merged["config"]["method_settings_by_method"] = {m: by_method[m] for m in sorted(by_method)}
    return merged


#: what the offline model depends on: every setting but a method's own, the data, split and budget
SAME_OFFLINE = ("dataset", "test", "test_image_names", "train_sources", "train_images", "base_iterations")


def offline_from(results: dict, other: dict) -> dict:
    """``results`` with each protocol's offline row taken from ``other``, a run whose offline model
    is the same one (same classes, data, split, settings but a method's own, and budget): its
    evaluation, scored against this protocol's Old and New, and its training time."""

    def trained_as(run):
        return {k: v for k, v in run["config"].get("settings", {}).items() if k != "method_settings"}

    def classes(run, protocol):
        return sorted(c for step in run["config"]["protocols"][protocol] for c in step)

    for key in SAME_OFFLINE:
        if other["config"].get(key) != results["config"].get(key):
            raise SystemExit(f"cannot take offline from that run: it differs in {key!r}")
    if trained_as(other) != trained_as(results):
        raise SystemExit("cannot take offline from that run: its models were trained with other settings")
    out = json.loads(json.dumps(results))
    for protocol, steps in out["config"]["protocols"].items():
        found = [
            other["evaluations"].get(f"{p}/offline/step0")
            for p in other["config"]["protocols"]
            if classes(other, p) == classes(out, protocol)
        ]
        if not any(found):
            raise SystemExit(f"that run has no offline model of {', '.join(classes(out, protocol))}")
        evaluation = next(e for e in found if e)
        row = summarize(Protocol(protocol, tuple(tuple(s) for s in steps)), evaluation["dice"])
        out["evaluations"][f"{protocol}/offline/step0"] = evaluation
        out["summary"].setdefault(protocol, {})["offline"] = {**row, "per_class": evaluation["dice"]}
        out["curves"].setdefault(protocol, {})["offline"] = [row["mean"]] * len(steps)
    out["train_seconds"].update(
        {k: v for k, v in other.get("train_seconds", {}).items() if Path(k).name.startswith("offline")}
    )
    out["config"]["methods"] = list(dict.fromkeys([*out["config"]["methods"], "offline"]))
    out["config"]["offline_from"] = (
        other["config"].get("command") or "another run of the same data, split, seed and settings"
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--with",
        dest="parts",
        type=Path,
        action="append",
        default=[],
        help="results.json of another part of the same run (a copy of its folder that ran other methods); may repeat",
    )
    ap.add_argument(
        "--offline-from",
        type=Path,
        help="results.json (or a snapshot) of another run whose offline model is this run's: "
        "same classes, data, split, seed and settings; its offline row is used",
    )
    ap.add_argument(
        "--curves",
        type=Path,
        help="also draw the per-step curves, as <out stem>.png in this folder, and the base and offline models' "
        "curves while they trained (a run with --curve-every) as <out stem>-training.png",
    )
    args = ap.parse_args(argv)
    parts = [rescored(json.loads(p.read_text())) for p in args.parts]
    first = rescored(json.loads(args.results.read_text()))
    snap = merge(first, *parts) if parts else snapshot(first)
    if args.offline_from:
        snap = offline_from(snap, rescored(json.loads(args.offline_from.read_text())))
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
