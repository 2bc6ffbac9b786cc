"""Every kind of bad input ends in a clear message that says what to do, and changes nothing on
disk (docs/reliability.md has the table of cases). Tiny images and models on the CPU."""

import hashlib
import shutil

import numpy as np
import pytest
import tifffile
import torch
from skimage import io as skio

from napari_cinuseg import CiNuSegModel, drain, load_model, save_model, train_base, train_step
from napari_cinuseg.annotations import training_pair
from napari_cinuseg.cli import main
from napari_cinuseg.inference.segmentation import segment
from napari_cinuseg.io.images import ImageNotice, as_rgb_uint8, read_rgb, rgb_view
from napari_cinuseg.io.slides import Slide
from napari_cinuseg.model.file import ModelFileError
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.model.segmenter import check_class_name

TINY = Architecture("resnet18", "unet", (32, 16, 16, 8))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder):
    """Every file under ``folder`` with its digest: 'nothing changed on disk' is this, equal."""
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _notices(record):
    return [str(w.message) for w in record if issubclass(w.category, ImageNotice)]


@pytest.fixture
def rgb(shared_data):
    """A real H&E patch (CoNSeP), 96 × 96."""
    path = next(iter(sorted((shared_data / "consep" / "train" / "images").glob("*.jpg"))))
    return read_rgb(path)[:96, :96]


# --- images -------------------------------------------------------------------------------------


def test_rgba_loses_its_alpha(tmp_path, rgb):
    path = tmp_path / "rgba.png"
    skio.imsave(path, np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), check_contrast=False)
    assert np.array_equal(read_rgb(path), rgb)


def test_grey_is_converted_and_said(tmp_path, rgb):
    path = tmp_path / "grey.png"
    skio.imsave(path, rgb[..., 1], check_contrast=False)
    with pytest.warns(ImageNotice, match="grey image repeated to three channels"):
        img = read_rgb(path)
    assert img.shape == (96, 96, 3) and (img[..., 0] == rgb[..., 1]).all()


def test_16_bit_and_float_are_rescaled_and_said(tmp_path, rgb):
    path16 = tmp_path / "deep.tif"
    tifffile.imwrite(path16, rgb.astype(np.uint16) * 200, photometric="rgb")
    with pytest.warns(ImageNotice, match="uint16 values rescaled from their range"):
        img = read_rgb(path16)
    lo, hi = rgb.min(), rgb.max()
    expected = np.round((rgb.astype(float) - lo) / (hi - lo) * 255).astype(np.uint8)
    assert np.abs(img.astype(int) - expected).max() <= 1
    with pytest.warns(ImageNotice, match="float32 values in 0..1 scaled to 0..255"):
        img = as_rgb_uint8(rgb.astype(np.float32) / 255)
    assert np.abs(img.astype(int) - rgb).max() <= 1


def test_channels_first_is_moved_last_and_said(tmp_path, rgb):
    with pytest.warns(ImageNotice, match="channels were stored first"):
        assert np.array_equal(as_rgb_uint8(np.moveaxis(rgb, -1, 0)), rgb)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    with Slide(path) as slide:  # a planar TIFF read lazily: the same pixels
        assert np.array_equal(slide.read_all(), rgb)


def test_stacks_and_volumes_are_refused(tmp_path, rgb):
    for array in (np.stack([rgb] * 5), np.zeros((20, 64, 64), np.uint8), np.zeros((2, 3, 64, 64, 3), np.uint8)):
        with pytest.raises(ValueError, match="a 2-D RGB image is needed.*save one 2-D RGB plane"):
            as_rgb_uint8(array)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([rgb] * 5), photometric="rgb")
    with pytest.raises(ValueError, match="2-D RGB"):
        read_rgb(path)
    with pytest.raises(ValueError, match="a 2-D RGB image is needed"):
        Slide(path)


