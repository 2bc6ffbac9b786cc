"""Readers of CoNSeP and MoNuSAC in their published layouts, on tiny layouts built here."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy.io import savemat
from skimage import io as skio

from napari_cinuseg.datasets.original_layouts import (
    monusac_class_map,
    read_consep_original,
    read_monusac_original,
    read_monusac_xml,
    read_tiff_rgb,
)
from napari_cinuseg.datasets.splits import split_by_source

# ------------------------------------------------------------------------------------------ CoNSeP


def _type_map(seed: int) -> np.ndarray:
    """A 40x40 CoNSeP type map with all 8 type ids in 5-pixel bands, then shuffled by seed."""
    types = np.repeat(np.arange(8), 5)[:, None] * np.ones((1, 40), int)
    return np.roll(types, 3 * seed, axis=0).astype(np.uint8)


def _write_consep_split(folder: Path, stems=("train_1", "train_2"), rgba=(False, True)) -> dict:
    (folder / "Images").mkdir(parents=True)
    (folder / "Labels").mkdir()
    truth = {}
    for k, (stem, alpha) in enumerate(zip(stems, rgba)):
        img = np.random.default_rng(k).integers(0, 256, (40, 40, 4 if alpha else 3), dtype=np.uint8)
        if alpha:
            img[..., 3] = 255
        skio.imsave(folder / "Images" / f"{stem}.png", img, check_contrast=False)
        types = _type_map(k)
        inst = np.zeros((40, 40), np.int32)
        inst[types > 0] = 1 + np.arange(int((types > 0).sum())) // 10  # a few "nuclei"
        savemat(folder / "Labels" / f"{stem}.mat", {"inst_map": inst, "type_map": types.astype(np.float64)})
        truth[stem] = (img[..., :3], types)
    return truth


def test_consep_regrouped_pixel_by_pixel(tmp_path):
    truth = _write_consep_split(tmp_path / "Train")
    data = read_consep_original(tmp_path / "Train")
    assert data.class_names == ["Epithelial", "Spindle-shaped", "Other"]
    assert [it.name for it in data.items] == ["train_1", "train_2"]
    assert data.sources == ["train_1", "train_2"]  # each CoNSeP image is its own source
    for it in data.items:
        img, types = truth[it.name]
        assert it.source == it.name
        assert it.image.dtype == np.uint8 and it.image.shape == (40, 40, 3)  # RGBA lost its alpha
        np.testing.assert_array_equal(it.image, img)
        assert it.labels.dtype == np.uint8 and it.labels.shape == (40, 40)
        np.testing.assert_array_equal(it.labels == 0, types == 0)
        np.testing.assert_array_equal(it.labels == 1, np.isin(types, [3, 4]))
        np.testing.assert_array_equal(it.labels == 2, np.isin(types, [5, 6, 7]))
        np.testing.assert_array_equal(it.labels == 3, np.isin(types, [1, 2]))
        assert set(np.unique(it.labels)) == {0, 1, 2, 3}
    # whole images are the unit of a split
    train, val = split_by_source(data, 0.5, seed=0)
    assert len(train.items) == 1 and len(val.items) == 1


def test_consep_split_folders(tmp_path):
    _write_consep_split(tmp_path / "Train")
    _write_consep_split(tmp_path / "Test", stems=("test_1", "test_2"))
    assert read_consep_original(tmp_path).sources == ["train_1", "train_2"]  # Train by default
    assert read_consep_original(tmp_path, split="Test").sources == ["test_1", "test_2"]
    assert read_consep_original(tmp_path, split="test").sources == ["test_1", "test_2"]
    assert read_consep_original(tmp_path / "Test", split="Test").sources == ["test_1", "test_2"]
    with pytest.raises(FileNotFoundError, match="no split folder 'Valid'.*Train, Test"):
        read_consep_original(tmp_path, split="Valid")
    only_test = tmp_path / "only_test"
    _write_consep_split(only_test / "Test", stems=("test_9", "test_8"))
    assert read_consep_original(only_test).sources == ["test_8", "test_9"]


def test_consep_type_map_from_inst_type(tmp_path):
    _write_consep_split(tmp_path)
    inst = np.zeros((40, 40), np.int32)
    inst[0:5, 0:5] = 1
    inst[10:15, 10:15] = 2
    inst[20:25, 20:25] = 3
    savemat(tmp_path / "Labels/train_1.mat", {"inst_map": inst, "inst_type": np.array([[4], [6], [2]])})
    lab = next(it for it in read_consep_original(tmp_path).items if it.name == "train_1").labels
    assert (lab[0:5, 0:5] == 1).all() and (lab[10:15, 10:15] == 2).all() and (lab[20:25, 20:25] == 3).all()
    assert (lab > 0).sum() == 75


def test_consep_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        read_consep_original(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no Images/ folder and no Train/ or Test/"):
        read_consep_original(tmp_path)
    (tmp_path / "Images").mkdir()
    with pytest.raises(FileNotFoundError, match="no Labels/ folder"):
        read_consep_original(tmp_path)
    (tmp_path / "Labels").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no image \(\.png\)"):
        read_consep_original(tmp_path)

    split = tmp_path / "Train"
    _write_consep_split(split)
    (split / "Labels/train_2.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \.mat of the same name .* for train_2\.png"):
        read_consep_original(split)

    savemat(split / "Labels/train_2.mat", {"inst_map": np.zeros((40, 40), np.int32)})
    with pytest.raises(ValueError, match=r"no 'type_map'.*holds \['inst_map'\]"):
        read_consep_original(split)
    savemat(split / "Labels/train_2.mat", {"type_map": np.full((40, 40), 9, np.uint8)})
    with pytest.raises(ValueError, match=r"CoNSeP's 0\.\.7, found \[9\]"):
        read_consep_original(split)
    savemat(split / "Labels/train_2.mat", {"type_map": np.zeros((30, 40), np.uint8)})
    with pytest.raises(ValueError, match=r"type map is \(30, 40\) but its image is \(40, 40\)"):
        read_consep_original(split)
    (split / "Labels/train_2.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="not a readable MATLAB .mat file"):
        read_consep_original(split)


def test_consep_v73_mat_gives_a_clear_error(tmp_path):
    try:
        import h5py  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("h5py is installed: v7.3 files are read")
    _write_consep_split(tmp_path)
    # a MATLAB v7.3 file: a 512-byte MATLAB header (version 0x0200) in front of an HDF5 body
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    (tmp_path / "Labels/train_1.mat").write_bytes(header.ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"v7\.3 \(HDF5\).*re-save it as v7"):
        read_consep_original(tmp_path)


# ----------------------------------------------------------------------------------------- MoNuSAC


def _xml(regions) -> str:
    """Aperio/MoNuSAC XML: one Annotation per (class, [polygon, ...])."""
    parts = ['<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.25">']
    for k, (cls, polys) in enumerate(regions, start=1):
        parts.append(
            f'<Annotation Id="{k}" Name="" Type="4"><Attributes><Attribute Name="{cls}" Id="0" Value=""/></Attributes>'
        )
        parts.append(
            '<Regions><RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>'
            "</RegionAttributeHeaders>"
        )
        for j, poly in enumerate(polys, start=1):
            parts.append(f'<Region Id="{j}" Type="0"><Attributes/><Vertices>')
            parts.extend(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly)
            parts.append("</Vertices></Region>")
        parts.append("</Regions><Plots/></Annotation>")
    parts.append("</Annotations>")
    return "\n".join(parts)


RECT = [(2.0, 3.0), (10.0, 3.0), (10.0, 8.0), (2.0, 8.0)]  # x 2..10, y 3..8 (borders included)
TRIANGLE = [(20.0, 20.0), (30.0, 20.0), (20.0, 30.0)]  # right angle at (20, 20)


def _write_monusac(root: Path) -> None:
    p1 = root / "TCGA-AA-0001"
    p2 = root / "TCGA-BB-0002"
    p1.mkdir(parents=True)
    p2.mkdir()
    rng = np.random.default_rng(0)
    # patient 1: two images from one slide; the first RGBA, the second RGB
    tifffile.imwrite(
        p1 / "TCGA-AA-0001-01Z-00-DX1_1.tif",
        rng.integers(0, 256, (40, 50, 4), dtype=np.uint8),
        photometric="rgb",
        extrasamples=["unassalpha"],
    )
    (p1 / "TCGA-AA-0001-01Z-00-DX1_1.xml").write_text(
        _xml(
            [
                ("Epithelial", [RECT]),
                ("Lymphocyte", [TRIANGLE]),
                ("Macrophage", [[(40.0, 2.0), (44.0, 2.0), (44.0, 6.0), (40.0, 6.0)]]),
                (
                    "Neutrophil",
                    [[(40.5, 30.5), (60.0, 30.5), (60.0, 50.0), (40.5, 50.0)]],
                ),  # runs off the image: clipped
                ("Ambiguous", [[(4.0, 5.0), (6.0, 5.0), (6.0, 6.0), (4.0, 6.0)]]),  # inside the epithelial rectangle
            ]
        )
    )
    tifffile.imwrite(
        p1 / "TCGA-AA-0001-01Z-00-DX1_2.tif", rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), photometric="rgb"
    )
    (p1 / "TCGA-AA-0001-01Z-00-DX1_2.xml").write_text(_xml([("Lymphocyte", [RECT, TRIANGLE])]))
    # patient 2: an .svs (baseline + a smaller thumbnail page) and an ambiguous region
    svs = p2 / "TCGA-BB-0002-01Z-00-DX1_1.svs"
    tifffile.imwrite(svs, rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), photometric="rgb")
    tifffile.imwrite(svs, np.zeros((9, 9, 3), np.uint8), photometric="rgb", append=True)
    (p2 / "TCGA-BB-0002-01Z-00-DX1_1.xml").write_text(
        _xml(
            [
                ("Neutrophil", [RECT]),
                ("Ambiguous", [TRIANGLE]),
            ]
        )
    )


def _rect_mask(shape):
    m = np.zeros(shape, bool)
    m[3:9, 2:11] = True  # rows y 3..8, columns x 2..10
    return m


def _triangle_mask(shape):
    r, c = np.indices(shape)
    return (r >= 20) & (c >= 20) & ((r - 20) + (c - 20) <= 10)


def test_monusac_rasterised_classes_and_sources(tmp_path):
    _write_monusac(tmp_path)
    data = read_monusac_original(tmp_path)
    assert data.class_names == ["Epithelial", "Lymphocyte", "Macrophage", "Neutrophil"]
    assert [it.name for it in data.items] == [
        "TCGA-AA-0001-01Z-00-DX1_1",
        "TCGA-AA-0001-01Z-00-DX1_2",
        "TCGA-BB-0002-01Z-00-DX1_1",
    ]
    assert [it.source for it in data.items] == ["TCGA-AA-0001", "TCGA-AA-0001", "TCGA-BB-0002"]
    assert data.sources == ["TCGA-AA-0001", "TCGA-BB-0002"]
    a, b, c = data.items

    assert a.image.shape == (40, 50, 3) and a.image.dtype == np.uint8  # alpha dropped
    assert a.labels.shape == (40, 50) and a.labels.dtype == np.uint8
    amb = np.zeros((40, 50), bool)
    amb[5:7, 4:7] = True
    epi = _rect_mask((40, 50)) & ~amb
    lym = _triangle_mask((40, 50))
    mac = np.zeros((40, 50), bool)
    mac[2:7, 40:45] = True
    neu = np.zeros((40, 50), bool)
    neu[31:40, 41:50] = True  # clipped at the image's edge
    np.testing.assert_array_equal(a.labels == 1, epi)
    np.testing.assert_array_equal(a.labels == 2, lym)
    np.testing.assert_array_equal(a.labels == 3, mac)
    np.testing.assert_array_equal(a.labels == 4, neu)
    np.testing.assert_array_equal(a.labels == 255, amb)
    np.testing.assert_array_equal(a.labels == 0, ~(epi | lym | mac | neu | amb))
    assert lym.sum() == 66  # the triangle: 11 + 10 + ... + 1 pixels

    assert b.image.shape == (30, 30, 3)
    np.testing.assert_array_equal(b.labels == 2, _rect_mask((30, 30)) | _triangle_mask((30, 30)))
    assert set(np.unique(b.labels)) == {0, 2}

    assert c.image.shape == (36, 36, 3)  # the baseline page, not the thumbnail
    np.testing.assert_array_equal(
        c.image, tifffile.imread(tmp_path / "TCGA-BB-0002/TCGA-BB-0002-01Z-00-DX1_1.svs", key=0)
    )
    np.testing.assert_array_equal(c.labels == 4, _rect_mask((36, 36)))
    np.testing.assert_array_equal(c.labels == 255, _triangle_mask((36, 36)))
    assert set(np.unique(c.labels)) == {0, 4, 255}

    # a split keeps each patient whole
    train, val = split_by_source(data, 0.5, seed=1)
    assert {it.source for it in train.items}.isdisjoint({it.source for it in val.items})
    assert len(train.items) + len(val.items) == 3


def test_monusac_single_patient_folder_and_tif_preferred(tmp_path):
    _write_monusac(tmp_path)
    folder = tmp_path / "TCGA-AA-0001"
    # the training set ships an .svs beside each .tif: the .tif is read, once
    tifffile.imwrite(folder / "TCGA-AA-0001-01Z-00-DX1_2.svs", np.zeros((30, 30, 3), np.uint8), photometric="rgb")
    data = read_monusac_original(folder)
    assert data.sources == ["TCGA-AA-0001"] and len(data.items) == 2
    assert data.items[1].image.any()


def test_monusac_xml_and_rasteriser_directly(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(_xml([("epithelial", [RECT]), ("Ambiguous", [TRIANGLE])]))
    polys = read_monusac_xml(path)
    assert [cls for cls, _ in polys] == ["epithelial", "Ambiguous"]
    np.testing.assert_array_equal(polys[0][1], np.array(RECT))
    lab = monusac_class_map(polys, (32, 32))
    np.testing.assert_array_equal(lab == 1, _rect_mask((32, 32)))  # class names match without case
    np.testing.assert_array_equal(lab == 255, _triangle_mask((32, 32)))


def test_monusac_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        read_monusac_original(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no patient folder holding .tif or .svs"):
        read_monusac_original(tmp_path)

    _write_monusac(tmp_path)
    xml = tmp_path / "TCGA-BB-0002/TCGA-BB-0002-01Z-00-DX1_1.xml"
    xml.unlink()
    with pytest.raises(FileNotFoundError, match=r"no \.xml of the same name .* for TCGA-BB-0002-01Z-00-DX1_1\.svs"):
        read_monusac_original(tmp_path)

    xml.write_text("<Annotations><Annotation>")  # truncated
    with pytest.raises(ValueError, match="not readable MoNuSAC XML"):
        read_monusac_original(tmp_path)
    xml.write_text(_xml([("Plasma cell", [RECT])]))
    with pytest.raises(ValueError, match="unknown MoNuSAC class 'Plasma cell'.*Neutrophil or Ambiguous"):
        read_monusac_original(tmp_path)
    xml.write_text(_xml([("Epithelial", [[(1.0, 1.0), ("x", 2.0), (3.0, 3.0)]])]))
    with pytest.raises(ValueError, match="Vertex without numeric X and Y"):
        read_monusac_original(tmp_path)
    xml.write_text(
        '<Annotations><Annotation Id="7"><Attributes/><Regions><Region Id="1"><Vertices>'
        '<Vertex X="1" Y="1"/><Vertex X="5" Y="1"/><Vertex X="5" Y="5"/></Vertices></Region></Regions>'
        "</Annotation></Annotations>"
    )
    with pytest.raises(ValueError, match="Annotation 7 has regions but no class name"):
        read_monusac_original(tmp_path)

    xml.write_text(_xml([("Neutrophil", [RECT])]))
    (tmp_path / "TCGA-BB-0002/TCGA-BB-0002-01Z-00-DX1_1.svs").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="not a readable TIFF/SVS image"):
        read_monusac_original(tmp_path)


def test_tiff_reader_follows_read_rgb_conventions(tmp_path):
    grey = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    rgb = read_tiff_rgb(tmp_path / "g.tif")
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb[..., 0] == rgb[..., 2]).all()
    planar = np.random.default_rng(0).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_tiff_rgb(tmp_path / "p.tif"), np.moveaxis(planar, 0, -1))
