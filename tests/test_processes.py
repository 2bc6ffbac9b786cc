"""A job step in a separate process (the panel's export measures nuclei there)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from napari_cinuseg import drain
from napari_cinuseg.runtime.processes import SHARED_MIN_BYTES, run_in_process


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()


def _real_map(consep) -> tuple[np.ndarray, list[str]]:
    """Sixteen real CoNSeP patches side by side (1024², at the shared-memory size)."""
    maps = [np.where(it.labels == 255, 0, it.labels).astype(np.uint8) for it in consep.items[:16]]
    return np.block([maps[r * 4 : r * 4 + 4] for r in range(4)]), consep.class_names


def test_measuring_in_a_separate_process_writes_the_same_table(consep, tmp_path):
    from napari_cinuseg.analysis.measurements import measure_nuclei_to_csv

    cm, names = _real_map(consep)
    assert cm.nbytes >= SHARED_MIN_BYTES  # the map goes through shared memory
    before = _shm()
    here = measure_nuclei_to_csv(cm, names, 0.25, tmp_path / "here.csv")
    there = drain(run_in_process(measure_nuclei_to_csv, cm, names, 0.25, tmp_path / "there.csv"))
    assert there == here > 10
    assert (tmp_path / "there.csv").read_text() == (tmp_path / "here.csv").read_text()
    assert _shm() == before  # the shared block is gone


def test_a_failure_in_the_process_is_raised_here_with_its_type(tmp_path):
    from napari_cinuseg.analysis.measurements import measure_nuclei_to_csv

    with pytest.raises(ValueError, match="2-D class map"):
        drain(run_in_process(measure_nuclei_to_csv, np.zeros((4, 4, 3), np.uint8), ["a"], None, tmp_path / "x.csv"))
    assert not (tmp_path / "x.csv").exists()


def test_closing_the_job_ends_the_process(monkeypatch):
    import subprocess

    from napari_cinuseg.runtime import processes

    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(
        processes.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1]
    )
    job = run_in_process(time.sleep, 120)
    next(job)
    (proc,) = started
    assert proc.poll() is None  # sleeping
    t0 = time.perf_counter()
    job.close()  # a cancelled export
    assert time.perf_counter() - t0 < 10
    assert proc.poll() is not None  # ended, not left sleeping


def test_export_measures_in_a_process_from_an_on_disk_map(consep, tmp_path):
    """The panel's export (``measure_in_process``) of a map kept on disk (zarr) gives the CLI's CSV."""
    import zarr

    from napari_cinuseg.inference.instances import nuclei_of
    from napari_cinuseg.session.export import export_nuclei

    cm, names = _real_map(consep)
    on_disk = zarr.open_array(str(tmp_path / "map.zarr"), mode="w", shape=cm.shape, dtype=cm.dtype, chunks=(512, 512))
    on_disk[:] = cm
    nuclei = nuclei_of(cm, pixel_size_um=0.25)
    colours = ["#ff0000", "#00ff00", "#0000ff", "#ffff00"][: len(names)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, csv_a, _ = drain(
        export_nuclei(on_disk, nuclei, tmp_path / "a" / "m.masks.tif", names, colours, "id", pixel_size=0.25)
    )
    _, csv_b, _ = drain(
        export_nuclei(
            on_disk,
            nuclei,
            tmp_path / "b" / "m.masks.tif",
            names,
            colours,
            "id",
            pixel_size=0.25,
            measure_in_process=True,
        )
    )
    assert csv_b.read_text() == csv_a.read_text() and len(csv_a.read_text().splitlines()) > 10


def test_without_room_in_shared_memory_a_temporary_file_carries_the_map(consep, tmp_path, monkeypatch):
    """A container may cap /dev/shm at 64 MB (writing past it would kill napari): then the map
    goes through a temporary .npy file, removed afterwards."""
    import tempfile

    from napari_cinuseg.analysis.measurements import measure_nuclei_to_csv
    from napari_cinuseg.runtime import processes

    cm, names = _real_map(consep)
    monkeypatch.setattr(processes, "shared_memory_room", lambda nbytes: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []
    real_mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: made.append(real_mkstemp(*a, **k)) or made[-1])
    before = _shm()
    here = measure_nuclei_to_csv(cm, names, 0.25, tmp_path / "here.csv")
    assert drain(run_in_process(measure_nuclei_to_csv, cm, names, 0.25, tmp_path / "there.csv")) == here
    assert (tmp_path / "there.csv").read_text() == (tmp_path / "here.csv").read_text()
    (npy,) = [path for _, path in made if path.endswith(".npy")]  # the map went through a file
    assert _shm() == before and not Path(npy).exists()


def test_shared_memory_room_is_measured():
    from napari_cinuseg.runtime.processes import shared_memory_room

    assert shared_memory_room(1 << 20)
    assert not shared_memory_room(1 << 60) or not Path("/dev/shm").is_dir()
