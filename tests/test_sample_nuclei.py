"""benchmarks/sample_nuclei.py: the sample's objects and their areas, per class."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("sample_nuclei", ROOT / "benchmarks" / "sample_nuclei.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_areas_are_in_square_micrometres_per_class():
    bench = _script()
    labels = np.zeros((20, 20), np.uint32)
    labels[:2, :2] = 1  # 4 px
    labels[5:9, 5:9] = 2  # 16 px
    labels[10:16, 10:16] = 3  # 36 px
    classes = np.array([0, 1, 2, 2])
    r = bench.summary(labels, classes, ["Epithelial", "Spindle-shaped"], 0.5)
    assert r["all"]["objects"] == 3 and r["all"]["median_um2"] == 4.0  # 16 px of 0.25 µm²
    assert r["Epithelial"] == {"objects": 1, "median_um2": 1.0, "mean_um2": 1.0, "q1_um2": 1.0, "q3_um2": 1.0}
    assert r["Spindle-shaped"]["objects"] == 2 and r["Spindle-shaped"]["mean_um2"] == 6.5
    assert bench.summary(labels * 0, classes[:1], ["Epithelial"], 0.5)["Epithelial"] == {"objects": 0}