def test_images_smaller_than_the_crop_and_the_tile(rgb, tmp_path):
    small = rgb[:40, :50]
    target = np.full(small.shape[:2], 0, np.uint8)
    target[10:20, 10:20] = 1
    from napari_cinuseg.datasets.labelled import TrainingPair
    from napari_cinuseg.training.settings import TrainSettings

    settings = TrainSettings(decoder_channels=(32, 16, 16, 8), crop_size=64, batch_size=2, iterations=2, device="cpu")
    model = drain(train_base([TrainingPair(small, target, "small")], ["Tiny"], settings))  # padded crops
    events = []
    result = drain(segment(model, small, tile=256, overlap=32, device="cpu", min_tissue=0), events.append)
    assert result.shape == (40, 50)
    from napari_cinuseg.runtime.events import SegmentFinished, SegmentStarted, TileProgress

    # one tile, padded to the tile's size: started, one tile done, finished with the image's own map
    started, *progress, finished = events
    assert isinstance(started, SegmentStarted) and (started.height, started.width, started.tiles) == (40, 50, 1)
    assert [(p.done, p.total) for p in progress if isinstance(p, TileProgress)][-1] == (1, 1)
    assert isinstance(finished, SegmentFinished) and finished.tiles == 1 and finished.result is result


def test_nan_and_inf_are_replaced_and_said(rgb):
    img = rgb.astype(np.float32)
    img[0, 0, 0], img[1, 1, 1], img[2, 2, 2] = np.nan, np.inf, -np.inf
    with pytest.warns(ImageNotice, match="3 NaN/infinite value"):
        out = as_rgb_uint8(img)
    assert out.dtype == np.uint8 and out[1, 1, 1] == 255 and out[2, 2, 2] == 0 and out[0, 0, 0] == 255
    with pytest.raises(ValueError, match="every pixel is NaN"):
        as_rgb_uint8(np.full((8, 8, 3), np.nan))


def test_truncated_or_corrupt_tiff_and_svs(tmp_path, shared_data, rgb):
    path = tmp_path / "whole.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[:200])
    for opener in (read_rgb, Slide):
        with pytest.raises(ValueError, match="(truncated|complete|damaged)"):
            opener(cut)
    svs = shared_data / "slides" / "CMU-1-Small-Region.svs"
    head = tmp_path / "cut.svs"
    with open(svs, "rb") as f:
        head.write_bytes(f.read(4096))
    with pytest.raises(ValueError, match="truncated|complete|damaged"):
        Slide(head)
    # a slide whose tile data is damaged is refused (when opened: its JPEG tile does not end as a
    # JPEG does; a tile of another codec when that region is read)
    damaged = tmp_path / "damaged.svs"
    shutil.copy(svs, damaged)
    with tifffile.TiffFile(svs) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(damaged, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    with pytest.raises(ValueError, match="damaged or incomplete"), Slide(damaged) as slide:
        slide.read(0, 0, 64, 64)


def test_a_file_that_is_not_an_image(tmp_path):
    for name in ("notes.png", "notes.tif", "notes.svs"):
        path = tmp_path / name
        path.write_text("patient list, not an image")
        with pytest.raises(ValueError, match="(not a readable|could not be read as an image)"):
            Slide(path)
    with pytest.raises(ValueError, match="could not be read as an image"):
        read_rgb(tmp_path / "notes.png")


def test_paths_with_spaces_and_non_ascii(tmp_path, rgb, capsys):
    folder = tmp_path / "my slides" / "Präparat ñ 1"
    folder.mkdir(parents=True)
    path = folder / "Schnitt 1 · Niere.png"
    skio.imsave(path, rgb, check_contrast=False)
    assert np.array_equal(read_rgb(path), rgb)
    torch.manual_seed(0)
    model = save_model(CiNuSegModel.new(["Epithelial"], TINY), folder / "Modell ä.cinuseg.pt")
    out = folder / "Ergebnis ö"
    assert (
        main(
            [
                "segment",
                str(path),
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
            ]
        )
        == 0
    )
    assert (out / "Schnitt 1 · Niere.masks.tif").is_file()


def test_lazy_images_must_already_be_8_bit_rgb():
    import zarr

    lazy = zarr.zeros((64, 64), dtype="uint16")
    with pytest.raises(ValueError, match="convert it to 8-bit RGB"):
        rgb_view(lazy, "layer")
    ok = zarr.zeros((64, 64, 3), dtype="uint8")
    assert rgb_view(ok) is ok  # read lazily, not loaded


# --- annotations --------------------------------------------------------------------------------


def test_annotation_of_another_shape(rgb):
    with pytest.raises(
        ValueError, match="annotation layer is .* but its image is .*paint in a layer made for this image"
    ):
        training_pair(rgb, np.zeros((50, 50), np.uint8))


def test_annotation_reusing_a_class_id(rgb):
    ann = np.zeros(rgb.shape[:2], np.uint8)
    ann[5:9, 5:9] = 3  # e.g. an old class's id from another labels layer
    with pytest.raises(
        ValueError, match=r"uses label\(s\) \[3\]; paint with label 1 for the new class and label 2 for background"
    ):
        training_pair(rgb, ann)


def test_nothing_painted_or_only_background(rgb, tiny, tmp_path):
    assert training_pair(rgb, np.zeros(rgb.shape[:2], np.uint8)) is None  # the widget says "nothing is painted"
    ann = np.zeros(rgb.shape[:2], np.uint8)
    ann[10:30, 10:30] = 2  # background only
    pair, _ = training_pair(rgb, ann)
    torch.manual_seed(0)
    prior = save_model(CiNuSegModel.new(["Epithelial"], TINY), tmp_path / "prior.cinuseg.pt")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"no pixel is painted for class\(es\) \[1\].*paint some examples"):
        drain(train_step(load_model(prior), [pair], ["Neutrophil"], tiny, out=tmp_path / "step.cinuseg.pt"))
    with pytest.raises(ValueError, match="no pixel is painted"):
        drain(train_base([pair], ["Neutrophil"], tiny, out=tmp_path / "base.cinuseg.pt"))
    assert _tree(tmp_path) == before


