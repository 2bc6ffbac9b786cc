"""What a file states about itself is checked before it is believed: its pixel size (from every
source, against one range), the value range of a 16-bit image, and the completeness of its JPEG
tiles. Each case once gave a result at the wrong scale or from made-up pixels, with exit 0."""

import json
import struct

import numpy as np
import pytest
import tifffile
import torch
from skimage import io as skio

from napari_cinuseg import CiNuSegModel, load_model, save_model
from napari_cinuseg.cli import main
from napari_cinuseg.datasets.labelled import read_folder
from napari_cinuseg.io.images import ImageNotice, ImageWarning, as_rgb_uint8, read_rgb
from napari_cinuseg.io.slides import Slide
from napari_cinuseg.model.file import BUNDLED_MODEL, ModelFileError
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.plugin.reader import read_he

TINY = Architecture("resnet18", "unet", (32, 16, 16, 8))


@pytest.fixture
def tissue(shared_data):
    """A real H&E region of the shared slide, 256 × 256, 8-bit RGB."""
    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        return s.read(1200, 1200, 1456, 1456)


def _svs_like(path, image, mpp: str):
    """A small TIFF that an Aperio scanner would describe with ``MPP = <mpp>``."""
    tifffile.imwrite(path, image, photometric="rgb", description=f"Aperio Image Library v12.0.15\n256x256 |MPP = {mpp}")
    return path


def _ome(path, image, **sizes):
    tifffile.imwrite(path, image, photometric="rgb", ome=True, metadata={"axes": "YXS", **sizes})
    return path


# --- pixel sizes: one range for every source -----------------------------------------------------


