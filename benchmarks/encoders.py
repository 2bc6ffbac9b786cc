"""Which encoder and stain measure make a base model that works beyond CoNSeP.

Trains one base model (Epithelial + Spindle-shaped, on the CoNSeP training split) per variant,
all with the same iteration budget, and reports for each:

- Dice on the CoNSeP validation split (held out by source image), or on ``--test-data`` (a
  CoNSeP-layout folder) when given;
- Epithelial Dice and foreground Dice (any nucleus against background) on every image of the
  MoNuSAC folder (other scanners, organs and centres);
- the nuclei found on the sample image (CMU-1 region, 20×), segmented at the model's pixel size;
- seconds per iteration, as the training measured it (only meaningful on an idle machine).

Every model is kept in ``--out`` and reused when the script runs again (delete it to retrain),
so the run resumes. Run it niced: ``nice -n 10 python3 benchmarks/encoders.py --out runs/encoders``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_cinuseg import drain, load_model, train_base
from napari_cinuseg.analysis.evaluation import evaluate
from napari_cinuseg.analysis.metrics import ConfusionMatrix
from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, read_monusac_images, step_pairs
from napari_cinuseg.datasets.splits import split_by_source
from napari_cinuseg.inference.segmentation import segment
from napari_cinuseg.io.images import read_rgb
from napari_cinuseg.training.settings import preset

CLASSES = ["Epithelial", "Spindle-shaped"]
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_cinuseg" / "resources" / "cmu1-region.jpg"
SAMPLE_PIXEL_SIZE = 0.499  # µm/px: CMU-1 at 20× (its SVS description says MPP = 0.499)

# name → settings on top of the cpu preset
VARIANTS = {
    "resnet18-scratch": dict(encoder="resnet18", encoder_weights=None),
    "lite0-imagenet": dict(encoder="efficientnet-lite0", encoder_weights="imagenet"),
    "lite0-imagenet-stain": dict(encoder="efficientnet-lite0", encoder_weights="imagenet", stain_jitter=1.0),
    "lite0-imagenet-stain-scale": dict(
        encoder="efficientnet-lite0", encoder_weights="imagenet", stain_jitter=1.0, scale_jitter=0.5
    ),
    # the hematoxylin-density input (same network and jitter)
    "resnet18-hematoxylin-stain": dict(encoder="resnet18", encoder_weights=None, input="hematoxylin", stain_jitter=1.0),
}


def foreground_dice(model, data) -> float:
    """Dice (%) of "any nucleus" against background over all images (255 ignored)."""
    cm = ConfusionMatrix(2)
    for item in data.items:
        labels = np.where(item.labels == 255, 255, (item.labels > 0).astype(np.uint8)).astype(np.uint8)
        cm.update(labels, (model.predict(item.image) > 0).astype(np.uint8))
    return float(cm.dice()[1] * 100)


def nuclei_on_sample(model) -> dict:
    from skimage.measure import label

    image = read_rgb(SAMPLE)
    class_map = drain(segment(model, image, device="cpu", image_pixel_size=SAMPLE_PIXEL_SIZE))
    fg = class_map > 0
    return {
        "nuclei": int(label(fg).max()),
        "foreground_share": round(float(fg.mean()), 4),
        "model_pixel_size": model.pixel_size,
    }


def base_model(path: Path, train, settings):
    """The base model (Epithelial + Spindle-shaped) at ``path``: loaded if a run already saved it,
    else trained on ``train`` with ``settings`` and saved there."""
    if path.exists():
        return load_model(path)
    t0 = time.perf_counter()
    print(f"[{path.stem}] training {settings.iterations} iterations", file=sys.stderr, flush=True)
    model = drain(train_base(step_pairs(train, CLASSES), CLASSES, settings, out=path, pixel_size=train.pixel_size))
    print(f"[{path.stem}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return model


def scores(model, val, monusac) -> dict:
    """The table's figures of one base model: CoNSeP validation Dice per class, MoNuSAC Epithelial
    and foreground Dice, and the nuclei it finds on the CMU-1 sample."""
    return {
        "consep_val_dice": evaluate(model, val, "cpu", say_unscored=False),
        "monusac_epithelial_dice": evaluate(model, monusac, "cpu", say_unscored=False).get("Epithelial"),
        "monusac_foreground_dice": foreground_dice(model, monusac),
        "sample": nuclei_on_sample(model),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", help="data root holding consep/ and monusac/ (default $CINUSEG_DATA, else ../shared/data)"
    )
    ap.add_argument("--test-data", help="a separate CoNSeP-layout test folder (default: the validation split)")
    ap.add_argument("--monusac", help="MoNuSAC folder for the cross-scanner figures (default <data>/monusac)")
    ap.add_argument("--out", required=True, help="folder for the models and results.json")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument(
        "--iterations",
        type=int,
        default=950,
        help="the same budget for every variant (default: the cpu preset's 25 epochs on CoNSeP)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    root = data_dir(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    consep = read_consep_patches(root / "consep")
    train, val = split_by_source(consep)
    if args.test_data:
        train, val = consep, read_consep_patches(args.test_data)
    monusac = read_monusac_images(args.monusac or root / "monusac")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor(),
    }
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        settings = preset("cpu", iterations=args.iterations, seed=args.seed, device="cpu", **VARIANTS[name])
        path = out / f"{name}.cinuseg.pt"
        model = base_model(path, train, settings)
        r = model.steps[-1].results
        row = {
            "settings": VARIANTS[name],
            "iterations": r["iterations"],
            "seconds_per_iteration": round(r["seconds"] / r["iterations"], 3),
            **scores(model, val, monusac),
            "file_mb": round(path.stat().st_size / 2**20, 1),
        }
        results.setdefault("variants", {})[name] = row
        results_path.write_text(json.dumps(results, indent=1))
        print(f"[{name}] {json.dumps(row)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
