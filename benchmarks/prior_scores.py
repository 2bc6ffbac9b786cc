"""Could the prior's scores tell an unpainted nucleus of the new class from one of an old class?
Measured without training.

Two-step positive-unlabelled learning takes "reliable negatives" from the unlabelled pixels: here,
unpainted nuclei the prior scores high for an old class would be taught "not the new class". That
works only if the prior scores the old class higher on its own nuclei than on the new class's.
This script runs the prior over a split's images that hold both classes and, per true nucleus
(CoNSeP's instances, MoNuSAC's connected regions), takes the mean sigmoid score of the old class;
it reports both classes' medians, the AUC of that score for "old class, not new" (0.5: no
better than chance), and the share of the old class's nuclei above the new class's 90th
percentile (those a 90 % "spy" threshold would make negatives).

    CINUSEG_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/prior_scores.py \\
        --dataset consep --new Other --old Spindle-shaped --split tune
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

RESOURCE = Path(__file__).resolve().parents[1] / "src" / "napari_cinuseg" / "resources" / "base-consep.cinuseg.pt"


def auc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of a score for ``positive`` against ``negative`` (Mann-Whitney)."""
    ranks = rankdata(np.r_[negative, positive])
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def nucleus_scores(prior, data, new: str, old: str, instances_dir, images: int) -> tuple[np.ndarray, np.ndarray]:
    """(the old class's mean score on each nucleus of ``new``, on each nucleus of ``old``) over
    up to ``images`` images of ``data`` that hold both classes."""
    from napari_cinuseg.benchmark.painting import nucleus_instances
    from napari_cinuseg.model.segmenter import image_batch

    channel = prior.class_names.index(old) + 1  # channel 0 is the background
    new_id, old_id = data.class_id(new), data.class_id(old)
    on_new, on_old, seen = [], [], 0
    for item in data.items:
        if seen >= images:
            break
        if not ((item.labels == new_id).any() and (item.labels == old_id).any()):
            continue
        seen += 1
        with torch.no_grad():
            scores = torch.sigmoid(prior.network(prior.normalize(image_batch(item.image, "cpu"))).logits)[0, channel]
        scores = scores.numpy()
        inst = nucleus_instances(item, instances_dir)
        for i in np.unique(inst[inst > 0]):
            mask = inst == i
            if mask.sum() < 20:
                continue
            label = np.bincount(item.labels[mask]).argmax()
            if label == new_id:
                on_new.append(float(scores[mask].mean()))
            elif label == old_id:
                on_old.append(float(scores[mask].mean()))
    return np.asarray(on_new), np.asarray(on_old)


def main(argv=None) -> int:
    from napari_cinuseg import load_model
    from napari_cinuseg.datasets.labelled import data_dir
    from painted_step import painted_split  # the benchmark's own splits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("consep", "monusac"), default="consep")
    ap.add_argument("--new", default="Other", help="the new class (one the prior does not know)")
    ap.add_argument("--old", default="Spindle-shaped", help="an old class of the prior")
    ap.add_argument("--split", choices=("paint", "tune"), default="tune")
    ap.add_argument("--images", type=int, default=40, help="at most this many images holding both classes")
    ap.add_argument("--prior", default=str(RESOURCE))
    ap.add_argument("--data")
    ap.add_argument("--out", help="JSON file the figures are written to")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = load_model(args.prior)
    if args.old not in prior.class_names:
        ap.error(f"--old {args.old!r} is not a class of the prior ({', '.join(prior.class_names)})")
    data = painted_split(args.dataset, args.split, args.data)
    instances = data_dir(args.data) / "consep" / "train" / "instances" if args.dataset == "consep" else None
    on_new, on_old = nucleus_scores(prior, data, args.new, args.old, instances, args.images)
    if not len(on_new) or not len(on_old):
        ap.error(f"the {args.split} split has no image with nuclei of both {args.new} and {args.old}")
    spy = float(np.quantile(on_new, 0.9))
    out = {
        "dataset": args.dataset,
        "split": args.split,
        "new": args.new,
        "old": args.old,
        "nuclei": {args.new: len(on_new), args.old: len(on_old)},
        "median": {args.new: float(np.median(on_new)), args.old: float(np.median(on_old))},
        "auc": auc(on_new, on_old),
        "old_above_new_q90": float((on_old > spy).mean()),
    }
    print(
        f"{args.dataset} {args.split}: the prior's {args.old} score, median {out['median'][args.new]:.3f} on "
        f"{len(on_new)} {args.new} nuclei and {out['median'][args.old]:.3f} on {len(on_old)} {args.old} nuclei; "
        f"AUC {out['auc']:.3f}; {out['old_above_new_q90']:.0%} of {args.old} nuclei above the {args.new} "
        "nuclei's 90th percentile"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
