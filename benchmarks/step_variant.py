"""Train one benchmark step again with some settings changed, from the same prior, images and
other settings as a cached step model of a `cinuseg benchmark` run, and score it like the
benchmark (Dice and the share of each known class's test pixels above τ) on the same validation
split: how a setting the paper leaves open changes one step, without re-running the protocol.

    python3 benchmarks/step_variant.py --like runs/R/models/seed0/2-1/cinuseg/step1.cinuseg.pt \\
        --prior runs/R/models/seed0/2-1/base.cinuseg.pt --set adaptive_tau=true --out runs/exp-x
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from napari_cinuseg import drain, load_model, train_step
from napari_cinuseg.analysis.evaluation import evaluate
from napari_cinuseg.analysis.forgetting import confident_share
from napari_cinuseg.benchmark.split import benchmark_split
from napari_cinuseg.datasets.labelled import data_dir, step_pairs
from napari_cinuseg.datasets.layouts import read_dataset
from napari_cinuseg.methods import get_method
from napari_cinuseg.runtime.names import BENCHMARK_SPLITS
from napari_cinuseg.training.settings import from_dict, parse_changes


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--like", required=True, help="a cached step model whose prior, images and settings to reuse")
    ap.add_argument("--prior", required=True, help="that step's prior model")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE (true/false, numbers), repeatable")
    ap.add_argument("--dataset", choices=("consep", "monusac"), default="consep")
    ap.add_argument(
        "--data",
        help="the data set's folder, as `cinuseg benchmark --data` "
        "(default: $CINUSEG_DATA/<dataset>, else ../shared/data/<dataset>)",
    )
    ap.add_argument("--split", choices=BENCHMARK_SPLITS, help="the benchmark's --split (default: val)")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="the benchmark's --val-fraction")
    ap.add_argument("--test-fraction", type=float, default=1 / 3, help="the benchmark's --test-fraction")
    ap.add_argument("--split-seed", type=int, default=0, help="the benchmark's --split-seed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    like, prior = load_model(args.like), load_model(args.prior)
    record = like.steps[-1]
    if like.lineage[-1] != prior.id:
        raise SystemExit(f"{args.prior} is not the prior of {args.like}")
    changes = parse_changes(args.set)
    settings = from_dict(record.settings).replace(**changes)

    data = read_dataset(args.dataset, args.data or data_dir() / args.dataset)
    split = benchmark_split(data, args.split, None, args.val_fraction, args.test_fraction, args.split_seed)
    train, val = split.train, split.scored  # the benchmark's split
    new = [c for c in like.class_names if c not in prior.class_names]
    pairs = step_pairs(train, new)
    if [p.name for p in pairs] != record.data.get("images"):
        raise SystemExit("the split's images differ from the cached step's")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(f"{k}={v}" for k, v in changes.items()) or "same"
    path = out / f"{Path(args.like).parent.name}-{Path(args.like).stem.split('.')[0]}-{tag}.cinuseg.pt"
    tau = settings.method_settings.get("tau", get_method("cinuseg").tau)  # eq. 1's, for the confident share
    t0 = time.time()
    model = (
        load_model(path)
        if path.exists()
        else drain(train_step(prior, pairs, new, settings, method=record.method, out=path))
    )
    row = {
        "like": args.like,
        "split": split.name,
        "changes": changes,
        "seconds": round(time.time() - t0),
        "dice": evaluate(model, val, "cpu", say_unscored=False),
        "confident": confident_share(model, val, [c for c in model.class_names if c in val.class_names], tau, "cpu"),
        "forgetting": model.steps[-1].results.get("forgetting"),
        # the share of crops on which ATT (eqs. 14-16) fired, this step's and the cached one's
        "att_fired_share": model.steps[-1].results.get("att_fired_share"),
        "reference_att_fired_share": record.results.get("att_fired_share"),
        "reference_dice": evaluate(like, val, "cpu", say_unscored=False),
    }
    print(json.dumps(row), flush=True)
    (out / f"{path.stem}.json").write_text(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
