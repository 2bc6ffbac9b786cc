"""The napari plugin's reader, writer, sample data and manifest (and one viewer test)."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_cinuseg.io.export import read_masks
from napari_cinuseg.io.slides import Slide
from napari_cinuseg.plugin.reader import get_reader
from napari_cinuseg.plugin.sample_data import sample_he
from napari_cinuseg.plugin.writer import write_masks


@pytest.fixture(scope="module")
def svs(shared_data):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    assert path.is_file(), f"{path} is missing from the shared data"
    return path


def _read(path):
    reader = get_reader(str(path))
    assert reader is not None, f"no reader for {path}"
    return reader(str(path))


@pytest.fixture(scope="module")
def rgb_1024x768():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1024, 768, 3), dtype=np.uint8)
    img[200:600, 100:500] = (200, 80, 160)  # some structure, so levels differ from noise
    return img


def _write_pyramid(path, img, levels=3):
    with tifffile.TiffWriter(path) as tw:
        opts = dict(tile=(256, 256), photometric="rgb", compression="zlib")
        tw.write(img, subifds=levels - 1, **opts)
        for k in range(1, levels):
            tw.write(img[:: 2**k, :: 2**k], subfiletype=1, **opts)
    return path


# --- reader -------------------------------------------------------------------------------------


def test_reader_opens_svs_lazily(svs):
    layers = _read(svs)
    assert len(layers) == 1  # series 0 only: not the thumbnail, label and macro images
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image"
    assert not isinstance(data, np.ndarray) and not isinstance(data, list)
    assert data.shape == (2967, 2220, 3) and data.dtype == np.uint8
    assert kwargs["rgb"] is True and kwargs["name"] == "CMU-1-Small-Region"
    assert kwargs["metadata"] == {"path": str(svs), "level_shapes": [(2967, 2220, 3)], "pixel_size_um": 0.499}
    del layers, kwargs
    gc.collect()  # the open TiffFile must live as long as the array that reads through it
    with Slide(svs) as slide:
        for y0, x0, y1, x1 in [(0, 0, 300, 400), (1000, 600, 1300, 1000), (2900, 2100, 2967, 2220)]:
            np.testing.assert_array_equal(np.asarray(data[y0:y1, x0:x1]), slide.read(y0, x0, y1, x1))


def test_reader_opens_pyramidal_tiff_as_multiscale(tmp_path, rgb_1024x768):
    path = _write_pyramid(tmp_path / "pyramid.ome.tif", rgb_1024x768)
    ((data, kwargs, layer_type),) = _read(path)
    assert layer_type == "image" and kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert kwargs["name"] == "pyramid"
    assert isinstance(data, list) and len(data) == 3
    assert [d.shape for d in data] == [(1024, 768, 3), (512, 384, 3), (256, 192, 3)]
    assert kwargs["metadata"]["level_shapes"] == [(1024, 768, 3), (512, 384, 3), (256, 192, 3)]
    assert not any(isinstance(d, np.ndarray) for d in data)
    np.testing.assert_array_equal(np.asarray(data[1][100:300, 50:250]), rgb_1024x768[::2, ::2][100:300, 50:250])
    with Slide(path) as slide:
        np.testing.assert_array_equal(np.asarray(data[0][500:800, 300:700]), slide.read(500, 300, 800, 700))


def test_reader_single_level_and_grey_tiff(tmp_path, rgb_1024x768):
    path = tmp_path / "single.tiff"
    tifffile.imwrite(path, rgb_1024x768, tile=(256, 256), photometric="rgb")
    ((data, kwargs, _),) = _read(path)
    assert not isinstance(data, (np.ndarray, list)) and data.shape == (1024, 768, 3)
    assert kwargs["multiscale"] is False and kwargs["rgb"] is True
    np.testing.assert_array_equal(np.asarray(data[:]), rgb_1024x768)

    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, rgb_1024x768[..., 0], photometric="minisblack")
    ((data, kwargs, _),) = _read(grey)
    assert data.shape == (1024, 768) and kwargs["rgb"] is False


def test_reader_opens_png_and_jpeg(tmp_path, rgb_1024x768):
    small = rgb_1024x768[:200, :300]
    Image.fromarray(small).save(tmp_path / "a.png")
    Image.fromarray(small).save(tmp_path / "b.JPEG", quality=95)
    ((png, kwargs, layer_type),) = _read(tmp_path / "a.png")
    assert layer_type == "image" and kwargs["rgb"] is True and kwargs["name"] == "a"
    np.testing.assert_array_equal(png, small)
    ((jpg, kwargs, _),) = _read(tmp_path / "b.JPEG")
    assert jpg.shape == (200, 300, 3) and jpg.dtype == np.uint8


def test_reader_declines_other_paths(tmp_path):
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "labels.zarr")) is None
    assert get_reader(str(tmp_path)) is None  # a folder
    assert get_reader([str(tmp_path / "a.png"), str(tmp_path / "b.csv")]) is None


def test_reader_reports_unreadable_files(tmp_path, rgb_1024x768):
    whole = _write_pyramid(tmp_path / "whole.tif", rgb_1024x768).read_bytes()
    for frac in (0.02, 0.5, 0.95):
        cut = tmp_path / f"cut{int(frac * 100)}.tif"
        cut.write_bytes(whole[: int(len(whole) * frac)])
        with pytest.raises(ValueError, match=r"cut\d+\.tif.*(truncated|complete)"):
            _read(cut)
    not_tiff = tmp_path / "text.svs"
    not_tiff.write_text("this is not a slide")
    with pytest.raises(ValueError, match="not a readable TIFF"):
        _read(not_tiff)
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match="could not be read as a PNG image"):
        _read(bad_png)
    with pytest.raises(ValueError, match="no such file"):
        _read(tmp_path / "missing.ndpi")


# --- writer -------------------------------------------------------------------------------------


@pytest.fixture
def class_map():
    m = np.zeros((300, 520), np.uint8)
    m[10:60, 20:90] = 1
    m[100:180, 300:500] = 3
    return m


def test_writer_names_from_features(tmp_path, class_map):
    features = pd.DataFrame(
        {
            "index": [0, 1, 2, 3],
            "name": ["background", "Epithelial", "Spindle-shaped", "Other"],
            "colour": [None, "#ff0000", "#00ff00", "#0000ff"],
        }
    )
    out = write_masks(str(tmp_path / "masks.tif"), class_map, {"name": "seg", "features": features, "metadata": {}})
    assert out == [str(tmp_path / "masks.tif"), str(tmp_path / "masks.nuclei.csv"), str(tmp_path / "masks.geojson")]
    cmap, masks, meta = read_masks(out[0])
    np.testing.assert_array_equal(cmap, class_map)
    assert list(masks) == ["Epithelial", "Spindle-shaped", "Other"]
    np.testing.assert_array_equal(masks["Other"], class_map == 3)
    assert not masks["Spindle-shaped"].any()
    assert meta["colours"] == {"1": "#ff0000", "2": "#00ff00", "3": "#0000ff"}

    # a dict of columns works too, and names the classes it knows; the rest get "class i"
    out = write_masks(
        str(tmp_path / "dict.tiff"), class_map.astype(np.int32), {"features": {"index": [1], "name": ["Tumour"]}}
    )
    assert list(read_masks(out[0])[1]) == ["Tumour", "class 2", "class 3"]


def test_writer_names_from_metadata_and_default(tmp_path, class_map):
    meta = {
        "cinuseg": {
            "class_names": ["Epithelial", "Spindle-shaped", "Other"],
            "colours": ["red", "lime", "blue"],
            "model_id": "abc123",
        }
    }
    out = write_masks(tmp_path / "m.tif", class_map, {"metadata": meta, "features": pd.DataFrame()})
    _, masks, saved = read_masks(out[0])
    assert list(masks) == ["Epithelial", "Spindle-shaped", "Other"] and saved["model_id"] == "abc123"

    out = write_masks(tmp_path / "plain.tif", [class_map, class_map[::2, ::2]], {})  # multiscale: level 0
    cmap, masks, _ = read_masks(out[0])
    np.testing.assert_array_equal(cmap, class_map)
    assert list(masks) == ["class 1", "class 2", "class 3"]
    np.testing.assert_array_equal(masks["class 1"], class_map == 1)


def test_save_layers_writes_the_files_that_export_writes(tmp_path, class_map):
    """napari's Save Layers gives the masks TIFF, the per-nucleus CSV and the GeoJSON, as the
    panel's Export does."""
    from napari_cinuseg import drain
    from napari_cinuseg.inference.instances import nuclei_of
    from napari_cinuseg.session.export import export_nuclei

    features = {"index": [0, 1, 2, 3], "name": ["background", "Epithelial", "Spindle-shaped", "Other"]}
    (tmp_path / "saved").mkdir()
    masks, table, outlines = write_masks(tmp_path / "saved" / "seg.tif", class_map, {"features": features})
    assert table == str(tmp_path / "saved" / "seg.nuclei.csv") and outlines == str(tmp_path / "saved" / "seg.geojson")
    (tmp_path / "export").mkdir()
    _, exported, _ = drain(
        export_nuclei(
            class_map,
            nuclei_of(class_map),
            tmp_path / "export" / "seg.tif",
            ["Epithelial", "Spindle-shaped", "Other"],
            None,
            None,
        )
    )
    assert Path(table).read_text() == exported.read_text()
    rows = Path(table).read_text().count("\n") - 1  # one row per nucleus object, after the header
    assert rows == len(json.loads(Path(outlines).read_text())["features"]) >= 2


