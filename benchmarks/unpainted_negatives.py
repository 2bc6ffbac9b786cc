"""Which unpainted pixels a painted step may call "not the new class": measured without training.

On a painted step the new class's negatives are what the user gave plus the pixels the prior is
sure are no nucleus (losses.cinuseg.given_negatives: its confident background, ``margin`` px
from its nucleus foreground). This script runs the prior over a split's images, as if nothing
were painted, and reports for each margin the share of each true class's pixels that would be
taught "not the new class" (every class may be the next new one: lower is better) and the share
of the true background that stays a negative (higher keeps the new class off the background).

    CINUSEG_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/unpainted_negatives.py \\
        --dataset monusac --split tune --margins 0 2 4 8 16 --out runs/negatives-monusac-tune.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

RESOURCE = Path(__file__).resolve().parents[1] / "src" / "napari_cinuseg" / "resources" / "base-consep.cinuseg.pt"


def main(argv=None) -> int:
    from napari_cinuseg import load_model
    from napari_cinuseg.losses.cinuseg import given_negatives
    from napari_cinuseg.losses.pseudo import pseudo_labels
    from napari_cinuseg.runtime.names import IGNORE
    from painted_step import painted_split  # the benchmark's own splits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("consep", "monusac"), default="monusac")
    ap.add_argument("--split", choices=("tune", "test"), default="tune")
    ap.add_argument("--margins", type=int, nargs="+", default=[0, 2, 4, 8, 16])
    ap.add_argument("--background", type=float, default=0.5, help="the prior's background score called sure")
    ap.add_argument("--prior", default=str(RESOURCE))
    ap.add_argument("--data")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.split == "test":
        raise SystemExit("rules are chosen on the tune split; the test split is for the tables only")
    model = load_model(args.prior)
    data = painted_split(args.dataset, args.split, args.data)
    names = data.class_names
    counts = {m: np.zeros((len(names) + 1, 2), np.int64) for m in args.margins}  # (class, [all, negative])
    from napari_cinuseg.model.segmenter import image_batch

    net = model.network.eval()
    for it in data.items:
        with torch.no_grad():
            old = net(model.normalize(image_batch(it.image, "cpu"))).logits.float()
        unl = torch.full(old.shape[-2:], IGNORE, dtype=torch.long)[None]
        pseudo = pseudo_labels(unl, old, [], 0.7, IGNORE, "prior", args.background)
        truth = np.asarray(it.labels)
        for m in args.margins:
            neg = given_negatives(pseudo, old, m)[0].numpy()
            for c in range(len(names) + 1):
                sel = truth == c
                counts[m][c] += (int(sel.sum()), int((sel & neg).sum()))
    result = {
        "dataset": args.dataset,
        "split": args.split,
        "sources": data.sources,
        "images": len(data.items),
        "prior": model.id[:8],
        "background": args.background,
        "margins": {},
    }
    for m in args.margins:
        share = {n: round(100 * b / max(a, 1), 1) for n, (a, b) in zip(["background", *names], counts[m])}
        result["margins"][m] = share
        print(f"margin {m:>2}: " + ", ".join(f"{k} {v}%" for k, v in share.items()), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
