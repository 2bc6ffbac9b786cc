"""benchmarks/nuclei_objects.py: its measurement on a slice of the real validation data, with a
tiny model (the figures themselves are in docs/benchmarks-nuclei.md)."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("nuclei_objects", ROOT / "benchmarks" / "nuclei_objects.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_measure_scores_both_sets_and_both_instance_rules(shared_data):
    from napari_cinuseg import CiNuSegModel
    from napari_cinuseg.model.network import Architecture

    bench = _script()
    bench._CONSEP_ROOT = shared_data / "consep"
    (_, c_val), (_, m_val) = bench._splits(shared_data, 0.2, 0)
    assert len(m_val.items) == 6 and len(c_val.sources) == 5  # validation by slide / source image
    assert not set(m_val.sources) & set(bench._splits(shared_data, 0.2, 0)[1][0].sources)
    c_val = c_val.subset(c_val.sources[:1])
    c_val.items = c_val.items[:2]
    m_val = m_val.subset(m_val.sources[:1])
    torch.manual_seed(0)
    model = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], Architecture("resnet18", "unet", (32, 16, 16, 8)))
    model.pixel_size = 0.25
    r = bench.measure_model(model, c_val, m_val)
    for name in ("MoNuSeg", "CoNSeP"):
        for m in ("watershed", "components"):
            s = r[name][m]
            assert s["images"] == (1 if name == "MoNuSeg" else 2) and 0 <= s["f1"] <= 1 and 0 <= s["aji"] <= 1
            assert s["true"] > 0
    assert set(r["CoNSeP"]["class_dice"]) == {"Epithelial", "Spindle-shaped"}
    again = bench.measure_model(model, c_val, m_val, cached=r)  # resumed: nothing recomputed
    assert again["MoNuSeg"] == r["MoNuSeg"] and again["CoNSeP"] == r["CoNSeP"]
    text = bench.table({"tiny": r})
    assert "| tiny | watershed |" in text and "HoVer-Net, published" in text and "82.6" in text
