"""Experiment (issue 13), not product code: does colour augmentation beyond the HED stain jitter
carry an RGB base model to other scanners? Trains benchmarks/encoders.py's ResNet-18 variant
(from scratch, 950 iterations, seed 0) on RGB with the HED stain jitter (``--stain``) and, after
it, an HSV-style jitter of strength ``--hsv`` s (torchvision's functional colour ops): hue shifted
by U(−0.05 s, 0.05 s) of the circle, saturation, brightness and contrast scaled by 2^U(−s, s),
2^U(−s/2, s/2) and 2^U(−s/2, s/2). ``augment.stain_jitter`` is patched for the run; scored like
the encoder table (CoNSeP validation split, all of MoNuSAC, nuclei on the CMU-1 sample)."""
import argparse, json, sys
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import encoders as E
from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, read_monusac_images, split_by_source
from napari_cinuseg.training import augment
from napari_cinuseg.training.settings import preset

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", help="data root holding consep/ and monusac/ (default $CINUSEG_DATA, else ../shared/data)")
ap.add_argument("--out", required=True, help="folder for the model and results (resumes from the model)")
ap.add_argument("--iterations", type=int, default=950)
ap.add_argument("--stain", type=float, default=1.0, help="HED stain jitter strength (0 = off)")
ap.add_argument("--hsv", type=float, default=1.0, help="HSV jitter strength (0 = off)")
args = ap.parse_args()

hed_jitter = augment.stain_jitter


def jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    image = hed_jitter(image, rng, strength)
    s = args.hsv
    if s <= 0:
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    x = F.adjust_hue(x, float(rng.uniform(-0.05 * s, 0.05 * s)))
    x = F.adjust_saturation(x, float(2.0 ** rng.uniform(-s, s)))
    x = F.adjust_brightness(x, float(2.0 ** rng.uniform(-s / 2, s / 2)))
    x = F.adjust_contrast(x, float(2.0 ** rng.uniform(-s / 2, s / 2)))
    return x.permute(1, 2, 0).numpy()


augment.stain_jitter = jitter

root = data_dir(args.data)
train, val = split_by_source(read_consep_patches(root / "consep"))
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
name = f"resnet18-rgb-stain{args.stain:g}-hsv{args.hsv:g}"
path = out / f"{name}.cinuseg.pt"
settings = preset("cpu", iterations=args.iterations, seed=0, device="cpu", encoder="resnet18", encoder_weights=None,
                  stain_jitter=args.stain)
model = E.base_model(path, train, settings)
monusac = read_monusac_images(root / "monusac")
row = {
    "variant": name,
    **E.scores(model, val, monusac),
}
print(json.dumps(row), flush=True)
(out / f"results-{name}.json").write_text(json.dumps(row, indent=1))
