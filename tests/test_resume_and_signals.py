"""A run's outputs are its own: an existing masks file is skipped only when it is this run's
result (same model, same settings); SIGTERM cleans up as Ctrl-C does; a rerun after a kill
finishes every image; Ctrl-C while PyTorch loads, or while the masks are saved, leaves no
traceback and no file."""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from skimage import io as skio

from napari_cinuseg import CiNuSegModel, save_model
from napari_cinuseg.cli import entry, main
from napari_cinuseg.io.export import export_masks_job
from napari_cinuseg.io.slides import Slide
from napari_cinuseg.model.network import Architecture

TINY = Architecture("resnet18", "unet", (32, 16, 16, 8))
SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def regions(shared_data, tmp_path):
    """Three real H&E regions (96 × 96 PNG) of the shared slide."""
    paths = []
    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        for i, (y, x) in enumerate([(1200, 1200), (1500, 800), (2000, 1000)]):
            paths.append(tmp_path / f"region{i}.png")
            skio.imsave(paths[-1], s.read(y, x, y + 96, x + 96), check_contrast=False)
    return paths


def _model(path, seed=0):
    torch.manual_seed(seed)
    return save_model(CiNuSegModel.new(["Epithelial"], TINY), path)


def _segment(images, model, out, *more):
    return [
        "segment",
        *map(str, images),
        "--model",
        str(model),
        "--out",
        str(out),
        "--tile",
        "64",
        "--overlap",
        "16",
        "--device",
        "cpu",
        *more,
    ]


# --- an existing output is skipped only when it is this run's result ------------------------------


def test_masks_of_another_model_or_settings_are_not_kept_as_done(tmp_path, regions, capsys):
    first, other = _model(tmp_path / "first.cinuseg.pt"), _model(tmp_path / "other.cinuseg.pt", seed=1)
    out = tmp_path / "out"
    image = regions[:1]
    assert main(_segment(image, first, out)) == 0
    masks = out / "region0.masks.tif"
    kept = _digest(masks)
    capsys.readouterr()
    assert main(_segment(image, other, out, "-q")) == 2  # said even with -q
    err = capsys.readouterr().err
    assert "region0.masks.tif exists but was made by another model" in err and "exists: skipped" not in err
    assert "delete it (and region0.nuclei.csv)" in err and "or give another --out" in err
    assert main(_segment(image, first, out, "-q", "--min-area", "10")) == 2
    assert "was made with other settings: min_area_um2 3.0 (now 10.0)" in capsys.readouterr().err
    assert _digest(masks) == kept  # never replaced unasked
    assert main(_segment(image, first, out)) == 0  # this run's result: skipped, as before
    assert "(the same model and settings): skipped" in capsys.readouterr().err
    assert _digest(masks) == kept


# --- resume after a kill ------------------------------------------------------------------------


def test_a_rerun_after_a_kill_finishes_every_image(tmp_path, regions, capsys):
    """A kill (SIGKILL: no clean-up at all) mid-image leaves its claim, its scratch class map and
    instance map, and maybe its table; the rerun recognises them as a dead run's, removes them,
    and does every image."""
    model, out = _model(tmp_path / "m.cinuseg.pt"), tmp_path / "out"
    args = _segment(regions, model, out, "--in-memory-limit", "100")  # class maps on disk, as a slide's
    assert main(_segment(regions[:1], model, out, "--in-memory-limit", "100")) == 0
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    (out / ".region1.masks.tif.lock").write_text(f"{dead} {socket.gethostname()}")
    for scratch in (".region1.masks.tif.zarr", ".region1.masks.tif.instances.zarr"):
        (out / scratch).mkdir()
        (out / scratch / "zarr.json").write_text("{}")
    orphan = "nucleus,class\n1,Epithelial\n"
    (out / "region1.nuclei.csv").write_text(orphan)  # written before its masks
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "removed" in err and "left by a run that was killed" in err
    assert sorted(p.name for p in out.iterdir()) == [
        f"region{i}.{kind}" for i in range(3) for kind in ("masks.tif", "nuclei.csv")
    ]  # every image done, nothing hidden left
    assert (out / "region1.nuclei.csv").read_text() != orphan  # measured anew, with its masks


# --- signals --------------------------------------------------------------------------------------

# Runs `cinuseg` in a process of its own, with one step slowed down and announced on stdout, so
# that a signal can be sent while that step runs.
SLOWED = textwrap.dedent(
    """
    import sys, time
    from napari_cinuseg.inference import segmentation
    from napari_cinuseg.io import export

    if sys.argv[1] == "tiles":
        def forward(*a, **k):
            print("READY", flush=True)
            time.sleep(60)
        segmentation._forward_tiles = forward
    else:  # while the masks file is written, a tile at a time
        real = export._tiles
        def tiles(*a, **k):
            for tile in real(*a, **k):
                print("READY", flush=True)
                time.sleep(0.2)
                yield tile
        export._tiles = tiles
    from napari_cinuseg.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def _run_until_ready(code, argv, env_path=SRC):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(env_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "READY" in line or not line:
            break
    return proc


@pytest.mark.parametrize("during", ["tiles", "masks"])
def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path, regions, during):
    model, out = _model(tmp_path / "m.cinuseg.pt"), tmp_path / "out"
    proc = _run_until_ready(SLOWED, [during, *_segment(regions[:1], model, out, "--in-memory-limit", "100")])
    try:
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == []  # no lock, .zarr, .tmp, table or masks


def test_ctrl_c_while_pytorch_loads_is_a_cancel_not_a_traceback(tmp_path, regions):
    model = _model(tmp_path / "m.cinuseg.pt")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    argv = _segment(regions[:1], model, tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-m", "napari_cinuseg", *argv], stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(0.8)  # PyTorch is loading (it takes seconds)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "cancelled" in err and "Traceback" not in err, err


def test_ctrl_c_while_the_parser_loads_the_methods_is_a_cancel(monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt  # `step` and `benchmark` load the method registry (PyTorch) here

    monkeypatch.setattr(entry, "build_parser", interrupted)
    try:
        code = main(["step", "--help"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command as a traceback")
    assert code == 130 and "cancelled" in capsys.readouterr().err


def test_ctrl_c_during_the_masks_save_leaves_no_hidden_file(tmp_path, monkeypatch):
    from napari_cinuseg.io import export

    real = export._tiles

    def slow(*a, **k):
        for tile in real(*a, **k):
            time.sleep(0.05)
            yield tile

    monkeypatch.setattr(export, "_tiles", slow)
    class_map = np.zeros((600, 600), np.uint8)
    class_map[100:200, 100:200] = 1
    path = tmp_path / "a.masks.tif"
    job = export_masks_job(class_map, path, ["Epithelial"], poll=0.01)
    next(job)
    while not list(tmp_path.glob(".a.masks.tif.*.tmp")):
        next(job)
    with pytest.raises(KeyboardInterrupt):
        job.throw(KeyboardInterrupt)  # Ctrl-C lands while the file is written
    time.sleep(0.5)  # what the writer would still do, it would have done by now
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .a.masks.tif.<pid>-….tmp, no masks file