def test_writer_refuses_what_is_not_a_class_map(tmp_path, class_map):
    with pytest.raises(ValueError, match="2-D"):
        write_masks(tmp_path / "a.tif", np.stack([class_map, class_map]), {})
    big = class_map.astype(np.int32)
    big[0, 0] = 256
    with pytest.raises(ValueError, match="0 .background. to 255"):
        write_masks(tmp_path / "b.tif", big, {})
    with pytest.raises(ValueError, match="integer"):
        write_masks(tmp_path / "c.tif", class_map.astype(float), {})
    assert not list(tmp_path.iterdir())


def test_written_masks_open_as_labels(tmp_path, class_map):
    features = {"index": [0, 1, 2, 3], "name": ["background", "Epithelial", "Spindle-shaped", "Other"]}
    path, *_ = write_masks(tmp_path / "masks.tif", class_map, {"features": features})
    ((data, kwargs, layer_type),) = _read(path)
    assert layer_type == "labels"
    np.testing.assert_array_equal(np.asarray(data), class_map)
    assert list(kwargs["features"]["name"]) == ["background", "Epithelial", "Spindle-shaped", "Other"]
    # ... and save again unchanged
    again, *_ = write_masks(tmp_path / "again.tif", data, kwargs)
    assert list(read_masks(again)[1]) == ["Epithelial", "Spindle-shaped", "Other"]


