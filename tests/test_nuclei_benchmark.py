"""benchmarks/nuclei_objects.py: its measurement on a slice of the real validation data, with a
tiny model (the figures themselves are in docs/benchmarks-nuclei.md)."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("nuclei_objects", ROOT / "benchmarks" / "nuclei_objects.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
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


def _discs(size=96, ids=(3, 17, 250, 1000), radius=7):
    """A pink image with dark nuclei (discs of ``radius`` px) and their instance map (the given ids)."""
    import numpy as np

    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.uint16)
    image = np.full((size, size, 3), (230, 180, 210), np.uint8)
    for k, i in enumerate(ids):
        cy, cx = 20 + (k // 2) * 44, 20 + (k % 2) * 44
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        inst[disc] = i
        image[disc] = (70, 40, 120)
    return image, inst


def test_downsampling_to_20x_keeps_every_label_and_halves_its_size():
    import numpy as np

    bench = _script()
    image, inst = _discs()
    classes = np.where(inst > 0, 3, 0).astype(np.uint8)
    assert bench.pixel_size_at(20) == 0.5 and bench.pixel_size_at(40) == 0.25
    small, (small_inst, small_cls) = bench.downsample(image, [inst, classes], 2.0)
    assert small.shape == (48, 48, 3) and small.dtype == np.uint8
    assert small_inst.dtype == inst.dtype and small_inst.shape == (48, 48)
    assert set(np.unique(small_inst)) == set(np.unique(inst))  # the ids themselves, none new, none lost
    assert set(np.unique(small_cls)) == {0, 3}
    for i in (3, 17, 250, 1000):
        rows = np.flatnonzero((inst == i).any(1))
        small_rows = np.flatnonzero((small_inst == i).any(1))
        assert abs(len(small_rows) - len(rows) / 2) <= 2  # half as tall, give or take the tips
        assert 0.2 < (small_inst == i).sum() / (inst == i).sum() < 0.3  # a quarter of the area
        assert (small_cls[small_inst == i] == 3).all()  # the class map stays aligned with the ids
    # the image is averaged (anti-aliased), not picked: a nucleus's centre keeps its colour
    assert tuple(small[10, 10]) == (70, 40, 120)


def test_20x_instances_are_split_with_the_pixel_size_of_the_image():
    import numpy as np

    from napari_cinuseg.inference.instances import split_nuclei

    bench = _script()
    cm = np.zeros((60, 60), np.uint8)
    yy, xx = np.mgrid[:60, :60]
    cm[((yy - 30) ** 2 + (xx - 24) ** 2 <= 36) | ((yy - 30) ** 2 + (xx - 34) ** 2 <= 36)] = 1  # two touching nuclei
    cm[5:8, 5:8] = 1  # 9 px: 2.25 µm² at 0.5 µm/px, under 3 µm²
    cm[50:54, 50:54] = 1  # 16 px: 4 µm² at 0.5 µm/px, kept
    at20 = bench._instances(cm, "watershed", 0.5)
    assert np.array_equal(at20, split_nuclei(cm, method="watershed", min_area_px=12, min_distance_px=3)[0])
    assert at20.max() == 3  # the pair split, the speck dropped, the 4 µm² nucleus kept
    at40 = bench._instances(cm, "watershed", 0.25)  # 40× as before: 48 px and markers 6 px apart
    assert np.array_equal(at40, split_nuclei(cm, method="watershed", min_area_px=48, min_distance_px=6)[0])


def _test_folder(root, size=96):
    import numpy as np
    from skimage import io as skio

    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    image, inst = _discs(size)
    skio.imsave(root / "images" / "a.png", image, check_contrast=False)
    skio.imsave(root / "instances" / "a.png", inst, check_contrast=False)
    skio.imsave(root / "images" / "b.tif", image[::-1], check_contrast=False)
    np.save(root / "instances" / "b.npy", inst[::-1].astype(np.int32))
    return image, inst


def test_test_data_is_read_whole_or_refused_with_what_to_do(tmp_path, capsys):
    import numpy as np
    import pytest
    from skimage import io as skio

    bench = _script()
    image, inst = _test_folder(tmp_path / "centre-b")
    t = bench.read_test_data(tmp_path / "centre-b", 0.5)
    assert t.name == "test:centre-b" and t.pixel_size == 0.5
    assert [(i.name, lp.name) for i, lp in t.pairs] == [("a.png", "a.png"), ("b.tif", "b.npy")]
    img, truth = bench._read_test_pair(*t.pairs[1])
    assert np.array_equal(img, image[::-1]) and np.array_equal(truth, inst[::-1])

    with pytest.raises(FileNotFoundError, match="no such folder; give a folder laid out as DIR/images"):
        bench.read_test_data(tmp_path / "nowhere")
    skio.imsave(tmp_path / "centre-b" / "images" / "c.png", image, check_contrast=False)
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 images .* no instance map .*\(c\.png\): add <name>"):
        bench.read_test_data(tmp_path / "centre-b")
    skio.imsave(tmp_path / "centre-b" / "instances" / "c.png", inst[:50], check_contrast=False)
    with pytest.raises(ValueError, match=r"c\.png is 50×96 .* but its image c\.png is 96×96: .* height and width"):
        bench.read_test_data(tmp_path / "centre-b")
    # the command refuses before reading any data set or model
    assert bench.main(["measure", "--out", str(tmp_path / "out"), "--test-data", str(tmp_path / "nowhere")]) == 2
    assert "error: --test-data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_measure_at_20x_with_a_test_set_caches_apart_from_40x(tmp_path):
    """A tiny model on tiny synthetic sets: every set scored at 0.5 µm/px, the test set beside them,
    each kept under its own inference key; 40× keeps the keys it always had."""
    import numpy as np
    from skimage import io as skio

    from napari_cinuseg import CiNuSegModel
    from napari_cinuseg.datasets.labelled import LabelledImage, LabelledSet
    from napari_cinuseg.datasets.nucleus_only import NucleusSet
    from napari_cinuseg.model.network import Architecture

    bench = _script()
    image, inst = _discs()
    (tmp_path / "consep" / "train" / "instances").mkdir(parents=True)
    skio.imsave(tmp_path / "consep" / "train" / "instances" / "train_1_000.png", inst, check_contrast=False)
    bench._CONSEP_ROOT = tmp_path / "consep"
    classes = np.where(inst > 0, 3, 0).astype(np.uint8)
    c_val = LabelledSet(
        ["Other", "Inflammatory", "Epithelial", "Spindle-shaped"], [LabelledImage(image, classes, "1", "train_1_000")]
    )
    m_val = NucleusSet([], [LabelledImage(image, (inst > 0).astype(np.uint8), "m", "m")], 0.25, {"m": inst})
    _test_folder(tmp_path / "centre-b")
    tests = [bench.read_test_data(tmp_path / "centre-b")]
    torch.manual_seed(0)
    model = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], Architecture("resnet18", "unet", (32, 16, 16, 8)))
    model.pixel_size = 0.25

    r = bench.measure_model(model, c_val, m_val, magnification=20, tests=tests)
    assert r["magnification"] == 20 and r["min_area_px"] == 12
    for name in ("MoNuSeg", "CoNSeP", "test:centre-b"):
        assert r["at"][name]["pixel_size_um"] == 0.5 and r["at"][name]["downsampled_by"] == 2
        assert r["at"][name]["true_nuclei"] == 4 * r[name]["watershed"]["images"]
        assert r[name]["watershed"]["true"] == r["at"][name]["true_nuclei"]  # none lost at 20×
        assert "downsampled to 0.5 µm/px" in r["inference"][name]
    assert r["test:centre-b"]["components"]["images"] == 2 and str(tests[0].root) in r["inference"]["test:centre-b"]
    again = bench.measure_model(model, c_val, m_val, cached=r, magnification=20, tests=tests)
    assert all(again[n] == r[n] for n in ("MoNuSeg", "CoNSeP", "test:centre-b")) and again["at"] == r["at"]
    at40 = bench.measure_model(model, c_val, m_val, cached=r)  # a 20× result is never taken for 40×
    assert {k: v for k, v in at40["inference"].items()} == bench.INFERENCE
    assert at40["at"]["MoNuSeg"] == {"pixel_size_um": 0.25, "min_area_px": 48, "downsampled_by": 1.0}
    assert bench.cache_name(model.id) == f"measure-{model.id[:12]}.json"
    assert bench.cache_name(model.id, 20.0) == f"measure-{model.id[:12]}-20x.json"
    assert bench.cache_name(model.id, 20.0, "0badf00d") == f"measure-{model.id[:12]}-0badf00d-20x.json"
    text = bench.table({"tiny": r})
    assert text.startswith("At 20×:") and "| tiny | watershed |" in text
    assert "| tiny | watershed | centre-b | 2 | 0.5 |" in text


def test_files_of_one_model_with_other_weights_are_cached_apart(tmp_path):
    """An fp16 file and its 8-bit copy share the model id; their measurements must not."""
    bench = _script()
    a, b = tmp_path / "a.cinuseg.pt", tmp_path / "b.cinuseg.pt"
    a.write_bytes(b"fp16 weights")
    b.write_bytes(b"8-bit weights")
    assert bench.weights_key(a) != bench.weights_key(b) and len(bench.weights_key(a)) == 8
    assert bench.cache_name("x" * 32, 40.0, bench.weights_key(a)) != bench.cache_name(
        "x" * 32, 40.0, bench.weights_key(b)
    )
