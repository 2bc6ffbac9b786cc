"""Where each class's pixels go: the pixel confusion of benchmark models on the benchmark's
held-out images (or a separate test set). For each labelled class, how many of its pixels each
model channel takes; for each channel, what it was called on: whether an over-called class
takes the background, an old class, or another new one.

    python3 benchmarks/confusion.py runs/R/models/seed0/1-1/cinuseg/step3.cinuseg.pt \\
        runs/R/models/seed0/1-1/mib/step3.cinuseg.pt --dataset monusac --out runs/confusion.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_cinuseg import load_model
from napari_cinuseg.analysis.evaluation import pixel_confusion
from napari_cinuseg.benchmark.split import benchmark_split
from napari_cinuseg.datasets.labelled import data_dir
from napari_cinuseg.datasets.layouts import read_dataset
from napari_cinuseg.io.atomic import atomic_json
from napari_cinuseg.runtime.names import BENCHMARK_SPLITS


def _table(name: str, record: dict) -> str:
    cols = list(record["predicted_pixels"])
    lines = [
        f"{name}: pixels of each labelled class (rows) predicted as each channel (columns)",
        " | ".join(["truth \\ predicted", *cols]),
    ]
    for truth, row in record["truth"].items():
        lines.append(" | ".join([truth, *(f"{row[c]:,}" for c in cols)]))
    lines.append(" | ".join(["predicted in all", *(f"{record['predicted_pixels'][c]:,}" for c in cols)]))
    for c in cols[1:]:
        on = record["predicted_on"][c]
        lines.append(f"  {c} called on: " + ", ".join(f"{t} {v:.1%}" for t, v in on.items() if v == v and v > 0))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model files (.cinuseg.pt)")
    ap.add_argument("--dataset", choices=("consep", "monusac"), default="consep")
    ap.add_argument(
        "--data",
        help="the data set's folder, as `cinuseg benchmark --data` "
        "(default: $CINUSEG_DATA/<dataset>, else ../shared/data/<dataset>)",
    )
    ap.add_argument("--test-data", help="a separate test set (same layout), as `cinuseg benchmark --test-data`")
    ap.add_argument("--split", choices=BENCHMARK_SPLITS, help="the benchmark's --split (default: val)")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="the benchmark's --val-fraction")
    ap.add_argument("--test-fraction", type=float, default=1 / 3, help="the benchmark's --test-fraction")
    ap.add_argument("--split-seed", type=int, default=0, help="the benchmark's --split-seed")
    ap.add_argument("--out", required=True, help="JSON of every model's confusion")
    args = ap.parse_args(argv)

    data = read_dataset(args.dataset, args.data or data_dir() / args.dataset)
    test = read_dataset(args.dataset, args.test_data) if args.test_data else None
    split = benchmark_split(data, args.split, test, args.val_fraction, args.test_fraction, args.split_seed)
    held_out = split.scored
    out = {
        "test_set": split.description,
        "split": split.record(),
        "test_images": [it.name for it in held_out.items],
        "models": {},
    }
    for path in args.models:
        model = load_model(path)
        record = pixel_confusion(model, held_out, "cpu").record()
        out["models"][path] = {"model_id": model.id, **record}
        print(_table(path, record), flush=True)
    atomic_json(Path(args.out), out)
    return out


if __name__ == "__main__":
    main()
