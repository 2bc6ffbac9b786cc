"""Bad input, third pass: results that were wrong without a word, the last tracebacks, and
one-line errors that misled (docs/reliability.md, "Third pass"). Each ends in a result computed
from what the input states, or in one line that says what is wrong and what to do, with nothing
lost. Tiny images and models, on the CPU."""

import argparse
import csv
import json
import os
import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import io as skio

from napari_cinuseg import CiNuSegModel, drain, load_model, save_model, train_base, train_step
from napari_cinuseg.analysis.measurements import measure_nuclei_to_csv
from napari_cinuseg.cli import main
from napari_cinuseg.datasets.labelled import read_folder
from napari_cinuseg.datasets.splits import split_by_source
from napari_cinuseg.io.images import ImageNotice, read_rgb
from napari_cinuseg.model.file import BUNDLED_MODEL, ModelFileError
from napari_cinuseg.model.network import Architecture, NucleiSegNet
from napari_cinuseg.model.segmenter import StepRecord, load_encoder_weights

TINY = Architecture("resnet18", "unet", (32, 16, 16, 8))


@pytest.fixture
def rgb(shared_data):
    """A real H&E patch (CoNSeP), 96 × 96."""
    path = next(iter(sorted((shared_data / "consep" / "train" / "images").glob("*.jpg"))))
    return read_rgb(path)[:96, :96]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], TINY)
    model.pixel_size = 0.25
    model.steps.append(StepRecord(0, "base", ["Epithelial", "Spindle-shaped"], {}, {}, {"final_loss": 0.5}))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.cinuseg.pt")


def _edited(good, path, edit):
    """A copy of model file ``good`` at ``path`` with ``edit(payload, record)`` applied."""
    payload = torch.load(good, weights_only=True)
    record = json.loads(payload["record"])
    edit(payload, record)
    payload["record"] = json.dumps(record)
    torch.save(payload, path)
    return path