def test_class_names_known_or_empty():
    with pytest.raises(ValueError, match="already"):
        check_class_name("epithelial", ["Epithelial"])
    with pytest.raises(ValueError, match="name"):
        check_class_name("   ", ["Epithelial"])
    assert check_class_name(" Neutrophil ", ["Epithelial"]) == "Neutrophil"


# --- model files --------------------------------------------------------------------------------


def test_model_files_truncated_foreign_or_pickled(tmp_path):
    torch.manual_seed(0)
    good = save_model(CiNuSegModel.new(["Epithelial"], TINY), tmp_path / "good.cinuseg.pt")
    cut = tmp_path / "cut.cinuseg.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2)}, foreign)
    png = tmp_path / "image.cinuseg.pt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    for path, words in ((cut, "truncated|incomplete|damaged"), (foreign, "not a napari-cinuseg model"), (png, "not a")):
        with pytest.raises(ModelFileError, match=words):
            load_model(path)


def test_prior_with_another_encoder_than_the_settings(tmp_path, few_pairs, tiny):
    torch.manual_seed(0)
    prior_path = save_model(CiNuSegModel.new(["Epithelial", "Spindle-shaped"], TINY), tmp_path / "prior.cinuseg.pt")
    before = _tree(tmp_path)
    prior = load_model(prior_path)
    with pytest.raises(ValueError, match="a step keeps its prior's network: use settings.for_network"):
        drain(
            train_step(prior, few_pairs[1], ["Other"], tiny.replace(encoder="resnet50"), out=tmp_path / "s.cinuseg.pt")
        )
    assert _tree(tmp_path) == before
    fixed = tiny.replace(encoder="resnet50").for_network(prior.arch)
    assert (fixed.encoder, fixed.decoder_channels) == ("resnet18", (32, 16, 16, 8))


