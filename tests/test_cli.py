"""The ``cinuseg`` command end to end on real CoNSeP patches (a few iterations)."""

import json

import pytest

from napari_cinuseg.cli import main


def test_train_base_step_info_evaluate(shared_data, tmp_path, capsys):
    data = str(shared_data / "consep")
    common = ["--data", data, "--iterations", "2", "--batch-size", "2", "--crop-size", "64", "--device", "cpu"]
    base, step = tmp_path / "base.cinuseg.pt", tmp_path / "step1.cinuseg.pt"
    assert main(["train-base", *common, "--classes", "Epithelial,Spindle-shaped", "--out", str(base)]) == 0
    assert main(["step", *common, "--prior", str(base), "--new-class", "Other", "--out", str(step)]) == 0
    said = capsys.readouterr().out
    assert "old classes kept (agreement with the prior, outside the new class): Epithelial" in said
    assert main(["info", str(step)]) == 0
    assert "old classes kept" in capsys.readouterr().out  # the step's forgetting report
    assert main(["info", str(step), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in record["classes"]] == ["Epithelial", "Spindle-shaped", "Other"]
    assert [s["method"] for s in record["steps"]] == ["base", "cinuseg"]
    assert main(["evaluate", "--model", str(step), "--data", data, "--json", "--val-fraction", "0.05"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["dice"]) == {"Epithelial", "Spindle-shaped", "Other"}
    assert result["images"] > 0


def test_errors_are_messages_not_tracebacks(shared_data, tmp_path, capsys):
    missing = tmp_path / "nope.cinuseg.pt"
    assert main(["info", str(missing)]) == 2
    assert "no model file" in capsys.readouterr().err
    assert main(["train-base", "--data", str(tmp_path), "--out", str(tmp_path / "m.cinuseg.pt")]) == 2
    assert "error:" in capsys.readouterr().err
    assert (
        main(
            [
                "train-base",
                "--data",
                str(shared_data / "consep"),
                "--classes",
                "Neutrophil",
                "--out",
                str(tmp_path / "m.pt"),
            ]
        )
        == 2
    )
    assert "unknown class 'Neutrophil'" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow  # the whole shared slide through the bundled model: 15-26 s on two cores
def test_segment_slide_to_masks_and_resume(shared_data, tmp_path, capsys):
    import torch

    from napari_cinuseg import CiNuSegModel, save_model
    from napari_cinuseg.io.export import read_masks
    from napari_cinuseg.model.network import Architecture

    torch.manual_seed(0)
    model_path = save_model(
        CiNuSegModel.new(["Epithelial", "Other"], Architecture("resnet18", "unet", (32, 16, 16, 8))),
        tmp_path / "m.cinuseg.pt",
    )
    svs = shared_data / "slides" / "CMU-1-Small-Region.svs"
    out = tmp_path / "out"
    args = [
        "segment",
        str(svs),
        str(tmp_path / "missing.svs"),
        "--model",
        str(model_path),
        "--out",
        str(out),
        "--tile",
        "512",
        "--batch-size",
        "2",
        "--in-memory-limit",
        "1000000",
    ]
    assert main(args) == 2  # one image missing: said, the other done
    err = capsys.readouterr().err
    assert "no image at" in err and "saved" in err
    class_map, masks, meta = read_masks(out / "CMU-1-Small-Region.masks.tif")
    assert class_map.shape == (2967, 2220) and list(masks) == ["Epithelial", "Other"]
    assert meta["source"].endswith("CMU-1-Small-Region.svs")
    assert sorted(p.name for p in out.iterdir()) == [
        "CMU-1-Small-Region.masks.tif",
        "CMU-1-Small-Region.nuclei.csv",
    ]  # no scratch left
    assert main(args[:2] + args[3:]) == 0
    assert "skipped" in capsys.readouterr().err


def test_export_class_map(tmp_path, capsys):
    import numpy as np
    from skimage import io as skio

    from napari_cinuseg import CiNuSegModel, save_model
    from napari_cinuseg.io.export import read_masks
    from napari_cinuseg.model.network import Architecture

    model = save_model(
        CiNuSegModel.new(["A", "B"], Architecture("resnet18", "unet", (32, 16, 16, 8))), tmp_path / "m.cinuseg.pt"
    )
    cm = np.zeros((40, 60), np.uint8)
    cm[5:10, 5:10] = 2
    skio.imsave(tmp_path / "cm.png", cm, check_contrast=False)
    assert main(["export", str(tmp_path / "cm.png"), "--model", str(model), "--out", str(tmp_path / "cm.tif")]) == 0
    back, masks, _ = read_masks(tmp_path / "cm.tif")
    assert (back == cm).all() and masks["B"].sum() == 25
    assert main(["export", str(tmp_path / "cm.png"), "--model", str(model), "--out", str(tmp_path / "cm.tif")]) == 2
    assert "exists" in capsys.readouterr().err
    skio.imsave(tmp_path / "bad.png", (cm * 3).astype(np.uint8), check_contrast=False)
    assert main(["export", str(tmp_path / "bad.png"), "--model", str(model), "--out", str(tmp_path / "bad.tif")]) == 2
    assert "model knows 2 classes" in capsys.readouterr().err


@pytest.mark.slow  # the whole shared slide through the bundled model: 15-26 s on two cores
def test_segment_writes_a_pyramid_with_the_slides_pixel_size_and_a_nucleus_table(shared_data, tmp_path, capsys):
    """The shared SVS → a masks file whose first series has >= 3 levels with the slide's
    size at level 0, the pixel size read from the slide (0.499 µm), and one CSV row per nucleus."""
    import csv

    import tifffile

    from napari_cinuseg.io.export import read_masks
    from napari_cinuseg.model.file import BUNDLED_MODEL

    svs = shared_data / "slides" / "CMU-1-Small-Region.svs"
    out = tmp_path / "masks"
    assert main(["segment", str(svs), "--model", str(BUNDLED_MODEL), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "0.499 µm/px (from the file)" in err
    path = out / "CMU-1-Small-Region.masks.tif"
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) >= 3 and levels[0].shape == (2967, 2220)
        assert 'PhysicalSizeX="0.499"' in tif.ome_metadata
    class_map, masks, meta = read_masks(path)
    assert meta["pixel_size_um"] == 0.499 and list(masks) == ["Epithelial", "Spindle-shaped"]
    with open(out / "CMU-1-Small-Region.nuclei.csv") as f:
        rows = list(csv.DictReader(f))
    # one row per nucleus object (watershed-split, specks under 3 µm² = 13 px at 0.499 µm/px dropped)
    assert len(rows) == meta["nuclei"] and meta["nucleus_min_area_px"] == 13
    assert all(int(r["area_px"]) >= 13 for r in rows)
    assert len({r["nucleus"] for r in rows}) == len(rows)
    assert len(rows) >= 50, "the bundled model finds nuclei on this slide"
    if rows:
        assert {"nucleus", "class", "centroid_y", "centroid_x", "area_px", "area_um2", "solidity"} <= set(rows[0])
        assert (
            float(rows[0]["area_um2"]) == float(rows[0]["area_px"]) * 0.499**2
            or abs(float(rows[0]["area_um2"]) - float(rows[0]["area_px"]) * 0.499**2) < 1e-3
        )