def _folder(tmp_path, rgb, classes=None, label_suffix=".png"):
    """A `--dataset folder` data set: four 96² images of four sources, class 1 painted in each."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labels = np.zeros(rgb.shape[:2], np.uint8)
    labels[20:50, 20:50] = 1
    for i in range(4):
        skio.imsave(root / "images" / f"s{i}.png", rgb, check_contrast=False)
        Image.fromarray(labels).save(root / "labels" / f"s{i}{label_suffix}")
    text = json.dumps(classes if classes is not None else {"0": "background", "1": "Epithelial", "2": "Other"})
    (root / "classes.json").write_text(text, encoding="utf-8")
    return root


def _cli_error(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("cinuseg: error:"), err
    return " ".join(err.split())


# --- model files --------------------------------------------------------------------------------


def test_a_model_with_nan_weights_is_refused(model_file, tmp_path):
    def nan_weight(payload, record):
        key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.dim() == 4)
        payload["state_dict"][key] = payload["state_dict"][key].clone().fill_(float("nan"))

    with pytest.raises(ModelFileError, match="holds NaN or infinite weights .* finds no nuclei"):
        load_model(_edited(model_file, tmp_path / "nan.cinuseg.pt", nan_weight))


def _set_norm(key, value):
    return lambda payload, record: record["normalization"].update({key: value})


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda p, r: r["classes"][1].update(name="epithelial"), "names class 'epithelial' more than once"),
        (_set_norm("mean", [0.5]), r"normalization mean \[0.5\] has 1 value\(s\), but one per colour channel \(3\)"),
        (_set_norm("mean", [0.5, 0.5]), "has 2 value"),
        (_set_norm("std", [0.2, 0.2]), "has 2 value"),
        (lambda p, r: r.update(pixel_size_um=-0.25), "a pixel size of -0.25 µm is not plausible"),
        (lambda p, r: r.update(pixel_size_um=float("nan")), "a pixel size of nan µm is not plausible"),
        (lambda p, r: p.update(format_version="1"), "states file format '1', which napari-cinuseg never writes"),
    ],
    ids=["duplicate-names", "mean-1", "mean-2", "std-2", "negative-pixel-size", "nan-pixel-size", "version-text"],
)
def test_a_record_that_would_mislead_is_refused(model_file, tmp_path, edit, said):
    path = _edited(model_file, tmp_path / "edited.cinuseg.pt", edit)
    with pytest.raises(ModelFileError, match=said) as refused:
        load_model(path)
    assert "newer" not in str(refused.value)


@pytest.mark.parametrize("kind", ["named-pipe", "dev-zero", "sparse-8-gb"])
def test_a_model_path_that_is_no_model_file_is_said_at_once(tmp_path, kind):
    if kind == "named-pipe":
        path = tmp_path / "pipe.cinuseg.pt"
        os.mkfifo(path)  # opening it would wait for a writer for ever
        said = r"not a regular file \(a named pipe"
    elif kind == "dev-zero":
        path, said = "/dev/zero", "not a regular file"
    else:
        path = tmp_path / "sparse.cinuseg.pt"
        with open(path, "wb") as fh:
            fh.truncate(8 * 2**30)  # holes: no disk used
        said = "holds only zero bytes"
    with pytest.raises(ModelFileError, match=said) as refused:
        load_model(path)
    assert "text file" not in str(refused.value)


def test_info_shows_what_a_record_lacks_as_unknown(model_file, tmp_path, capsys):
    path = _edited(model_file, tmp_path / "old.cinuseg.pt", lambda p, r: r["steps"][0].pop("method"))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr()
    assert "step 0: ? → Epithelial, Spindle-shaped" in out.out and "Traceback" not in out.err


@pytest.mark.parametrize("encoder", ["efficientnet-lite0", "resnet18"])
def test_pickled_encoder_weights_are_refused_without_pytorchs_advice(tmp_path, encoder):
    path = tmp_path / "weights.pt"
    torch.save({"conv": torch.zeros(1), "payload": argparse.Namespace(a=1)}, path)  # a pickled object
    net = NucleiSegNet(Architecture(encoder, "unet", (32, 16, 16, 8)))
    with pytest.raises(ValueError, match="holds pickled Python objects, which are never loaded") as refused:
        load_encoder_weights(net, str(path))
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)


# --- images -------------------------------------------------------------------------------------


def test_an_exif_rotated_jpeg_is_turned_upright_and_said(tmp_path, rgb):
    wide = np.ascontiguousarray(rgb[:40])  # 40 × 96, stored as the camera held it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = tmp_path / "phone.jpg"
    Image.fromarray(wide).save(path, quality=95, exif=exif)
    with pytest.warns(ImageNotice, match="turned upright as its EXIF orientation"):
        img = read_rgb(path)
    assert img.shape == (96, 40, 3)
    upright = np.rot90(wide, k=-1)  # clockwise
    assert np.abs(img.astype(int) - upright).mean() < 6  # JPEG's loss only


def test_grey_with_alpha_is_read_as_grey(tmp_path, rgb):
    path = tmp_path / "grey-alpha.png"
    Image.fromarray(np.dstack([rgb[..., 1], np.full(rgb.shape[:2], 255, np.uint8)]), "LA").save(path)
    with pytest.warns(ImageNotice, match="grey image"):
        img = read_rgb(path)
    assert img.shape == (96, 96, 3) and (img[..., 2] == rgb[..., 1]).all()


def test_a_png_above_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (15000, 15000)).save(path)  # 27 kB that would decode to 675 MB of RGB
    with pytest.raises(ValueError, match=r"too large for a PNG/JPEG \(225,000,000 px\).*178,956,970 pixels"):
        read_rgb(path)


def test_predict_converts_float_and_16_bit_images_and_says_so(rgb):
    model = load_model(BUNDLED_MODEL)
    expected = model.predict(rgb)
    assert (expected > 0).any()
    with pytest.warns(ImageNotice, match="float32 values in 0..1 scaled to 0..255"):
        assert np.array_equal(model.predict(rgb.astype(np.float32) / 255), expected)
    full = rgb.copy()
    full[0, 0], full[0, 1] = 0, 255
    deep = full.astype(np.uint16) * 257  # its own range is the type's: rescaled to ``full`` exactly
    with pytest.warns(ImageNotice, match="uint16 values rescaled"):
        assert np.array_equal(model.predict(deep), model.predict(full))
    with pytest.raises(ValueError, match="a 2-D RGB image is needed"):
        model.predict(np.zeros((4, 8, 8, 3), np.uint8))


# --- data sets ----------------------------------------------------------------------------------


def test_class_maps_in_bmp_are_read_and_lossy_ones_refused(tmp_path, rgb):
    data = read_folder(_folder(tmp_path / "bmp", rgb, label_suffix=".bmp"))
    assert len(data.items) == 4 and (data.items[0].labels == 1).sum() == 900
    with pytest.raises(ValueError, match=r"s0.jpg: a class map must be PNG, TIFF or BMP .* s0.png would be left out"):
        read_folder(_folder(tmp_path / "jpg", rgb, label_suffix=".jpg"))


def test_classes_json_with_a_byte_order_mark_is_read(tmp_path, rgb):
    root = _folder(tmp_path, rgb)
    (root / "classes.json").write_text('{"0": "background", "1": "Epithelial"}', encoding="utf-8-sig")
    assert read_folder(root).class_names == ["Epithelial"]


def test_a_validation_share_of_nothing_is_refused_by_the_library(tmp_path, rgb):
    data = read_folder(_folder(tmp_path, rgb))
    for share in (0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="give a share above 0 and below 1"):
            split_by_source(data, share)


def test_plain_image_target_tuples_train_as_the_readme_says(few_pairs, tiny):
    settings = tiny.replace(iterations=1)
    base = drain(train_base([(p.image, p.target) for p in few_pairs[0]], ["Epithelial", "Spindle-shaped"], settings))
    step = drain(train_step(base, [(p.image, p.target) for p in few_pairs[1]], ["Other"], settings))
    assert step.class_names == ["Epithelial", "Spindle-shaped", "Other"]
    with pytest.raises(ValueError, match="training pair 0 is a ndarray; give \\(image, target\\) tuples"):
        drain(train_step(base, [few_pairs[1][0].image], ["Other"], settings))


def test_class_names_that_are_formulas_are_text_in_the_csv(tmp_path):
    class_map = np.zeros((32, 32), np.uint8)
    class_map[2:6, 2:6], class_map[10:14, 10:14], class_map[20:24, 20:24], class_map[26:30, 2:6] = 1, 2, 3, 4
    names = ['=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(A1)"]
    path = tmp_path / "n.nuclei.csv"
    assert measure_nuclei_to_csv(class_map, names, None, path) == 4
    with open(path, newline="") as fh:
        cells = sorted(row["class"] for row in csv.DictReader(fh))
    assert cells == sorted("'" + n for n in names)


# --- the command line ---------------------------------------------------------------------------


def _two_channel_tiff(tmp_path, rgb):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, rgb[..., :2], photometric="minisblack", planarconfig="contig")
    return path


def _svs(mpp):
    def make(tmp_path, rgb):
        path = tmp_path / "slide.svs"
        tifffile.imwrite(path, rgb, photometric="rgb", description=f"Aperio Image Library v12 |AppMag = 20|MPP = {mpp}")
        return path

    return make


def _png(tmp_path, rgb):
    path = tmp_path / "a.png"
    skio.imsave(path, rgb, check_contrast=False)
    return path


@pytest.mark.parametrize(
    ("image", "extra", "said"),
    [
        (_two_channel_tiff, [], "holds 2 channel(s) ((96, 96, 2), YXS), but an RGB image (3 channels) is needed"),
        (_svs("."), [], "the file's MPP: the pixel size '.' is not a number of µm per pixel; give --pixel-size"),
        (_svs("0.01"), [], "the file's MPP: a pixel size of 0.01 µm is not plausible"),
        (_svs("1e-6"), [], "the file's MPP: a pixel size of 1e-06 µm is not plausible"),
        (_png, ["--level", "1"], "a plain image with one level (0), so level 1 cannot be read"),
    ],
    ids=["two-channels", "mpp-dot", "mpp-0.01", "mpp-1e-6", "level-on-png"],
)
def test_segment_says_what_is_wrong_with_an_image(tmp_path, rgb, model_file, capsys, image, extra, said):
    path = image(tmp_path, rgb)
    out = tmp_path / "out"
    err = _cli_error(["segment", str(path), "--model", str(model_file), "--out", str(out), *extra], capsys)
    assert said in err
    assert not list(out.glob("*")) if out.exists() else True


def test_a_pixel_size_given_overrides_a_file_that_states_none(tmp_path, rgb, model_file, capsys):
    path = _svs(".")(tmp_path, rgb)
    code = main(
        ["segment", str(path), "--model", str(model_file), "--out", str(tmp_path / "o"), "--pixel-size", "0.25"]
    )
    assert code == 0 and (tmp_path / "o" / "slide.masks.tif").exists()


def _float_map(tmp_path):
    path = tmp_path / "map.tif"
    tifffile.imwrite(path, np.array([[0, 0.9], [1.8, 1]], np.float32).repeat(8, 0).repeat(8, 1))
    return path


def _negative_map(tmp_path):
    path = tmp_path / "map.tif"
    tifffile.imwrite(path, np.array([[0, -1], [1, 2]], np.int16).repeat(8, 0).repeat(8, 1))
    return path


@pytest.mark.parametrize(
    ("make", "out", "said"),
    [
        (_float_map, "masks.tif", "holds float32 values that are not class ids (e.g. 0.9)"),
        (_negative_map, "masks.tif", "holds negative values (down to -1)"),
        (_negative_map, "missing/masks.tif", "does not exist; create it or choose another --out"),
    ],
    ids=["float", "negative", "missing-folder"],
)
def test_export_refuses_what_is_no_class_map(tmp_path, model_file, capsys, make, out, said):
    args = ["export", str(make(tmp_path)), "--model", str(model_file), "--out", str(tmp_path / out)]
    err = _cli_error(args, capsys)
    assert said in err and ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("val-fraction-0-split-val", "--val-fraction 0 holds out no image, so --split val has none"),
        ("segment-out-is-a-file", "is a file; segment writes a folder of masks"),
        ("step-out-with-slash", "is a folder; give the new model's file name, e.g. --out"),
        ("step-out-existing-folder", "is a folder; give the new model's file name"),
        ("with-missing-folder", "--with nuclei=/nonexistent/nuclei: no folder at /nonexistent/nuclei"),
        ("classes-json-list", "holds a JSON list, not an object of class ids and names"),
    ],
)
def test_the_command_line_says_what_is_wrong(tmp_path, rgb, model_file, capsys, case, said):
    data = _folder(tmp_path, rgb, classes=["background", "Epithelial"] if case == "classes-json-list" else None)
    folder = ["--dataset", "folder", "--data", str(data)]
    fast = ["--iterations", "1", "--crop-size", "64", "--batch-size", "2"]
    (tmp_path / "file").write_text("x")
    (tmp_path / "models").mkdir()
    args = {
        "val-fraction-0-split-val": ["evaluate", "--model", str(model_file), *folder, "--val-fraction", "0"],
        "segment-out-is-a-file": ["segment", str(_png(tmp_path, rgb)), "--model", str(model_file)]
        + ["--out", str(tmp_path / "file")],
        "step-out-with-slash": ["step", "--prior", str(model_file), *folder, "--new-class", "Other"]
        + ["--out", str(tmp_path / "newdir") + "/"],
        "step-out-existing-folder": ["step", "--prior", str(model_file), *folder, "--new-class", "Other"]
        + ["--out", str(tmp_path / "models")],
        "with-missing-folder": ["train-base", *folder, *fast, "--with", "nuclei=/nonexistent/nuclei"]
        + ["--out", str(tmp_path / "m.cinuseg.pt")],
        "classes-json-list": ["train-base", *folder, *fast, "--out", str(tmp_path / "m.cinuseg.pt")],
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    err = _cli_error(args, capsys)
    assert said in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing taken away


def test_val_fraction_0_trains_on_every_image(tmp_path, rgb, model_file):
    from napari_cinuseg.cli.data import load_data

    args = argparse.Namespace(
        dataset="folder", data=str(_folder(tmp_path, rgb)), split="train", val_fraction=0.0, split_seed=0
    )
    assert len(load_data(args).items) == 4


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--batch-size", "0", "argument --batch-size: 0 is too small: give a whole number of 1 or more"),
        ("--min-area", "inf", "argument --min-area: inf is not an area: give a finite number of µm²"),
        ("--min-area", "-1", "argument --min-area: -1 is not an area"),
        ("--val-fraction", "nan", "argument --val-fraction: nan is not a share of the images"),
        ("--val-fraction", "1.5", "argument --val-fraction: 1.5 is not a share of the images"),
    ],
)
def test_options_out_of_range_are_refused_by_the_parser(tmp_path, capsys, option, value, said):
    command = ["evaluate", "--model", "m.cinuseg.pt"] if option == "--val-fraction" else ["segment", "x.png"]
    with pytest.raises(SystemExit) as stop:
        main(
            [*command, "--out", str(tmp_path), option, value] if command[0] == "segment" else [*command, option, value]
        )
    assert stop.value.code == 2
    assert said in capsys.readouterr().err.strip().splitlines()[-1]


def test_evaluate_json_writes_null_for_a_class_without_pixels(tmp_path, rgb, model_file, capsys):
    data = _folder(tmp_path, rgb, classes={"0": "background", "1": "Epithelial", "2": "Spindle-shaped"})
    args = ["evaluate", "--model", str(model_file), "--dataset", "folder", "--data", str(data), "--json", "-q"]
    assert main([*args, "--split", "all"]) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert result["dice"]["Spindle-shaped"] is None and isinstance(result["dice"]["Epithelial"], float)


def test_evaluate_says_when_it_scores_images_the_model_trained_on(tmp_path, rgb, model_file, capsys):
    data = _folder(tmp_path, rgb)

    def trained_on_two(payload, record):
        record["steps"][0]["data"] = {"images": ["s0", "s2", "elsewhere"], "num_images": 3}

    model = _edited(model_file, tmp_path / "trained.cinuseg.pt", trained_on_two)
    args = ["evaluate", "--model", str(model), "--dataset", "folder", "--data", str(data), "--json"]
    assert main([*args, "--split", "all"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["trained_on"] == 2
    assert "2 of the 4 images scored have the names of images this model trained on (step 0 (base) 2)" in err
    assert "not held-out figures" in err
    assert main([*args, "--split", "val", "--val-fraction", "0.25"]) == 0
    out, err = capsys.readouterr()
    (held,) = split_by_source(read_folder(data), 0.25, 0)[1].sources  # one of the four
    assert json.loads(out)["trained_on"] == (held in ("s0", "s2"))
    assert ("this model trained on" in err) == (held in ("s0", "s2"))


def test_a_closed_pipe_ends_info_quietly(monkeypatch, capsys):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(BUNDLED_MODEL)]) == 141
    assert capsys.readouterr().err == ""
