"""Nuclei as objects: the instance map beside the class map, scored on CoNSeP's instance maps,
per-instance counts and table, and the QuPath GeoJSON parsed back with shapely."""

import json

import numpy as np
import pytest
from skimage import io as skio

from napari_cinuseg.analysis.measurements import instance_statistics, instance_table
from napari_cinuseg.analysis.objects import ObjectScores, image_scores
from napari_cinuseg.inference.instances import min_area_pixels, nuclei_of, object_classes, split_nuclei


def _consep(shared_data, stems):
    root = shared_data / "consep" / "train"
    out = []
    for s in stems:
        inst = skio.imread(root / "instances" / f"{s}.png")
        labels = skio.imread(root / "labels" / f"{s}.png")
        out.append((inst, labels))
    return out


STEMS = ["train_1_000", "train_5_003", "train_9_007", "train_13_010", "train_20_005"]


def test_watershed_splits_touching_nuclei_of_consep_better_than_components(shared_data):
    """On CoNSeP's own class maps (touching nuclei of one class merge), the watershed finds the
    instances of CoNSeP's instance maps far better than connected components do."""
    ws, cc = ObjectScores(), ObjectScores()
    for inst, labels in _consep(shared_data, STEMS):
        ws.update(inst, split_nuclei(labels, method="watershed", min_area_px=12)[0])
        cc.update(inst, split_nuclei(labels, method="components", min_area_px=12)[0])
    w, c = ws.summary(), cc.summary()
    assert w["pred"] > c["pred"]  # touching nuclei split
    assert w["f1"] > c["f1"] + 0.05 and w["aji"] > c["aji"] + 0.05
    assert w["f1"] > 0.75 and w["dice"] > 0.95


def test_each_nucleus_takes_its_majority_class_and_specks_are_dropped():
    cm = np.zeros((60, 60), np.uint8)
    cm[5:20, 5:20] = 1
    cm[5:9, 5:20] = 2  # a minority of the nucleus's pixels in class 2
    cm[40:55, 40:55] = 3
    cm[30, 5] = 2  # a speck
    labels, classes = split_nuclei(cm, min_area_px=10)
    assert labels.max() == 2 and len(classes) == 3 and classes[0] == 0
    assert classes[labels[12, 12]] == 1 and classes[labels[47, 47]] == 3
    assert labels[30, 5] == 0


def _classes_per_object(labels, class_map) -> np.ndarray:
    """How many classes (not background) each object of the instance map ``labels`` holds in
    ``class_map``."""
    labels, class_map = np.asarray(labels).astype(np.int64), np.asarray(class_map).astype(np.int64)
    k = int(class_map.max()) + 1
    votes = np.bincount(labels.ravel() * k + class_map.ravel(), minlength=(labels.max() + 1) * k).reshape(-1, k)
    present = votes.sum(1) > 0
    present[0] = False
    return (votes[present, 1:] > 0).sum(1)


def test_the_class_map_of_the_nuclei_gives_each_nucleus_its_one_class():
    """A nucleus of two classes (a core of one, a rim of another) is painted whole in its majority
    class; a speck dropped as no nucleus is background."""
    cm = np.zeros((60, 60), np.uint8)
    cm[5:20, 5:20] = 2
    cm[5:20, 5:8] = 1  # a rim of class 1 on a class-2 nucleus
    cm[40:55, 40:55] = 3
    cm[30, 5] = 2  # a speck
    labels, classes = split_nuclei(cm, min_area_px=10)
    assert (_classes_per_object(labels, cm) == 2).any()  # the class map of pixels: one nucleus, two classes
    objects = object_classes(labels, classes)
    assert objects.dtype == np.uint8 and (_classes_per_object(labels, objects) == 1).all()
    assert (objects[5:20, 5:20] == 2).all() and (objects[40:55, 40:55] == 3).all()
    assert objects[30, 5] == 0 and (objects[labels == 0] == 0).all()


def test_the_class_map_of_a_slides_nuclei_is_built_block_by_block(shared_data, tmp_path):
    """A lazy instance map (zarr) gives the same class map of nuclei block by block, in memory or
    written to disk under a temporary name, refused over an existing folder."""
    import zarr

    _, cm = _mosaic(shared_data)
    nuclei = nuclei_of(cm, pixel_size_um=0.25)
    whole = object_classes(nuclei.labels, nuclei.classes)
    assert (_classes_per_object(nuclei.labels, whole) == 1).all() and (_classes_per_object(nuclei.labels, cm) > 1).any()
    z = zarr.open_array(str(tmp_path / "inst.zarr"), mode="w", shape=cm.shape, chunks=(128, 128), dtype="uint32")
    z[:] = nuclei.labels
    np.testing.assert_array_equal(object_classes(z, nuclei.classes, block=192), whole)
    path = object_classes(z, nuclei.classes, block=192, out=tmp_path / "objects.zarr")
    assert path == tmp_path / "objects.zarr"
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(path), mode="r")), whole)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError):
        object_classes(z, nuclei.classes, out=path)