# --- sample data and manifest -----------------------------------------------------------------


def test_sample_data():
    ((image, kwargs),) = sample_he()
    assert image.shape == (1024, 1024, 3) and image.dtype == np.uint8
    assert kwargs == {
        "name": "H&E sample (CMU-1, CC0)",
        "rgb": True,
        "metadata": {"pixel_size_um": 0.499},
    }  # the slide's MPP
    assert (image.mean(axis=2) < 200).mean() > 0.3  # mostly tissue, not glass


def test_manifest_python_names_import():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("napari-cinuseg")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert commands["napari-cinuseg.widget"] == "napari_cinuseg.ui.opening:CiNuSegDock"  # the panel, loaded behind it
    assert manifest.contributions.readers[0].accepts_directories is False
    assert manifest.contributions.writers[0].layer_types == ["labels"]
    assert [s.key for s in manifest.contributions.sample_data] == ["he-cmu1"]
    for command_id, python_name in commands.items():
        module_name, _, attribute = python_name.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute)), command_id


# --- in napari ----------------------------------------------------------------------------------


def _submenu(menu, title):
    found = [a.menu() for a in menu.actions() if a.menu() is not None and a.text().replace("&", "") == title]
    assert found, f"no {title!r} in {[a.text() for a in menu.actions()]}"
    return found[0]


