"""One benchmark run at several seeds as one table: each method's Old / New / Mean and classes as
mean ± sd over the seeds (``benchmark.report.across_seeds``), from the runs' results.json or their
snapshots in docs/benchmarks/, which must differ only in ``--seed``.

    python3 scripts/benchmark_seeds.py docs/benchmarks/consep-2-1-balanced-seed{0,1,2}.json \\
        --out docs/benchmarks/consep-2-1-balanced-seeds.json --table docs/benchmarks/consep-2-1-balanced-seeds.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_cinuseg.benchmark.report import across_seeds, rescored, write_seed_table
from napari_cinuseg.io.atomic import atomic_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="results.json (or a snapshot of one) per seed")
    ap.add_argument("--out", required=True, help="the JSON of the figures across seeds")
    ap.add_argument("--table", help="also a Markdown table here")
    args = ap.parse_args(argv)
    try:
        seeded = across_seeds([rescored(json.loads(Path(p).read_text())) for p in args.runs])
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    seeded["runs"] = list(args.runs)
    atomic_json(Path(args.out), seeded)
    if args.table:
        write_seed_table(seeded, Path(args.table))
    return seeded


if __name__ == "__main__":
    main()
