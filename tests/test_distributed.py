"""Data-parallel training under torchrun: a two-process gloo job on the CPU follows the
one-process run of the same global batch, and only rank 0 writes the model."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cinuseg import CiNuSegModel, drain, load_model, save_model, train_step
from napari_cinuseg.datasets.labelled import step_pairs
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.runtime.events import Progress
from napari_cinuseg.training.distributed import GlobalBatchSampler
from napari_cinuseg.training.settings import TrainSettings

JOB = Path(__file__).parent / "jobs" / "ddp_step.py"


def test_global_batches_are_split_across_ranks():
    one = list(GlobalBatchSampler(10, 4, seed=3))
    assert len(one) == 8 and len(set(one)) == 8  # two global batches, the rest dropped
    r0, r1 = (list(GlobalBatchSampler(10, 4, seed=3, rank=r, world=2)) for r in (0, 1))
    assert r0 == one[0:2] + one[4:6] and r1 == one[2:4] + one[6:8]
    s = GlobalBatchSampler(10, 4, seed=3)
    s.set_epoch(1)
    assert list(s) != one  # a new shuffle each epoch
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        GlobalBatchSampler(10, 5, world=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(shared_data, consep, tmp_path):
    torch.manual_seed(0)
    prior = save_model(
        CiNuSegModel.new(["Epithelial", "Spindle-shaped"], Architecture("resnet18", "unet", (32, 16, 16, 8))),
        tmp_path / "prior.cinuseg.pt",
    )
    out = tmp_path / "ddp"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(JOB),
        str(shared_data),
        str(prior),
        str(out),
    ]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "losses.json").read_text())
    assert result["world"] == 2 and result["device"].endswith("× 2 processes")
    assert sorted(p.name for p in out.iterdir()) == ["ddp.cinuseg.pt", "losses.json"]  # one writer

    pairs = [p for p in step_pairs(consep, ["Other"]) if p.name.startswith("train_2_")][:4]
    settings = TrainSettings(
        decoder_channels=(32, 16, 16, 8), crop_size=64, batch_size=4, iterations=3, device="cpu", seed=0, lr_step=0.01
    )
    events = []
    single = drain(train_step(load_model(prior), pairs, ["Other"], settings), events.append)
    losses = [e.loss for e in events if isinstance(e, Progress)]
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-4, atol=1e-6)
    ddp = load_model(out / "ddp.cinuseg.pt")
    for k, v in single.network.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(ddp.network.state_dict()[k].float(), v.float(), rtol=1e-3, atol=1e-4)


def test_a_cohort_is_shared_across_processes_without_overlap(monkeypatch):
    from napari_cinuseg.cli.segmenting import shard

    images = [f"slide{i}.svs" for i in range(7)]
    shares = [shard(images, f"{k}/3") for k in range(3)]
    assert sorted(sum(shares, [])) == sorted(images) and shares[1] == ["slide1.svs", "slide4.svs"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert shard(images, None) == images[1::2]  # torchrun
    with pytest.raises(ValueError, match="K/N"):
        shard(images, "3/3")
    with pytest.raises(ValueError, match="K/N"):
        shard(images, "half")
