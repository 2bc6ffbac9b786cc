"""Experiment (issue 13), not product code: does standardising each image per channel at the input
carry an RGB base model to other scanners? The issue's linear probe put it near the best
(MoNuSAC nucleus Dice 26.7 with random features, 29.0 with ImageNet's, against 20.5 for ImageNet
with fixed constants), and the encoder table had not tried it.

Trains benchmarks/encoders.py's ResNet-18 variant (from scratch, RGB, 950 iterations, seed 0,
HED stain jitter ``--stain``) with ``CiNuSegModel.normalize`` patched for the run: every image
(a training crop, a tile) is standardised by its own per-channel mean and spread, the spread held
at no less than ``--min-std`` grey levels so that a blank tile is not blown up into texture.
Scored like the encoder table (CoNSeP validation split, all of MoNuSAC, nuclei on the CMU-1
sample). The saved model file does not record the patch: load it only through this script."""
import argparse, json, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import encoders as E
from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, read_monusac_images, split_by_source
from napari_cinuseg.model.segmenter import CiNuSegModel
from napari_cinuseg.training.settings import preset

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", help="data root holding consep/ and monusac/ (default $CINUSEG_DATA, else ../shared/data)")
ap.add_argument("--out", required=True, help="folder for the model and results (resumes from the model)")
ap.add_argument("--iterations", type=int, default=950)
ap.add_argument("--stain", type=float, default=1.0, help="HED stain jitter strength (0 = off)")
ap.add_argument("--min-std", type=float, default=4.0, help="least spread (grey levels of 255) used to divide")
args = ap.parse_args()


def standardise_each_image(self, images: torch.Tensor) -> torch.Tensor:
    x = images.float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_min(args.min_std)
    return (x - mean) / std


CiNuSegModel.normalize = standardise_each_image

root = data_dir(args.data)
train, val = split_by_source(read_consep_patches(root / "consep"))
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
name = f"resnet18-rgb-per-image-stain{args.stain:g}"
path = out / f"{name}.cinuseg.pt"
settings = preset("cpu", iterations=args.iterations, seed=0, device="cpu", encoder="resnet18", encoder_weights=None,
                  stain_jitter=args.stain)
model = E.base_model(path, train, settings)
monusac = read_monusac_images(root / "monusac")
row = {"variant": name, "min_std": args.min_std, **E.scores(model, val, monusac)}
print(json.dumps(row), flush=True)
(out / f"results-{name}.json").write_text(json.dumps(row, indent=1))
