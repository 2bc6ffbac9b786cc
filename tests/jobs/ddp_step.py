"""A tiny incremental step run by ``torchrun`` in tests/test_distributed.py: rank 0 writes the
per-iteration losses (JSON) and the model; argv: data dir, prior file, out dir."""

import json
import sys
from pathlib import Path

from napari_cinuseg import drain, load_model, train_step
from napari_cinuseg.datasets.labelled import read_consep_patches, step_pairs
from napari_cinuseg.runtime.events import Progress
from napari_cinuseg.training import distributed
from napari_cinuseg.training.settings import TrainSettings

data, prior, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
pairs = [p for p in step_pairs(read_consep_patches(data / "consep"), ["Other"]) if p.name.startswith("train_2_")][:4]
settings = TrainSettings(
    decoder_channels=(32, 16, 16, 8), crop_size=64, batch_size=4, iterations=3, device="cpu", seed=0, lr_step=0.01
)
events = []
model = drain(train_step(load_model(prior), pairs, ["Other"], settings, out=out / "ddp.cinuseg.pt"), events.append)
if distributed.is_main():
    losses = [e.loss for e in events if isinstance(e, Progress)]
    (out / "losses.json").write_text(
        json.dumps({"losses": losses, "world": distributed.world_size(), "device": model.steps[-1].results["device"]})
    )