@pytest.mark.parametrize("group", ["Segment", "Annotate"])
def test_cinuseg_menu_opens_the_panel(make_napari_viewer, group):
    """Layers > Segment (and > Annotate) > CiNuSeg holds the panel; choosing it docks the panel."""
    viewer = make_napari_viewer()
    layers_menu = _submenu(viewer.window._qt_window.menuBar(), "Layers")
    cinuseg = _submenu(_submenu(layers_menu, group), "CiNuSeg")
    (action,) = [a for a in cinuseg.actions() if a.text().startswith("CiNuSeg")]
    action.trigger()
    assert any("CiNuSeg" in name for name in viewer.window.dock_widgets)


def test_viewer_opens_svs_and_saves_masks(make_napari_viewer, svs, tmp_path, class_map):
    viewer = make_napari_viewer()
    layers = viewer.open(str(svs), plugin="napari-cinuseg")
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.name == "CMU-1-Small-Region" and layer.rgb and not layer.multiscale
    assert layer.data.shape == (2967, 2220, 3) and not isinstance(layer.data, np.ndarray)
    assert layer.metadata["path"] == str(svs)

    labels = viewer.add_labels(class_map, name="classes", features={"index": [0, 1], "name": ["background", "Tumour"]})
    viewer.layers.selection = {labels}
    saved = viewer.layers.save(str(tmp_path / "classes.tif"), selected=True, plugin="napari-cinuseg")
    assert saved == [
        str(tmp_path / "classes.tif"),
        str(tmp_path / "classes.nuclei.csv"),
        str(tmp_path / "classes.geojson"),
    ]  # as Export writes
    assert list(read_masks(saved[0])[1]) == ["Tumour", "class 2", "class 3"]
    assert (tmp_path / "classes.nuclei.csv").read_text().startswith("nucleus,")


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_a_16k_mask_reopens_lazily_reading_under_10_mb(tmp_path):
    """An exported 16k² class map reopens as a multiscale Labels layer; what napari
    shows first (the coarsest level, a whole-slide view) reads < 10 MB of the file."""
    from napari_cinuseg.io.export import export_masks

    side = 16384
    class_map = np.zeros((side, side), np.uint8)
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, side - 40, (4000, 2)):
        class_map[y : y + 12, x : x + 14] = 1 + (x % 2)
    path = export_masks(
        class_map, tmp_path / "big.masks.tif", ["Tumour", "Stroma"], ["#ff0000", "#00ff00"], "m1", pixel_size=0.25
    )
    before = _bytes_read()
    ((data, kwargs, kind),) = get_reader(str(path))(str(path))
    first_view = np.asarray(data[-1][:])
    read = _bytes_read() - before
    assert kind == "labels" and kwargs["multiscale"] and isinstance(data, list) and len(data) >= 5
    assert data[0].shape == (side, side) and first_view.shape == data[-1].shape
    assert read < 10 * 2**20, f"{read / 2**20:.1f} MB read"
    np.testing.assert_array_equal(first_view, class_map[:: side // first_view.shape[0], :: side // first_view.shape[1]])
    # names, colours and pixel size came back
    assert list(kwargs["features"]["name"]) == ["background", "Tumour", "Stroma"]
    assert kwargs["metadata"]["pixel_size_um"] == 0.25
    assert kwargs["colormap"].color_dict[1] is not None
    np.testing.assert_array_equal(np.asarray(data[0][8000:8100, 500:700]), class_map[8000:8100, 500:700])
