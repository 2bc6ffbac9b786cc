"""Experiment (issue 13): on MoNuSAC, is the base model's nucleus score *ranked* right but
mis-calibrated (a threshold problem), or are its features wrong? AUC of the margin
max_{c>=1} z_c - z_0, Dice at argmax, at the best single global threshold (an oracle), and at a
per-image Otsu threshold of the margin (no labels needed)."""
import argparse, json
import numpy as np, torch
from skimage.filters import threshold_otsu
from napari_cinuseg import load_model
from napari_cinuseg.datasets.labelled import data_dir, read_monusac_images

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("models", nargs="+", help="base model files (e.g. benchmarks/encoders.py's)")
ap.add_argument("--data", help="data root holding monusac/ (default $CINUSEG_DATA, else ../shared/data)")
args = ap.parse_args()
mon = read_monusac_images(data_dir(args.data) / "monusac")
res = {}
for name in args.models:
    m = load_model(name); m.network.eval()
    margins, truths, otsu_tp, otsu_fp, otsu_fn = [], [], 0, 0, 0
    for it in mon.items:
        x = torch.from_numpy(np.ascontiguousarray(it.image)).permute(2, 0, 1)[None]
        with torch.no_grad():
            z = m.network(m.normalize(x)).logits[0]
        marg = (z[1:].max(0).values - z[0]).numpy()
        valid = it.labels != 255
        fg = (it.labels > 0) & valid
        t = threshold_otsu(marg)
        pred = marg > t
        otsu_tp += int((pred & fg).sum()); otsu_fp += int((pred & ~fg & valid).sum()); otsu_fn += int((~pred & fg).sum())
        rng = np.random.default_rng(0)
        idx = rng.choice(valid.sum(), min(20000, int(valid.sum())), replace=False)
        margins.append(marg[valid][idx]); truths.append(fg[valid][idx])
    s = np.concatenate(margins); y = np.concatenate(truths)
    order = np.argsort(-s); ys = y[order]
    tp = np.cumsum(ys); fp = np.cumsum(~ys)
    auc = float(np.trapezoid(tp / tp[-1], fp / fp[-1]))
    dice_curve = 2 * tp / (tp + ys.sum() + fp)  # Dice if thresholded after each sample
    best = int(dice_curve.argmax())
    argmax_pred = s > 0
    d0 = 2 * (argmax_pred & y).sum() / (argmax_pred.sum() + y.sum())
    res[name] = {"auc": round(auc, 3), "dice_argmax_sampled": round(100 * float(d0), 1),
                 "dice_best_global_threshold_oracle": round(100 * float(dice_curve[best]), 1), "best_threshold": round(float(s[order][best]), 2),
                 "dice_otsu_per_image": round(100 * 2 * otsu_tp / (2 * otsu_tp + otsu_fp + otsu_fn), 1),
                 "fg_share_truth": round(float(y.mean()), 3)}
    print(name, res[name], flush=True)
print(json.dumps(res, indent=1))
