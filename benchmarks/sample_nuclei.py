"""The plugin's own sample (CMU-1, 20×, 0.499 µm/px) segmented as a user gets it: each model's
nucleus objects (how many, their areas in µm², per class) and a picture of them on a crop.

Each image is segmented by the panel's engine at its pixel size (tiles resampled to the model's)
and split by the product's rule (the learned distance for a model with a separation head, else the
watershed; objects under 3 µm² dropped), as ``cinuseg segment`` writes its CSV.

    python3 benchmarks/sample_nuclei.py --models bundled,runs/x/mixed.cinuseg.pt --names before,after \\
        --out docs/benchmarks/sample-nuclei.json --pictures docs/images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_cinuseg import drain, load_model
from napari_cinuseg.model.file import BUNDLED_MODEL
from napari_cinuseg.plugin.sample_data import SAMPLE_PIXEL_SIZE, sample_he
from napari_cinuseg.session.nuclei import segment_nuclei_and_measure

#: the crop of the pictures, in the sample's pixels: (row, column, side)
CROP = (300, 300, 300)


def objects(model, image: np.ndarray, pixel_size: float, device: str = "cpu"):
    """(instance map, classes of the objects, how they were split, seconds) of ``image``, by the
    panel's engine (``session.nuclei.segment_nuclei_and_measure``, as ``cinuseg segment``)."""
    t0 = time.time()
    done = drain(segment_nuclei_and_measure(model, image, image_pixel_size=pixel_size, device=device))
    return np.asarray(done.nuclei.labels), done.nuclei.classes, done.nuclei.method, time.time() - t0


def summary(labels: np.ndarray, classes: np.ndarray, names: list[str], pixel_size: float) -> dict:
    """Object count and area (µm²: median, mean, quartiles), over all objects and per class."""
    area = np.bincount(labels.ravel(), minlength=len(classes))[1:] * pixel_size**2
    cls = classes[1:]

    def stats(a: np.ndarray) -> dict:
        if not len(a):
            return {"objects": 0}
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        return {"objects": int(len(a)), "median_um2": round(float(med), 2), "mean_um2": round(float(a.mean()), 2),
                "q1_um2": round(float(q1), 2), "q3_um2": round(float(q3), 2)}  # fmt: skip

    return {"all": stats(area), **{n: stats(area[cls == i]) for i, n in enumerate(names, start=1)}}


def picture(image, labels, classes, model, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    y, x, n = CROP
    crop = image[y : y + n, x : x + n].copy()
    lab = labels[y : y + n, x : x + n]
    edge = find_boundaries(lab, mode="inner")
    colours = np.array(
        [[0, 0, 0]] + [[int(c.colour[i : i + 2], 16) for i in (1, 3, 5)] for c in model.classes], np.uint8
    )
    crop[edge] = colours[classes[lab[edge]]]
    fig, ax = plt.subplots(1, 2, figsize=(8, 4.2), dpi=100)
    ax[0].imshow(crop)
    ax[0].set_title(title, fontsize=9)
    ax[1].imshow(image[y : y + n, x : x + n])
    ax[1].set_title("the sample (CMU-1, 20×)", fontsize=9)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, pil_kwargs={"quality": 85})
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bundled", help="comma-separated model files, or 'bundled'")
    ap.add_argument("--names", default=None, help="a name per model (default: the file names)")
    ap.add_argument("--out", required=True, help="the JSON of the figures")
    ap.add_argument("--pictures", default=None, help="a folder for one picture per model (nuclei-sample-NAME.jpg)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    specs = args.models.split(",")
    names = args.names.split(",") if args.names else [Path(s).stem for s in specs]
    if len(names) != len(specs):
        raise SystemExit(f"--names: {len(names)} names for {len(specs)} models; give one per model")
    image = sample_he()[0][0]
    result = {"image": "the plugin's sample (CMU-1, 1024², 0.499 µm/px)", "pixel_size": SAMPLE_PIXEL_SIZE}
    for spec, name in zip(specs, names):
        model = load_model(BUNDLED_MODEL if spec == "bundled" else spec)
        labels, classes, method, seconds = objects(model, image, SAMPLE_PIXEL_SIZE, args.device)
        r = summary(labels, classes, model.class_names, SAMPLE_PIXEL_SIZE)
        r.update(model=model.id, file=spec, instances=method, seconds=round(seconds, 1))
        result[name] = r
        print(name, json.dumps(r), flush=True)
        if args.pictures:
            path = Path(args.pictures) / f"nuclei-sample-{name}.jpg"
            a = r["all"]
            picture(
                image, labels, classes, model, f"{name}: {a['objects']} objects, median {a.get('median_um2')} µm²", path
            )
            print(f"wrote {path}")
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
