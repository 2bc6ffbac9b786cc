"""Experiment (issue 13): does stain normalisation of the *input* (Reinhard, LAB mean/std matched
to CoNSeP's training images) let the existing base models find nuclei on MoNuSAC?"""
import argparse, dataclasses, json, sys, time
from pathlib import Path
import numpy as np
from skimage.color import rgb2hed, rgb2lab, lab2rgb
from skimage.filters import threshold_otsu
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from encoders import foreground_dice
from napari_cinuseg import load_model
from napari_cinuseg.analysis.evaluation import evaluate
from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, read_monusac_images

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("models", nargs="*", help="base model files (e.g. benchmarks/encoders.py's)")
ap.add_argument("--data", help="data root holding consep/ and monusac/ (default $CINUSEG_DATA, else ../shared/data)")
args = ap.parse_args()
root = data_dir(args.data)
consep = read_consep_patches(root / "consep")
labs = [rgb2lab(it.image) for it in consep.items[::4]]
tissue = [l[l[..., 0] < 90] for l in labs]  # not the white background
allpix = np.concatenate(tissue)
TGT_MEAN, TGT_STD = allpix.mean(0), allpix.std(0)
print("CoNSeP LAB mean", TGT_MEAN.round(2), "std", TGT_STD.round(2), flush=True)

def reinhard(img):
    lab = rgb2lab(img)
    m = lab[..., 0] < 90
    src = lab[m] if m.sum() > 100 else lab.reshape(-1, 3)
    mu, sd = src.mean(0), src.std(0) + 1e-6
    out = (lab - mu) / sd * TGT_STD + TGT_MEAN
    return (np.clip(lab2rgb(out), 0, 1) * 255).round().astype(np.uint8)

mon = read_monusac_images(root / "monusac")
mon_n = dataclasses.replace(mon, items=[dataclasses.replace(it, image=reinhard(it.image)) for it in mon.items])
print("MoNuSAC mean RGB raw", np.mean([it.image.reshape(-1, 3).mean(0) for it in mon.items], 0).round(1),
      "normalised", np.mean([it.image.reshape(-1, 3).mean(0) for it in mon_n.items], 0).round(1), flush=True)
out = {}
for name, data in (("monusac", mon), ("consep", consep)):  # the no-learning reference
    tp = fp = fn = 0
    for it in data.items[:: 1 if name == "monusac" else 4]:  # CoNSeP: every 4th patch
        h = rgb2hed(it.image)[..., 0]
        pred = h > threshold_otsu(h)
        valid = it.labels != 255
        fg = (it.labels > 0) & valid
        tp += (pred & fg).sum(); fp += (pred & ~fg & valid).sum(); fn += (~pred & fg).sum()
    out[f"h-otsu/{name}"] = {"fg": round(float(100 * 2 * tp / (2 * tp + fp + fn)), 1)}
    print(f"h-otsu/{name}", out[f"h-otsu/{name}"], flush=True)
for name in args.models:
    m = load_model(name)
    for tag, data in (("raw", mon), ("reinhard", mon_n)):
        t = time.time()
        fg = foreground_dice(m, data)
        epi = evaluate(m, data, "cpu", say_unscored=False).get("Epithelial")
        out[f"{Path(name).name}/{tag}"] = {"fg": round(fg, 1), "epi": None if epi is None else round(epi, 1), "s": round(time.time() - t)}
        print(Path(name).name, tag, out[f"{Path(name).name}/{tag}"], flush=True)
print(json.dumps(out, indent=1))