def test_model_classes_that_do_not_match_the_annotation(tmp_path, few_pairs, tiny, shared_data, capsys):
    torch.manual_seed(0)
    prior = save_model(CiNuSegModel.new(["Epithelial", "Spindle-shaped"], TINY), tmp_path / "prior.cinuseg.pt")
    before = _tree(tmp_path)
    # a step for a class the model already knows, with a method that learns new classes only
    with pytest.raises(ValueError, match="already has Epithelial; name a new class"):
        drain(
            train_step(
                load_model(prior), few_pairs[1], ["Epithelial"], tiny, method="mib", out=tmp_path / "s.cinuseg.pt"
            )
        )
    # annotations with more classes than the step names
    with pytest.raises(ValueError, match=r"label\(s\) \[2\]"):
        drain(train_step(load_model(prior), few_pairs[0], ["Other"], tiny, out=tmp_path / "s.cinuseg.pt"))
    # evaluating on a data set that shares only some classes: said; none: refused
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(prior),
                "--data",
                str(shared_data / "monusac"),
                "--dataset",
                "monusac",
                "--val-fraction",
                "0.1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "only the classes the model and the data share are scored (Epithelial)" in err
    assert "the model's Spindle-shaped not" in err and "Lymphocyte" in err
    other = save_model(CiNuSegModel.new(["Mitosis"], TINY), tmp_path / "other.cinuseg.pt")
    before = _tree(tmp_path)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(other),
                "--data",
                str(shared_data / "monusac"),
                "--dataset",
                "monusac",
                "--val-fraction",
                "0.1",
            ]
        )
        == 2
    )
    assert "share no name; evaluate on data annotated with the model's classes" in capsys.readouterr().err
    assert _tree(tmp_path) == before


# --- the command line ---------------------------------------------------------------------------


