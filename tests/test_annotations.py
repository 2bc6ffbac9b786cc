import numpy as np
import pytest

from napari_cinuseg.analysis.measurements import class_statistics
from napari_cinuseg.annotations import annotation_target, exhaustive_mask, training_pair


def test_unpainted_is_unlabelled_unless_exhaustive():
    ann = np.zeros((6, 8), np.uint8)
    ann[1, 1] = 1  # new class
    ann[4, 6] = 2  # background brush
    t = annotation_target(ann)
    assert t[1, 1] == 1 and t[4, 6] == 0 and (t == 255).sum() == 46
    ex = exhaustive_mask([np.array([[0, 0], [0, 3], [3, 3], [3, 0]])], ann.shape)
    t = annotation_target(ann, exhaustive=ex)
    assert t[1, 1] == 1 and t[2, 2] == 0 and t[5, 7] == 255 and t[4, 6] == 0
    with pytest.raises(ValueError, match="paint with label 1 for the new class and label 2 for background"):
        annotation_target(ann + 5)


def test_the_model_s_classes_painted_as_corrections_follow_the_step_s_classes():
    """Labels after background are the model's classes (corrections): with one new class and two
    old ones, 1 is the new class, 2 background, 3 and 4 the old ones, which become targets 2 and 3."""
    ann = np.array([[0, 1, 2, 3, 4]])
    assert annotation_target(ann, 1, n_old=2).tolist() == [[255, 1, 0, 2, 3]]
    with pytest.raises(ValueError, match="labels 3 to 4 for the model's classes and label 2 for background"):
        annotation_target(np.array([[5]]), 1, n_old=2)
    with pytest.raises(ValueError, match=r"label\(s\) \[3\]"):
        annotation_target(np.array([[3]]), 1)  # without old classes, 3 is no label


def test_training_pair_is_cropped_to_the_annotation():
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3)).astype(np.uint8)
    ann = np.zeros((300, 400), np.uint8)
    ann[100:110, 200:210] = 1
    pair, offset = training_pair(img, ann, margin=20)
    assert offset == (80, 180)
    assert pair.image.shape == (50, 50, 3) and (pair.target == 1).sum() == 100
    np.testing.assert_array_equal(pair.image, img[80:130, 180:230])
    assert training_pair(img, np.zeros_like(ann)) is None
    with pytest.raises(ValueError, match="paint in a layer made for this image"):
        training_pair(img, ann[:10])


def test_class_statistics():
    cm = np.zeros((10, 10), np.uint8)
    cm[0:2, 0:2] = 1
    cm[5:8, 5:8] = 1
    cm[0, 9] = 2
    rows = class_statistics(cm, ["A", "B", "C"], pixel_size_um=0.5)
    assert [r["nuclei"] for r in rows] == [2, 1, 0]
    assert rows[0]["area_px"] == 13 and rows[0]["mean_area_px"] == 6.5 and rows[0]["area_um2"] == 13 * 0.25


def test_sparse_annotations_get_advice():
    from napari_cinuseg.annotations import sparse_annotation_advice
    from napari_cinuseg.datasets.labelled import TrainingPair

    img = np.zeros((64, 64, 3), np.uint8)
    target = np.full((64, 64), 255, np.uint8)
    target[2:4, 2:4] = 1  # one nucleus, no background
    advice = sparse_annotation_advice([TrainingPair(img, target)])
    assert "only 1 painted example(s)" in advice and "no background is painted" in advice
    for i in range(10):  # ten separate nuclei and some background
        target[10 + 4 * i : 12 + 4 * i, 20:22] = 1
    target[:, 60:] = 0
    assert sparse_annotation_advice([TrainingPair(img, target)]) is None


def test_an_annotation_is_saved_beside_its_model_and_read_back(tmp_path):
    import zarr

    from napari_cinuseg.annotations import annotation_file, read_annotation, save_annotation

    path = annotation_file(tmp_path / "base+lymphocyte-20260101.cinuseg.pt", "CMU-1 region")
    assert path == tmp_path / "base+lymphocyte-20260101.CMU-1-region.annotation.tif"
    ann = np.zeros((700, 530), np.uint8)  # not a whole number of tiles
    ann[10:20, 500:530], ann[690:, :5] = 1, 2
    save_annotation(path, ann, "CMU-1 region", "Lymphocyte", "#00ffff")
    labels, info = read_annotation(path)
    np.testing.assert_array_equal(labels, ann)
    assert info == {"image": "CMU-1 region", "class": "Lymphocyte", "colour": "#00ffff"}
    lazy = zarr.zeros((600, 600), chunks=(256, 256), dtype="uint8")  # a slide's annotation layer
    lazy[590:, 590:] = 1
    save_annotation(tmp_path / "slide.annotation.tif", lazy, "slide", "Lymphocyte")
    np.testing.assert_array_equal(read_annotation(tmp_path / "slide.annotation.tif")[0], lazy[:])
    assert not list(tmp_path.glob(".*partial"))


def test_a_file_that_is_not_an_annotation_is_named(tmp_path):
    import tifffile

    from napari_cinuseg.annotations import read_annotation

    (tmp_path / "notes.annotation.tif").write_text("not a tiff")
    with pytest.raises(ValueError, match=r"notes.annotation.tif is not a readable TIFF"):
        read_annotation(tmp_path / "notes.annotation.tif")
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"plain.tif is a TIFF but not a CiNuSeg annotation"):
        read_annotation(tmp_path / "plain.tif")


def test_classes_offered_for_correction_but_not_painted_leave_the_step():
    from napari_cinuseg.annotations import painted_corrections
    from napari_cinuseg.datasets.labelled import TrainingPair

    pair = TrainingPair(np.zeros((1, 4, 3), np.uint8), np.array([[1, 0, 3, 255]], np.uint8), "a")
    (kept,), names = painted_corrections([pair], ["Epithelial", "Spindle-shaped"])
    assert names == ["Spindle-shaped"] and kept.target.tolist() == [[1, 0, 2, 255]]
    (same,), both = painted_corrections([pair._replace(target=np.array([[2, 3]], np.uint8))], ["A", "B"])
    assert both == ["A", "B"] and same.target.tolist() == [[2, 3]]  # both painted: as they were


def test_the_whole_image_is_the_step_s_context_unless_a_margin_is_given():
    img = np.zeros((300, 400, 3), np.uint8)
    ann = np.zeros((300, 400), np.uint8)
    ann[100:110, 200:210] = 1
    pair, offset = training_pair(img, ann)
    assert pair.target.shape == (300, 400) and offset == (0, 0)
    assert (pair.target == 255).sum() == 300 * 400 - 100  # the rest unlabelled, not background
    pair, offset = training_pair(img, ann, margin=20)
    assert pair.target.shape == (50, 50) and offset == (80, 180)