def test_minimum_area_in_square_micrometres():
    assert min_area_pixels(3.0, 0.25) == (48, "")
    assert min_area_pixels(3.0, 0.5)[0] == 12
    px, note = min_area_pixels(3.0, None)
    assert px == 48 and "pixel size unknown" in note and "0.25" in note
    with pytest.raises(ValueError, match="0 µm² or more"):
        min_area_pixels(-1, 0.25)
    assert nuclei_of(np.zeros((8, 8), np.uint8), pixel_size_um=None).note


def test_watershed_markers_apart_in_micrometres():
    """The markers' 1.5 µm is 3 px at 20× (0.5 µm/px) and 6 px at 40×: two touching nuclei whose
    centres are 5 px apart split in a 20× image, and are one object if the same map were 40×."""
    yy, xx = np.mgrid[:40, :40]
    cm = (((yy - 20) ** 2 + (xx - 17) ** 2 <= 16) | ((yy - 20) ** 2 + (xx - 22) ** 2 <= 16)).astype(np.uint8)
    assert nuclei_of(cm, pixel_size_um=0.5, method="watershed").count == 2
    assert nuclei_of(cm, pixel_size_um=0.25, method="watershed").count == 1


def _mosaic(shared_data):
    pairs = _consep(shared_data, STEMS[:4])
    inst = np.zeros((512, 512), np.int64)
    cm = np.zeros((512, 512), np.uint8)
    for k, (i, lab) in enumerate(pairs):
        y, x = (k // 2) * 256, (k % 2) * 256
        inst[y : y + 256, x : x + 256] = np.where(i > 0, i.astype(np.int64) + 10000 * (k + 1), 0)
        cm[y : y + 256, x : x + 256] = lab
    return inst, cm


def test_blockwise_nuclei_match_the_whole_map(shared_data, tmp_path):
    """A class map split block by block (zarr in, zarr out) gives the nuclei of the whole map."""
    import zarr

    inst, cm = _mosaic(shared_data)
    whole = nuclei_of(cm, pixel_size_um=0.25)
    z = zarr.open_array(str(tmp_path / "cm.zarr"), mode="w", shape=cm.shape, chunks=(128, 128), dtype="uint8")
    z[:] = cm
    blocks = nuclei_of(z, pixel_size_um=0.25, block=128, margin=64, out=tmp_path / "inst.zarr")
    lab = np.asarray(zarr.open_array(str(blocks.labels), mode="r"))
    ids = np.unique(lab)[1:]
    assert len(ids) == blocks.count == len(blocks.classes) - 1  # unique ids over the map, none lost
    assert abs(blocks.count - whole.count) <= 0.03 * whole.count
    assert image_scores(whole.labels, lab)["f1"] > 0.95
    assert image_scores(inst, lab)["f1"] > 0.7
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError):
        nuclei_of(z, block=128, margin=64, out=tmp_path / "inst.zarr")


def test_counts_and_table_are_per_instance(shared_data):
    inst, cm = _mosaic(shared_data)
    nuclei = nuclei_of(cm, pixel_size_um=0.25)
    names = ["Other", "Inflammatory", "Epithelial", "Spindle-shaped"]
    rows = instance_statistics(nuclei.labels, nuclei.classes, names, 0.25)
    assert sum(r["nuclei"] for r in rows) == nuclei.count
    for i, r in enumerate(rows, start=1):
        assert r["nuclei"] == int((nuclei.classes[1:] == i).sum())
    assert sum(r["area_px"] for r in rows) == int((nuclei.labels > 0).sum())
    table = instance_table(nuclei.labels, nuclei.classes, names, 0.25, block=200, margin=64)
    assert table["nucleus"] == list(range(1, nuclei.count + 1))
    assert min(table["area_px"]) >= nuclei.min_area_px == 48
    area = np.bincount(nuclei.labels.ravel())
    assert table["area_px"] == area[1:].tolist()
    k = 7
    ys, xs = np.nonzero(nuclei.labels == k)
    assert abs(table["centroid_y"][k - 1] - ys.mean()) < 1e-6 and table["class"][k - 1] == names[nuclei.classes[k] - 1]


