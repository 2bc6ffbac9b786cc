"""Copy a running benchmark's results.json into docs with only the methods whose every step
finished and was evaluated (their summary computed as `cinuseg benchmark` does), so no figure of
an unfinished step reaches the docs.

    python3 scripts/benchmark_snapshot.py runs/bench-monusac-1-1-r18/results.json \
        docs/benchmarks/monusac-1-1-cpu-seed0-issue12.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_cinuseg.analysis.benchmark_report import summarize
from napari_cinuseg.datasets.protocols import Protocol
from napari_cinuseg.io.atomic import atomic_json


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
        out["curves"][protocol] = {m: c for m, c in results.get("curves", {}).get(protocol, {}).items() if m in done}
    finished = set().union(*(out["summary"][p] for p in out["summary"])) | {"base"}
    out["train_seconds"] = {
        k: v for k, v in results.get("train_seconds", {}).items()
        if Path(k).parent.name in finished or Path(k).name.startswith(("base", "offline"))
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    snap = snapshot(json.loads(args.results.read_text()))
    atomic_json(args.out, snap)
    for p, methods in snap["summary"].items():
        print(p, ", ".join(f"{m} {s['mean']:.2f}" for m, s in methods.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