def _cli_error(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("cinuseg: error:")
    return err


def test_cli_unknown_layout_missing_classes_json_and_empty_folders(tmp_path, shared_data, capsys):
    out = tmp_path / "m.cinuseg.pt"
    odd = tmp_path / "odd"
    (odd / "things").mkdir(parents=True)
    (odd / "things" / "a.txt").write_text("x")
    err = _cli_error(["train-base", "--data", str(odd), "--out", str(out)], capsys)
    assert "layout" in err or "no images" in err
    nojson = tmp_path / "nojson"
    shutil.copytree(
        shared_data / "consep",
        nojson,
        ignore=lambda d, names: (
            [n for n in names if n == "classes.json"] + sorted(n for n in names if n.endswith(".png"))[8:]
        ),
    )
    err = _cli_error(["train-base", "--data", str(nojson), "--out", str(out)], capsys)
    assert "classes.json" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _cli_error(["train-base", "--data", str(empty), "--out", str(out)], capsys)
    assert "no images" in err or "empty" in err
    assert not out.exists()


def test_cli_protocol_too_long_and_unknown_class_order(tmp_path, shared_data, capsys):
    common = ["benchmark", "--data", str(shared_data / "consep"), "--out", str(tmp_path / "b")]
    err = _cli_error([*common, "--protocol", "3-1"], capsys)
    assert "classes" in err
    err = _cli_error([*common, "--class-order", "Epithelial,Neutrophil,Other"], capsys)
    assert "Neutrophil" in err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*.pt"))


def test_cli_segment_outputs_never_clash(tmp_path, rgb, capsys):
    from napari_cinuseg.cli.segmenting import image_stem

    assert image_stem("/x/Schnitt 1.v2.png") == "Schnitt 1.v2"
    assert image_stem("a.OME.tif") == "a" and image_stem("b.svs") == "b"
    for name in ("a.png", "a.tif"):
        skio.imsave(tmp_path / name, rgb, check_contrast=False)
    torch.manual_seed(0)
    model = save_model(CiNuSegModel.new(["Epithelial"], TINY), tmp_path / "m.cinuseg.pt")
    err = _cli_error(
        [
            "segment",
            str(tmp_path / "a.png"),
            str(tmp_path / "a.tif"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert "several images would write a.masks.tif" in err and not (tmp_path / "out").exists()


# --- images that were read wrongly, or said the wrong thing -------------------------------------


def test_cmyk_jpeg_is_converted_to_rgb_and_said(tmp_path, rgb):
    from PIL import Image

    path = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    with pytest.warns(ImageNotice, match="CMYK image converted to RGB"):
        img = read_rgb(path)
    assert img.shape == rgb.shape
    assert np.abs(img.astype(int) - rgb).mean() < 8  # the colours, not C, M and Y read as R, G, B


def test_transparent_pixels_are_white_glass_not_black_tissue(tmp_path, rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, 48:, :3] = 0  # black under the transparent half
    rgba[:, 48:, 3] = 0
    path = tmp_path / "cutout.png"
    skio.imsave(path, rgba, check_contrast=False)
    with pytest.warns(ImageNotice, match="transparent .* composited onto white"):
        img = read_rgb(path)
    assert (img[:, 48:] == 255).all() and np.array_equal(img[:, :48], rgb[:, :48])
    tif = tmp_path / "cutout.tif"
    tifffile.imwrite(tif, rgba, photometric="rgb", extrasamples=["unassalpha"])
    with pytest.warns(ImageNotice, match="composited onto white"), Slide(tif) as slide:
        assert np.array_equal(slide.read_all(), img)


def test_the_command_line_converts_tiffs_as_the_panel_reader_does(tmp_path, rgb):
    """12-bit data in a 16-bit TIFF, NaN in a float TIFF, an all-NaN TIFF: one conversion
    (as_rgb_uint8, from the image's own range) for Slide (the CLI) and the napari reader."""
    from napari_cinuseg.plugin.reader import read_he

    twelve = tmp_path / "twelve.tif"
    tifffile.imwrite(twelve, (rgb.astype(np.uint16) * 16), photometric="rgb")  # 0..4080 of 65535
    nan = tmp_path / "nan.tif"
    values = rgb.astype(np.float32)
    values[:4, :4] = np.nan
    tifffile.imwrite(nan, values, photometric="rgb")
    for path, said in ((twelve, "uint16 values rescaled from their range"), (nan, "48 NaN/infinite")):
        with pytest.warns(ImageNotice, match=said), Slide(path) as slide:
            cli = slide.read_all()
        with pytest.warns(ImageNotice, match=said):
            ((panel, kwargs, kind),) = read_he(str(path))
        assert np.array_equal(cli, panel) and kind == "image" and kwargs["rgb"]
        assert np.array_equal(cli, as_rgb_uint8(tifffile.imread(path)))
    lo, hi = rgb.min(), rgb.max()
    assert np.abs(cli[8:, 8:].astype(int) - np.round((rgb[8:, 8:] - lo) / (hi - lo) * 255)).max() <= 1
    assert (cli[:4, :4] == 255).all()  # NaN: white, empty glass, not black (dark tissue)
    with Slide(twelve) as slide:
        assert slide.read_all().max() == 255  # not 0..16 (0 nuclei)
    empty = tmp_path / "allnan.tif"
    tifffile.imwrite(empty, np.full((32, 32, 3), np.nan, np.float32), photometric="rgb")
    for opener in (Slide, read_he):
        with pytest.raises(ValueError, match="allnan.tif: every pixel is NaN"):
            opener(empty)


def test_cli_segment_says_the_conversion_of_a_tiff(tmp_path, rgb, capsys):
    torch.manual_seed(0)
    model = save_model(CiNuSegModel.new(["Epithelial"], TINY), tmp_path / "m.cinuseg.pt")
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, rgb.astype(np.uint16) * 16, photometric="rgb")
    assert (
        main(
            [
                "segment",
                str(path),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "out"),
                "--tile",
                "64",
                "--overlap",
                "16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "note: " in err and "deep.tif: uint16 values rescaled from their range" in err
    assert (tmp_path / "out" / "deep.masks.tif").is_file()


def test_folders_link_loops_empty_and_renamed_files_say_what_they_are(tmp_path):
    from napari_cinuseg.plugin.reader import read_he

    folder = tmp_path / "slides.svs"
    folder.mkdir()
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    empty = tmp_path / "empty.png"
    empty.touch()
    text = tmp_path / "notes.png"
    text.write_text("patient list, not an image")
    cases = {
        folder: "is a folder, not an image",
        loop: "symbolic link that points back to itself",
        empty: "is empty \\(0 bytes\\)",
        text: "not a PNG or a JPEG, whatever its name says",
    }
    for path, said in cases.items():
        for opener in (Slide, read_rgb, read_he):
            if opener is read_he and path is folder:
                continue  # napari hands a folder to folder readers, not to this one
            with pytest.raises(ValueError, match=f"{path.name}.*{said}") as err:
                opener(path)
            assert "pip install" not in str(err.value) and "no image at" not in str(err.value)


def test_a_slide_cut_short_is_truncated_not_an_index_error(tmp_path, shared_data):
    from napari_cinuseg.plugin.reader import read_he

    svs = (shared_data / "slides" / "CMU-1-Small-Region.svs").read_bytes()
    for frac in (0.3, 0.7):  # the baseline's directory gone; the baseline whole but later pages cut
        cut = tmp_path / f"cut{int(frac * 100)}.svs"
        cut.write_bytes(svs[: int(len(svs) * frac)])
        for opener in (Slide, read_he):
            with pytest.raises(
                ValueError, match=f"cut{int(frac * 100)}.svs is truncated.*copy or download it again"
            ) as err:
                opener(cut)
            assert "IndexError" not in str(err.value)


@pytest.mark.parametrize("value", ["0", "-0.25", "nan", "inf", "abc"])
def test_pixel_size_must_be_positive_and_finite(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["segment", "x.png", "--model", "m.cinuseg.pt", "--out", str(tmp_path), "--pixel-size", value])
    assert stop.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]  # after the usage lines
    assert said.startswith("cinuseg segment: error: argument --pixel-size: ")
    assert ("not a pixel size: give a positive number" in said) if value != "abc" else ("not a number" in said)


def test_ctrl_c_before_the_job_is_cancelled_not_a_traceback(tmp_path, monkeypatch, capsys):
    import napari_cinuseg.model.file as model_file

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_file, "load_model", interrupted)  # Ctrl-C while the model loads
    try:
        code = main(["segment", "x.png", "--model", "m.cinuseg.pt", "--out", str(tmp_path / "out")])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command as a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert "cancelled" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --- training labels ----------------------------------------------------------------------------


def _label_folder(tmp_path, rgb, labels):
    import json

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "tumour", "2": "immune"}))
    skio.imsave(root / "images" / "a.png", rgb, check_contrast=False)
    skio.imsave(root / "labels" / "a.png", labels, check_contrast=False)
    return root