def test_object_scores():
    a = np.zeros((20, 20), np.int32)
    a[2:8, 2:8] = 1
    a[10:18, 10:18] = 2
    s = image_scores(a, a)
    assert s["f1"] == s["pq"] == s["aji"] == s["dice"] == 1.0
    b = np.zeros_like(a)
    b[2:8, 2:5], b[2:8, 5:8] = 7, 9  # nucleus 1 cut in two halves, nucleus 2 missed
    s = image_scores(a, b)
    assert s["tp"] == 0 and s["fp"] == 2 and s["fn"] == 2 and s["f1"] == 0 and s["pq"] == 0
    assert s["aji"] == pytest.approx(18 / (36 + 18 + 64))
    assert s["dice"] == pytest.approx(2 * 36 / (100 + 36))


def test_geojson_for_qupath_parses_back_with_shapely(shared_data, tmp_path):
    pytest.importorskip("shapely")
    from shapely.geometry import Point, shape

    from napari_cinuseg.io.geojson import write_geojson

    _, cm = _mosaic(shared_data)
    nuclei = nuclei_of(cm, pixel_size_um=0.25)
    names, colours = (
        ["Other", "Inflammatory", "Epithelial", "Spindle-shaped"],
        ["#e6194b", "#3cb44b", "#ffe119", "#4363d8"],
    )
    path = tmp_path / "n.geojson"
    assert write_geojson(path, nuclei.labels, nuclei.classes, names, colours, block=200, margin=64) == nuclei.count
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == nuclei.count
    area = np.bincount(nuclei.labels.ravel())
    seen = set()
    for f in doc["features"]:
        p = f["properties"]
        assert f["type"] == "Feature" and p["objectType"] == "detection"
        k = p["nucleus"]
        seen.add(k)
        cls = int(nuclei.classes[k])
        assert p["classification"] == {
            "name": names[cls - 1],
            "color": [int(colours[cls - 1][i : i + 2], 16) for i in (1, 3, 5)],
        }
        poly = shape(f["geometry"])
        assert poly.geom_type == "Polygon" and poly.area > 0
        assert abs(poly.area - area[k]) < 0.35 * area[k] + 8  # the outline runs through boundary pixels
        ys, xs = np.nonzero(nuclei.labels == k)
        # a pixel (r, c) is the square [c, c+1] x [r, r+1]: its nucleus's polygon holds a pixel centre of it
        assert any(poly.contains(Point(x + 0.5, y + 0.5)) for y, x in zip(ys[::5], xs[::5]))
    assert seen == set(range(1, nuclei.count + 1))
    # a map at a lower level: coordinates scaled to level 0
    write_geojson(tmp_path / "x4.geojson", nuclei.labels, nuclei.classes, names, colours, downsample=4, overwrite=True)
    a = shape(json.loads(path.read_text())["features"][0]["geometry"])
    b = next(
        shape(f["geometry"])
        for f in json.loads((tmp_path / "x4.geojson").read_text())["features"]
        if f["properties"]["nucleus"] == doc["features"][0]["properties"]["nucleus"]
    )
    assert b.area == pytest.approx(16 * a.area, rel=1e-3)
    with pytest.raises(FileExistsError):
        write_geojson(path, nuclei.labels, nuclei.classes, names, colours)


def test_segment_uses_the_bundled_model_and_writes_geojson(shared_data, tmp_path, capsys):
    from shapely.geometry import shape

    from napari_cinuseg.cli import main

    image = shared_data / "consep" / "train" / "images" / "train_1_000.jpg"
    assert (
        main(["segment", str(image), "--out", str(tmp_path), "--geojson", "--pixel-size", "0.25", "--device", "cpu"])
        == 0
    )
    err = capsys.readouterr().err
    assert "using the bundled base model" in err
    doc = json.loads((tmp_path / "train_1_000.geojson").read_text())
    rows = (tmp_path / "train_1_000.nuclei.csv").read_text().splitlines()[1:]
    assert len(doc["features"]) == len(rows) > 5 and f"{len(rows)} nuclei" in err
    assert all(shape(f["geometry"]).is_valid or shape(f["geometry"]).buffer(0).area > 0 for f in doc["features"])


