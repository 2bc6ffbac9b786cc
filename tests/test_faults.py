"""Faults: cancel, crash, kill and out-of-memory at the worst moment lose nothing and leave no
half-written file (docs/reliability.md has the table of cases). Tiny models on the CPU."""

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_cinuseg import CiNuSegModel, drain, load_model, save_model, train_base, train_step
from napari_cinuseg.cli import main
from napari_cinuseg.inference import segmentation
from napari_cinuseg.inference.segmentation import segment
from napari_cinuseg.io.export import read_masks
from napari_cinuseg.model.network import Architecture, NucleiSegNet
from napari_cinuseg.runtime import devices
from napari_cinuseg.runtime.events import MemoryReduced, Saved

TINY = Architecture("resnet18", "unet", (32, 16, 16, 8))


def _tree(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def prior(tmp_path):
    torch.manual_seed(0)
    return save_model(CiNuSegModel.new(["Epithelial", "Spindle-shaped"], TINY), tmp_path / "prior.cinuseg.pt")


def _fake_oom(limit):
    """NucleiSegNet.forward that runs out of memory above ``limit`` images per batch."""
    real = NucleiSegNet.forward

    def forward(self, x):
        if x.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(self, x)

    return forward


def test_cancel_during_saving_leaves_no_file_and_the_prior_unchanged(prior, few_pairs, tiny, tmp_path, monkeypatch):
    """Ctrl-C (or a cancel that interrupts) while the new model is being written."""
    before = _tree(tmp_path)
    real_save = torch.save

    def interrupted(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # the temporary file is complete …
        raise KeyboardInterrupt  # … but the rename never happens

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        drain(
            train_step(
                load_model(prior), few_pairs[1], ["Other"], tiny.replace(iterations=2), out=tmp_path / "new.cinuseg.pt"
            )
        )
    assert _tree(tmp_path) == before  # no new file, no temporary file, the prior as it was


def test_a_kill_during_a_save_keeps_the_previous_file(tmp_path):
    """A process killed in the middle of writing (no Python clean-up at all): the file it was
    replacing is intact and loads."""
    torch.manual_seed(0)
    path = save_model(CiNuSegModel.new(["Epithelial"], TINY), tmp_path / "m.cinuseg.pt")
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, torch
        from napari_cinuseg import CiNuSegModel, load_model, save_model

        def killed(obj, f, *a, **k):
            with open(f, "wb") as fh:
                fh.write(b"half a model")
                fh.flush()
            os._exit(9)  # like SIGKILL: no finally, no atexit

        torch.save = killed
        model = load_model({str(path)!r})
        save_model(CiNuSegModel.new(["Other"], model.arch), {str(path)!r}, overwrite=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert path.read_bytes() == before
    assert load_model(path).class_names == ["Epithelial"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m.cinuseg.pt"]
    assert all(
        n.startswith(".m.cinuseg.pt.") and n.endswith(".tmp") for n in leftovers
    )  # hidden, never mistaken for a model


def test_out_of_memory_in_training_halves_the_batch_and_goes_on(prior, few_pairs, tiny, tmp_path, monkeypatch):
    released = []
    monkeypatch.setattr(NucleiSegNet, "forward", _fake_oom(limit=2))
    monkeypatch.setattr(devices, "release", lambda dev: released.append(dev))
    events = []
    model = drain(
        train_step(
            load_model(prior),
            few_pairs[1],
            ["Other"],
            tiny.replace(iterations=3, batch_size=8),
            out=tmp_path / "s.cinuseg.pt",
        ),
        events.append,
    )
    reduced = [e for e in events if isinstance(e, MemoryReduced)]
    assert [(e.before, e.after) for e in reduced] == [(8, 4), (4, 2)]
    assert "ran out of memory with a batch of 8; going on with 4" in reduced[0].message
    assert model.steps[-1].results["iterations"] == 3
    assert model.steps[-1].results["memory"] == [
        "out of memory at batch 8: went on with 4",
        "out of memory at batch 4: went on with 2",
    ]
    assert any(isinstance(e, Saved) for e in events)
    assert len(released) >= 3  # after each failure, and at the end


def test_out_of_memory_even_with_batch_one_is_a_clear_error(prior, few_pairs, tiny, tmp_path, monkeypatch):
    before = _tree(tmp_path)
    monkeypatch.setattr(NucleiSegNet, "forward", _fake_oom(limit=0))
    with pytest.raises(MemoryError, match="batch of one 64-px crop; choose a smaller crop size, or the CPU"):
        drain(
            train_step(
                load_model(prior),
                few_pairs[1],
                ["Other"],
                tiny.replace(iterations=3, batch_size=2),
                out=tmp_path / "s.cinuseg.pt",
            )
        )
    assert _tree(tmp_path) == before


def test_out_of_memory_in_segmentation_takes_fewer_tiles_with_the_same_result(prior, shared_data, monkeypatch):
    from napari_cinuseg.io.slides import Slide

    model = load_model(prior)
    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        region = s.read(1200, 1000, 1800, 1700)
    expected = drain(segment(model, region, tile=256, overlap=32, batch_size=4, device="cpu", min_tissue=0))
    monkeypatch.setattr(NucleiSegNet, "forward", _fake_oom(limit=1))
    events = []
    got = drain(segment(model, region, tile=256, overlap=32, batch_size=4, device="cpu", min_tissue=0), events.append)
    reduced = [e for e in events if isinstance(e, MemoryReduced)]
    assert reduced and reduced[0].what == "tiles" and reduced[-1].after == 1
    assert np.array_equal(got, expected)
    monkeypatch.setattr(NucleiSegNet, "forward", _fake_oom(limit=0))
    with pytest.raises(MemoryError, match="single tile of 256 px; choose a smaller tile size"):
        drain(segment(model, region, tile=256, overlap=32, device="cpu"))


def test_interrupted_batch_segmentation_resumes_without_redoing(prior, shared_data, tmp_path, monkeypatch, capsys):
    from skimage import io as skio

    from napari_cinuseg.io.slides import Slide

    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        for i, (y, x) in enumerate([(1200, 1200), (1500, 800), (2000, 1000)]):  # all tissue
            skio.imsave(tmp_path / f"region{i}.png", s.read(y, x, y + 300, x + 300), check_contrast=False)
    images = [str(tmp_path / f"region{i}.png") for i in range(3)]
    out = tmp_path / "masks"
    args = [
        "segment",
        *images,
        "--model",
        str(prior),
        "--out",
        str(out),
        "--tile",
        "256",
        "--overlap",
        "32",
        "--device",
        "cpu",
    ]
    calls = {"n": 0}
    real = segmentation._forward_tiles

    def interrupted(*a, **k):
        if (out / "region0.masks.tif").exists():
            calls["n"] += 1
            if calls["n"] == 2:  # the second image's second batch: Ctrl-C
                raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(segmentation, "_forward_tiles", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(args + ["--batch-size", "2"])
    assert stop.value.code == 130
    assert sorted(p.name for p in out.iterdir()) == [
        "region0.masks.tif",
        "region0.nuclei.csv",
    ]  # no half-written second
    first = _tree(out)
    monkeypatch.setattr(segmentation, "_forward_tiles", real)
    capsys.readouterr()
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"region{i}.{k}" for i in range(3) for k in ("masks.tif", "nuclei.csv")
    )
    assert {k: v for k, v in _tree(out).items() if k in first} == first  # finished work not redone
    for i in range(3):
        assert read_masks(out / f"region{i}.masks.tif")[0].shape == (300, 300)


def test_same_seed_same_model_and_masks_on_the_cpu(few_pairs, tiny):
    runs = [
        drain(train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=3))) for _ in range(2)
    ]
    image = few_pairs[0][0].image
    masks = [drain(segment(m, image, tile=128, overlap=32, device="cpu", min_tissue=0)) for m in runs]
    assert np.array_equal(masks[0], masks[1])
    probs = [m.predict(image, torch.device("cpu")) for m in runs]
    assert np.array_equal(probs[0], probs[1])


# --- one writer per output; write failures lose no work --------------------------------------------


@pytest.fixture
def other_run():
    """A live process that is not this one: the holder of a claim in another run's place."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _hold(target, pid):
    import socket

    from napari_cinuseg.io.claims import lock_path

    lock_path(target).write_text(f"{pid} {socket.gethostname()}")


def _step_args(shared_data, prior, out):
    return [
        "step",
        "--data",
        str(shared_data / "consep"),
        "--prior",
        str(prior),
        "--new-class",
        "Other",
        "--iterations",
        "2",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def test_a_second_step_with_the_same_out_is_refused_before_training(prior, shared_data, tmp_path, other_run, capsys):
    out = tmp_path / "same.cinuseg.pt"
    _hold(out, other_run)  # the first run is training
    assert main(_step_args(shared_data, prior, out)) == 2
    err = capsys.readouterr().err
    assert f"same.cinuseg.pt is being written by another cinuseg run (process {other_run})" in err
    assert "step 1 (" not in err and not out.exists()  # refused before any training


def test_a_claim_left_by_a_killed_run_is_taken_over(prior, shared_data, tmp_path, capsys):
    out = tmp_path / "new.cinuseg.pt"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout
    _hold(out, int(dead))
    assert main(_step_args(shared_data, prior, out)) == 0
    assert "no longer running" in capsys.readouterr().err
    assert load_model(out).class_names == ["Epithelial", "Spindle-shaped", "Other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.cinuseg.pt", "prior.cinuseg.pt"]  # no lock left


def test_a_file_written_meanwhile_is_kept_and_the_model_saved_elsewhere(
    prior, shared_data, tmp_path, monkeypatch, capsys
):
    """Another program (not a cinuseg run: it takes no claim) writes the same file during the
    training: neither replaces the other, and this run does not say "saved"."""
    import tempfile

    from napari_cinuseg.training import steps

    out, elsewhere = tmp_path / "same.cinuseg.pt", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    real = steps.train_step

    def and_meanwhile(*a, **k):
        model = yield from real(*a, **k)
        out.write_bytes(b"the other program's file")
        return model

    monkeypatch.setattr(steps, "train_step", and_meanwhile)
    assert main(_step_args(shared_data, prior, out)) == 2
    err = capsys.readouterr().err
    assert out.read_bytes() == b"the other program's file"
    (rescued,) = elsewhere.iterdir()
    assert f"was saved to {rescued} instead" in err and "\nsaved " not in err
    assert load_model(rescued).class_names == ["Epithelial", "Spindle-shaped", "Other"]


@pytest.mark.parametrize("failure", ["enforce", "enospc"])
def test_a_full_disk_at_the_save_keeps_the_trained_model(prior, shared_data, tmp_path, monkeypatch, capsys, failure):
    import errno
    import tempfile

    out, elsewhere = tmp_path / "models" / "new.cinuseg.pt", tmp_path / "elsewhere"
    out.parent.mkdir()
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    real_save = torch.save

    def full(obj, f, *a, **k):
        if str(out.parent) in str(f):  # that disk is full; the temporary folder's is not
            if failure == "enforce":
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1364")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    assert main(_step_args(shared_data, prior, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    (rescued,) = elsewhere.iterdir()
    assert err[-1].startswith(f"cinuseg: error: {out} could not be written: ")
    assert ("the disk is full" if failure == "enospc" else "inline_container") in err[-1]
    assert f"the trained model was saved to {rescued} instead" in err[-1]
    assert load_model(rescued).class_names == ["Epithelial", "Spindle-shaped", "Other"]
    assert list(out.parent.iterdir()) == []  # no temporary file, no lock


def test_a_folder_that_cannot_be_written_is_found_before_training(prior, shared_data, tmp_path, monkeypatch, capsys):
    import errno
    import shutil

    from napari_cinuseg.io import claims

    out = tmp_path / "readonly" / "new.cinuseg.pt"
    out.parent.mkdir()
    real_open = claims.os.open

    def read_only(path, *a, **k):
        if str(out.parent) in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(claims.os, "open", read_only)
    assert main(_step_args(shared_data, prior, out)) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: {out.parent} cannot be written" in err and "step 1 (" not in err
    monkeypatch.setattr(claims.os, "open", real_open)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=500_000))  # a full disk
    assert main(_step_args(shared_data, prior, tmp_path / "new.cinuseg.pt")) == 2
    err = capsys.readouterr().err
    assert "only 0.5 MB are free on its disk" in err and "nothing was trained" in err and "step 1 (" not in err


def _region(shared_data, tmp_path):
    from skimage import io as skio

    from napari_cinuseg.io.slides import Slide

    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        skio.imsave(tmp_path / "region.png", s.read(1200, 1200, 1456, 1456), check_contrast=False)
    return tmp_path / "region.png"


def test_two_segmentations_into_the_same_out_never_share_work(prior, shared_data, tmp_path, other_run, capsys):
    image, out = _region(shared_data, tmp_path), tmp_path / "masks"
    out.mkdir()
    target = out / "region.masks.tif"
    scratch = out / ".region.masks.tif.zarr"  # the other run's class map, being built on disk
    scratch.mkdir()
    (scratch / "chunk").write_bytes(b"the other run's pixels")
    _hold(target, other_run)
    args = [
        "segment",
        str(image),
        "--model",
        str(prior),
        "--out",
        str(out),
        "--tile",
        "128",
        "--overlap",
        "16",
        "--device",
        "cpu",
    ]
    for limit in ("1000", "100000000"):  # on disk and in memory
        assert main(args + ["--in-memory-limit", limit]) == 2
        err = capsys.readouterr().err
        assert f"region.masks.tif is being written by another cinuseg run (process {other_run})" in err
        assert "allow overwriting" not in err and "saved" not in err
        assert (scratch / "chunk").read_bytes() == b"the other run's pixels" and not target.exists()


def test_a_full_disk_in_segmentation_is_one_line_and_leaves_no_orphan_table(
    prior, shared_data, tmp_path, monkeypatch, capsys
):
    import errno

    import tifffile

    image, out = _region(shared_data, tmp_path), tmp_path / "masks"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # no file name, as tifffile's

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    args = [
        "segment",
        str(image),
        "--model",
        str(prior),
        "--out",
        str(out),
        "--tile",
        "128",
        "--overlap",
        "16",
        "--device",
        "cpu",
    ]
    for limit in ("1000", "100000000"):
        assert main(args + ["--in-memory-limit", limit]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        full = (
            f"cinuseg: error: {out / 'region.masks.tif'} could not be written: the disk is full "
            f"(no space left on device); free space in {out} or choose another place"
        )
        assert err[-1] == full
        assert list(out.iterdir()) == []  # no masks, no orphan CSV, no scratch folder, no lock


def test_the_temporary_file_of_a_killed_save_is_removed_by_the_next(tmp_path):
    from napari_cinuseg.io.atomic import StaleFileNotice

    torch.manual_seed(0)
    path = save_model(CiNuSegModel.new(["Epithelial"], TINY), tmp_path / "m.cinuseg.pt")
    script = textwrap.dedent(
        f"""
        import os, torch
        from napari_cinuseg import CiNuSegModel, load_model, save_model

        def killed(obj, f, *a, **k):
            with open(f, "wb") as fh:
                fh.write(b"half a model" * 100000)
            os._exit(9)

        torch.save = killed
        save_model(CiNuSegModel.new(["Other"], load_model({str(path)!r}).arch), {str(path)!r}, overwrite=True)
        """
    )
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120).returncode == 9
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.warns(
        StaleFileNotice, match=f"removed {left} \\(1.2 MB\\), left by a save of m.cinuseg.pt that was killed"
    ):
        save_model(load_model(path), path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.cinuseg.pt"]


def test_a_full_disk_while_a_class_map_is_built_on_disk_names_it(prior, tmp_path, monkeypatch):
    """zarr's write fails without a file name ("[Errno 28] No space left on device"): the
    segmentation names the class map it was writing, and leaves no part of it."""
    import errno

    import zarr

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    image = np.random.default_rng(0).integers(0, 200, (160, 160, 3), dtype=np.uint8)
    target = tmp_path / "map.zarr"
    with pytest.raises(OSError) as err:
        drain(segment(load_model(prior), image, tile=64, overlap=16, device="cpu", min_tissue=0, out=target))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.cinuseg.pt"]