def test_labels_outside_classes_json_are_refused_by_file_and_value(tmp_path, rgb):
    from napari_cinuseg.datasets.labelled import read_folder

    lab = np.zeros(rgb.shape[:2], np.uint8)
    lab[10:20, 10:20], lab[30:40, 30:40] = 1, 7
    with pytest.raises(ValueError, match=r"labels/a.png holds class id\(s\) 7, which classes.json does not define"):
        read_folder(_label_folder(tmp_path / "u8", rgb, lab))
    wide = lab.astype(np.uint16)
    wide[30:40, 30:40] = 258  # 258 % 256 = 2, a real class: must not become it
    with pytest.raises(ValueError, match=r"holds class id\(s\) 258"):
        read_folder(_label_folder(tmp_path / "u16", rgb, wide))
    wide[30:40, 30:40] = 2  # a 16-bit map of known ids is read as it is
    data = read_folder(_label_folder(tmp_path / "ok", rgb, wide))
    assert (data.items[0].labels[30:40, 30:40] == 2).all() and data.items[0].labels.dtype == np.uint8


def test_a_slide_too_large_to_convert_whole_says_how_its_tiles_are_scaled(tmp_path, rgb, monkeypatch):
    from napari_cinuseg.io import slides

    monkeypatch.setattr(slides, "IN_MEMORY_LIMIT_PX", 1000)  # this 96 × 96 TIFF counts as a large slide
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, rgb.astype(np.uint16) * 16, photometric="rgb")
    with pytest.warns(
        ImageNotice,
        match="deep.tif: uint16 slide too large to read whole; each tile is scaled from the type's full range 0..65535",
    ):
        with Slide(path) as slide:
            assert slide.read_all().max() < 255 // 8  # dark, as said