@pytest.mark.parametrize("mpp", ["1000", "1e999", "0.001"])
def test_an_absurd_mpp_in_a_slide_is_refused_not_believed(tmp_path, tissue, mpp, capsys):
    path = _svs_like(tmp_path / "absurd.tif", tissue, mpp)
    with Slide(path) as slide, pytest.raises(ValueError, match=r"absurd.tif: the file's MPP: .*not plausible"):
        slide.pixel_size  # noqa: B018 - reading it is the check
    model = tmp_path / "m.cinuseg.pt"
    torch.manual_seed(0)
    save_model(CiNuSegModel.new(["Epithelial"], TINY), model)
    args = ["segment", str(path), "--model", str(model), "--out", str(tmp_path / "out"), "--device", "cpu", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not plausible" in err and "give --pixel-size" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "absurd.masks.tif").exists()
    if mpp != "1000":
        return
    # the user's own pixel size is used instead of the file's, and said
    assert main(args[:-1] + ["--tile", "64", "--overlap", "16", "--pixel-size", "0.5"]) == 0
    assert (tmp_path / "out" / "absurd.masks.tif").is_file()
    assert "0.5 µm/px (given)" in capsys.readouterr().err
    # napari opens the image, with the pixel size unknown, and says why
    with pytest.warns(ImageWarning, match="not plausible.*set the pixel size in the panel"):
        ((_, kwargs, _),) = read_he(str(path))
    assert kwargs["metadata"]["pixel_size_um"] is None


def test_ome_pixel_sizes_keep_their_unit_and_their_range(tmp_path, tissue):
    plain = _ome(tmp_path / "um.ome.tif", tissue, PhysicalSizeX=0.5, PhysicalSizeY=0.5)
    with Slide(plain) as slide:
        assert slide.pixel_size == pytest.approx(0.5)
    pm = _ome(
        tmp_path / "pm.ome.tif",
        tissue,
        PhysicalSizeX=500000,
        PhysicalSizeXUnit="pm",
        PhysicalSizeY=500000,
        PhysicalSizeYUnit="pm",
    )
    with Slide(pm) as slide:
        assert slide.pixel_size == pytest.approx(0.5)  # 500000 pm, not 500000 µm
    nm = _ome(tmp_path / "nm.ome.tif", tissue, PhysicalSizeX=250, PhysicalSizeXUnit="nm")
    with Slide(nm) as slide:
        assert slide.pixel_size == pytest.approx(0.25)
    absurd = _ome(tmp_path / "absurd.ome.tif", tissue, PhysicalSizeX=250, PhysicalSizeY=250)
    with Slide(absurd) as slide, pytest.raises(ValueError, match="PhysicalSizeX: a pixel size of 250 µm"):
        slide.pixel_size  # noqa: B018
    oblong = _ome(tmp_path / "oblong.ome.tif", tissue, PhysicalSizeX=0.25, PhysicalSizeY=0.5)
    with pytest.warns(ImageWarning, match=r"not square \(OME PhysicalSizeX 0.25 µm, PhysicalSizeY 0.5 µm\)"):
        with Slide(oblong) as slide:
            assert slide.pixel_size == pytest.approx(0.25)


@pytest.mark.parametrize("value", ["1e9", "1000", "0.001"])
def test_an_absurd_pixel_size_option_is_refused(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["segment", "x.png", "--out", str(tmp_path), "--pixel-size", value])
    assert stop.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("cinuseg segment: error: argument --pixel-size: ") and "not plausible" in said


def test_a_model_record_with_an_absurd_pixel_size_is_refused(tmp_path):
    good = tmp_path / "good.cinuseg.pt"
    torch.manual_seed(0)
    save_model(CiNuSegModel.new(["Epithelial"], TINY), good)
    for name, value in (("inf.cinuseg.pt", float("inf")), ("far.cinuseg.pt", 1000.0), ("neg.cinuseg.pt", -0.25)):
        payload = torch.load(good, weights_only=True)
        record = json.loads(payload["record"])
        record["pixel_size_um"] = value
        payload["record"] = json.dumps(record)
        torch.save(payload, tmp_path / name)
        with pytest.raises(ModelFileError, match=f"{name}: its record's pixel_size_um: .*not plausible"):
            load_model(tmp_path / name)
    fresh = CiNuSegModel.new(["Epithelial"], TINY)
    with pytest.raises(ValueError, match="the model's pixel size: a pixel size of inf µm is not plausible"):
        CiNuSegModel(fresh.network, fresh.classes, pixel_size=float("inf"))  # train_base(pixel_size=inf) too


@pytest.mark.parametrize("text", ["Infinity", "1000"])
def test_a_classes_json_with_an_absurd_pixel_size_is_refused_when_read(tmp_path, tissue, text):
    """Python's json reads Infinity: once it trained a model that every later use divided by."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.json").write_text(f'{{"0": "background", "1": "tumour", "pixel_size_um": {text}}}')
    skio.imsave(root / "images" / "a.png", tissue[:64, :64], check_contrast=False)
    skio.imsave(root / "labels" / "a.png", np.ones((64, 64), np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match=r"classes.json: pixel_size_um: .*(not plausible|not a number)"):
        read_folder(root)


# --- a 16-bit image whose range is too narrow to hold tissue ------------------------------------


def _glass16(seed=0, shape=(256, 256, 3)):
    """Empty glass in 16 bits: values 64000..64039, noise and nothing else."""
    return np.random.default_rng(seed).integers(64000, 64040, shape).astype(np.uint16)


def test_near_blank_16_bit_glass_is_not_stretched_into_tissue(tmp_path, capsys):
    glass = _glass16()
    with pytest.warns(ImageWarning, match=r"span only 64000..64039 of 0..65535, too narrow"):
        rgb = as_rgb_uint8(glass, "glass.tif")
    assert rgb.min() >= 248  # white glass, as its 8-bit copy; not 0..255 noise
    path = tmp_path / "glass.tif"
    tifffile.imwrite(path, glass, photometric="rgb")
    out = tmp_path / "out"
    args = ["segment", str(path), "--model", str(BUNDLED_MODEL), "--out", str(out), "--device", "cpu", "-q"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "too narrow a range to hold tissue" in err  # said even with -q
    rows = (out / "glass.nuclei.csv").read_text().strip().splitlines()
    assert len(rows) == 1  # the header: no phantom nuclei
    # data that does span its scale (12 bits in a 16-bit file) is still stretched, as a note
    twelve = (np.random.default_rng(1).integers(0, 4096, (32, 32, 3))).astype(np.uint16)
    with pytest.warns(ImageNotice, match="rescaled from their range") as said:
        as_rgb_uint8(twelve)
    assert not any(issubclass(w.category, ImageWarning) for w in said)


# --- a JPEG tile cut short inside a TIFF ----------------------------------------------------------


def test_a_truncated_jpeg_tile_in_a_tiff_is_refused(tmp_path, tissue, shared_data):
    with Slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        image = s.read(1200, 1200, 1712, 1712)
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, image, photometric="rgb", tile=(256, 256), compression="jpeg")
    with tifffile.TiffFile(whole) as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        counts, where, kind = list(tif.pages[0].databytecounts), tag.valueoffset, {3: "H", 4: "I", 16: "Q"}[tag.dtype]
    counts[1] //= 3  # the second tile's data cut to a third; every offset still inside the file
    data = bytearray(whole.read_bytes())
    data[where : where + len(counts) * struct.calcsize(kind)] = struct.pack("<" + kind * len(counts), *counts)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(bytes(data))
    for opener in (Slide, read_rgb, read_he):
        with pytest.raises(
            ValueError, match=r"cut.tif is damaged or incomplete: JPEG tile 1 of image 0 does not end.*copy"
        ):
            opener(cut)
    with Slide(whole) as slide:  # a complete one reads as before
        assert slide.read_all().shape == (512, 512, 3)
    assert read_rgb(whole).shape == (512, 512, 3)