@pytest.mark.parametrize("on_disk", [False, True])
def test_the_panels_engine_functions_segment_and_export_nuclei(shared_data, tmp_path, on_disk):
    """session.nuclei.segment_nuclei_and_measure → export_nuclei: the calls a panel makes, in memory and
    with the maps on disk (zarr), give per-instance counts, CSV and GeoJSON that agree."""
    import csv

    from napari_cinuseg.io.images import read_rgb
    from napari_cinuseg.model.file import BUNDLED_MODEL, load_model
    from napari_cinuseg.runtime.events import ExportProgress, drain
    from napari_cinuseg.session.export import export_nuclei
    from napari_cinuseg.session.nuclei import segment_nuclei_and_measure

    model = load_model(BUNDLED_MODEL)
    image = read_rgb(shared_data / "consep" / "train" / "images" / "train_3_004.jpg")
    out = tmp_path / "r.zarr" if on_disk else None
    done = drain(segment_nuclei_and_measure(model, image, image_pixel_size=0.25, out=out, tile=256, overlap=32))
    nuclei = done.nuclei
    assert nuclei.count > 5 and not nuclei.note
    assert sum(r["nuclei"] for r in done.statistics) == nuclei.count
    objects = done.object_map[0] if on_disk else done.object_map  # the class map of the nuclei
    np.testing.assert_array_equal(np.asarray(objects), nuclei.classes[np.asarray(nuclei.labels)])
    if on_disk:
        assert isinstance(done.class_map, list) and (tmp_path / "r.instances.zarr").is_dir()
        assert [lv.shape for lv in done.object_map] == [lv.shape for lv in done.class_map]
        assert (tmp_path / "r.objects.zarr").is_dir()
    events = []
    masks, csv_path, gj = drain(
        export_nuclei(
            done.class_map[0] if on_disk else done.class_map,
            nuclei,
            tmp_path / "a.masks.tif",
            model.class_names,
            [c.colour for c in model.classes],
            model.id,
            pixel_size=0.25,
        ),
        events.append,
    )
    assert masks.exists() and gj.name == "a.geojson" and csv_path.name == "a.nuclei.csv"
    assert any(isinstance(e, ExportProgress) for e in events)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == nuclei.count == len(json.loads(gj.read_text())["features"])
    assert all(float(r["area_um2"]) >= 3.0 for r in rows)


def test_a_nucleus_that_fills_its_block_still_gets_its_outline():
    """A block with no background pixel (a nucleus larger than the block, or a map that is all
    nucleus) still gives every nucleus its polygon."""
    from napari_cinuseg.io.geojson import nucleus_features

    labels = np.ones((40, 60), np.uint32)
    labels[:, 30:] = 2
    features = list(nucleus_features(labels, np.array([0, 1, 2]), ["A", "B"], block=64))
    assert sorted(f["properties"]["nucleus"] for f in features) == [1, 2]
    assert [
        f["properties"]["classification"]["name"] for f in sorted(features, key=lambda f: f["properties"]["nucleus"])
    ] == ["A", "B"]


def test_a_class_without_a_colour_is_exported_without_one():
    """A layer whose metadata names fewer colours than classes (the writer pads them with None):
    the class with a colour keeps it, the other gets none, and QuPath colours it itself."""
    from napari_cinuseg.io.geojson import nucleus_features

    labels = np.zeros((20, 40), np.uint32)
    labels[2:8, 2:8], labels[2:8, 22:28] = 1, 2
    features = sorted(
        nucleus_features(labels, np.array([0, 1, 2]), ["A", "B"], ["#ff0000", None], block=64),
        key=lambda f: f["properties"]["nucleus"],
    )
    assert features[0]["properties"]["classification"] == {"name": "A", "color": [255, 0, 0]}
    assert features[1]["properties"]["classification"] == {"name": "B"}


def test_h_maxima_by_part_are_skimages_on_the_whole_map():
    """The learned distance's markers, found part by part of the foreground, are exactly
    scikit-image's h-maxima of the whole map: parts touching only at a corner included."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    from napari_cinuseg.inference.instances import h_maxima_in

    rng = np.random.default_rng(0)
    fg = np.zeros((120, 140), bool)
    for y, x, r in rng.integers((6, 6, 3), (114, 134, 9), size=(40, 3)):
        yy, xx = np.ogrid[:120, :140]
        fg |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    fg[60, 60] = fg[61, 61] = True  # two parts that meet at a corner only
    fg[60, 61] = fg[61, 60] = False
    d = ndi.gaussian_filter(ndi.distance_transform_edt(fg) / 9 + rng.random(fg.shape) * 0.05, 1.0) * fg
    for h in (0.05, 0.1, 0.2):
        expected = h_maxima(d.astype(np.float32), h).astype(bool) & fg
        np.testing.assert_array_equal(h_maxima_in(d.astype(np.float32), fg, h), expected)
        assert expected.any()
