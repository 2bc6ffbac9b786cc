"""Experiment (issue 13), not product code: a base model whose input is the hematoxylin optical
density (skimage's rgb2hed H channel, in torch), standardised with CoNSeP's constants and repeated
on 3 channels (``--channels h``), or the H, E and D densities each standardised (``hed``), trained like benchmarks/encoders.py's variants (ResNet-18 from scratch, stain
jitter 1, 950 iterations, seed 0). CiNuSegModel.normalize is patched for training and scoring."""
import argparse, json, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import encoders as E
from skimage.color import hed_from_rgb
from napari_cinuseg.model.segmenter import CiNuSegModel
from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, read_monusac_images, split_by_source
from napari_cinuseg.training.settings import preset

HED = torch.tensor(hed_from_rgb, dtype=torch.float32)
LOG_ADJ = float(np.log(1e-6))

def stains(images):
    """(B, 3, H, W) 0..255 RGB → (B, 3, H, W) H, E, D optical densities (skimage's rgb2hed)."""
    rgb = (images.float() / 255.0).clamp_min(1e-6)
    od = torch.log(rgb) / LOG_ADJ
    return torch.einsum("bchw,cs->bshw", od, HED.to(images.device)).clamp_min(0)

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", help="data root holding consep/ and monusac/ (default $CINUSEG_DATA, else ../shared/data)")
ap.add_argument("--out", required=True, help="folder for the model and results.json (resumes from the model)")
ap.add_argument("--iterations", type=int, default=950)
ap.add_argument("--channels", choices=("h", "hed", "hhe"), default="h",
                help="h: H on three channels; hed: H, E and D, each standardised with CoNSeP's constants; "
                "hhe: H twice, then E standardised per image (its scanner-dependent intensity removed)")
args = ap.parse_args()
root = data_dir(args.data)
consep = read_consep_patches(root / "consep")
train, val = split_by_source(consep)
hs = torch.cat([stains(torch.from_numpy(it.image).permute(2, 0, 1)[None]).flatten(2) for it in train.items[::3]], dim=2)
MEAN, STD = hs.mean(dim=(0, 2)), hs.std(dim=(0, 2))
print("CoNSeP H/E/D mean", MEAN.tolist(), "std", STD.tolist(), flush=True)

def normalize(self, images):
    z = (stains(images) - MEAN.view(1, 3, 1, 1).to(images.device)) / STD.view(1, 3, 1, 1).to(images.device)
    if args.channels == "h":
        return z[:, :1].expand(-1, 3, -1, -1).contiguous()
    if args.channels == "hhe":
        e = stains(images)[:, 1:2]
        e = (e - e.mean(dim=(2, 3), keepdim=True)) / e.std(dim=(2, 3), keepdim=True).clamp_min(1e-4)
        return torch.cat([z[:, :1], z[:, :1], e], dim=1)
    return z
CiNuSegModel.normalize = normalize

out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
path = out / f"resnet18-{args.channels}-stain.cinuseg.pt"
settings = preset("cpu", iterations=args.iterations, seed=0, device="cpu", encoder="resnet18", encoder_weights=None, stain_jitter=1.0)
model = E.base_model(path, train, settings)
monusac = read_monusac_images(root / "monusac")
row = {
    **E.scores(model, val, monusac),
    "channels": args.channels,
    "stain_mean_std": [MEAN.tolist(), STD.tolist()],
}
print(json.dumps(row), flush=True)
json.dump(row, open(out / f"results-{args.channels}.json", "w"), indent=1)
