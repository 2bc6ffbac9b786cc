import json

import numpy as np
import pytest
from skimage import io as skio

from napari_cinuseg.datasets.labelled import TrainingPair, read_folder, read_monusac_images, step_pairs
from napari_cinuseg.datasets.splits import split_by_source
from napari_cinuseg.training.crops import CropDataset


def test_consep_regrouped_into_the_papers_classes(consep, shared_data):
    assert consep.class_names == ["Epithelial", "Spindle-shaped", "Other"]
    assert len(consep.items) == 432 and len(consep.sources) == 27
    raw = skio.imread(shared_data / "consep/train/labels/train_1_000.png")
    item = next(it for it in consep.items if it.name == "train_1_000")
    assert item.source == "train_1"
    # merged ids: 3 epithelial → 1, 4 spindle → 2, 1 other + 2 inflammatory → 3
    np.testing.assert_array_equal(item.labels == 1, raw == 3)
    np.testing.assert_array_equal(item.labels == 2, raw == 4)
    np.testing.assert_array_equal(item.labels == 3, (raw == 1) | (raw == 2))


def test_monusac_sources_are_slides(shared_data):
    data = read_monusac_images(shared_data / "monusac")
    assert data.class_names == ["Epithelial", "Lymphocyte", "Macrophage", "Neutrophil"]
    assert "TCGA-2Z-A9JN-01Z-00-DX1" in data.sources and len(data.sources) == 12


def test_split_by_source_never_cuts_a_source(consep):
    train, val = split_by_source(consep, 0.2, seed=0)
    assert not set(train.sources) & set(val.sources)
    assert len(train.items) + len(val.items) == len(consep.items)
    assert split_by_source(consep, 0.2, seed=0)[1].sources == val.sources


def test_step_pairs_follow_the_protocol(consep):
    pairs = step_pairs(consep, ["Other"])
    item = {it.name: it for it in consep.items}
    for p in pairs[:20]:
        assert set(np.unique(p.target)) <= {0, 1}
        np.testing.assert_array_equal(p.target == 1, item[p.name].labels == 3)
    assert all((p.target == 1).any() for p in pairs)


def test_folder_reader_and_its_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    img = np.full((40, 50, 4), 200, np.uint8)  # RGBA: the alpha is dropped
    skio.imsave(tmp_path / "images/a_1.png", img, check_contrast=False)
    lab = np.zeros((40, 50), np.uint8)
    lab[5:10, 5:10] = 2
    skio.imsave(tmp_path / "labels/a_1.png", lab, check_contrast=False)
    with pytest.raises(FileNotFoundError, match="classes.json"):
        read_folder(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"0": "background", "1": "tumour", "2": "stroma"}))
    data = read_folder(tmp_path)
    assert data.class_names == ["tumour", "stroma"] and data.items[0].image.shape == (40, 50, 3)
    assert (data.items[0].labels == 2).sum() == 25


def test_crops_pad_small_images_and_are_reproducible():
    img = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
    tgt = np.ones((40, 30), np.uint8)
    ds = CropDataset([TrainingPair(img, tgt)], crop=64, seed=3)
    x, y, _, box = ds[0]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert (y == 255).sum() == 64 * 64 - 40 * 30 and (y == 1).sum() == 40 * 30
    assert tuple(box.tolist()) == (0, 0, 0, 64)  # (image, top, left, size): the padded image whole
    x2, y2, _, _ = ds[0]
    assert (x == x2).all() and (y == y2).all()


def test_crops_are_boxes_of_the_image_and_change_with_the_epoch():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (200, 150, 3), dtype=np.uint8)
    ds = CropDataset([TrainingPair(img, np.zeros((200, 150), np.uint8))], crop=32, seed=3, length=4)
    boxes = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(4):
            x, _, _, box = ds[i]
            _, top, left, c = box.tolist()
            window = img[top : top + c, left : left + c]
            # the crop is the box's pixels, up to a rotation by k·90° and a flip
            views = [np.rot90(window, k) for k in range(4)]
            views += [v[:, ::-1] for v in views]
            assert any(np.array_equal(x.permute(1, 2, 0).numpy(), v) for v in views)
            boxes[epoch, i] = (top, left)
    assert [boxes[0, i] for i in range(4)] != [boxes[1, i] for i in range(4)]


def test_read_dataset_tells_layouts_apart(shared_data, tmp_path):
    from napari_cinuseg.datasets.layouts import read_dataset

    assert read_dataset("consep", shared_data / "consep").class_names == ["Epithelial", "Spindle-shaped", "Other"]
    assert len(read_dataset("monusac", shared_data / "monusac").sources) == 12
    with pytest.raises(ValueError, match="no layout known for consep"):
        read_dataset("consep", tmp_path)
    with pytest.raises(ValueError, match="unknown data set"):
        read_dataset("pannuke", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dataset("consep", tmp_path / "missing")


def test_the_balanced_split_gives_every_class_a_fair_share_of_the_held_out_slides(shared_data):
    from napari_cinuseg.datasets.labelled import read_monusac_images
    from napari_cinuseg.datasets.splits import class_pixels_by_source

    data = read_monusac_images(shared_data / "monusac")
    counts = class_pixels_by_source(data)
    total = sum(counts.values())
    _, random_val = split_by_source(data, 0.2, seed=0)
    assert (sum(counts[s] for s in random_val.sources) == 0).any()  # a random choice misses a class here
    for seed in (0, 1, 2):
        train, val = split_by_source(data, 0.2, seed=seed, balanced=True)
        assert not set(train.sources) & set(val.sources) and len(val.sources) == 2
        share = sum(counts[s] for s in val.sources) / total
        assert ((share > 0.1) & (share < 0.35)).all(), (val.sources, share)
    assert (
        split_by_source(data, 0.2, seed=1, balanced=True)[1].sources
        == split_by_source(data, 0.2, seed=1, balanced=True)[1].sources
    )


def test_crops_of_read_only_images_are_made_without_a_warning():
    import warnings

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    tgt = np.ones((32, 32), np.uint8)
    for a in (img, tgt):
        a.setflags(write=False)  # as a cached data set hands them out
    ds = CropDataset([TrainingPair(img, tgt)], crop=32, seed=0, length=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning would fail here
        crops = [ds[i] for i in range(40)]
    # some crops are the image itself, unturned: those are the ones that were views of it
    assert any(np.array_equal(x.permute(1, 2, 0).numpy(), img) for x, _, _, _ in crops)


def test_three_splits_by_source_keep_every_class_in_tune_and_test(shared_data):
    from napari_cinuseg.datasets.labelled import read_monusac_images
    from napari_cinuseg.datasets.splits import class_pixels_by_source, split_three

    data = read_monusac_images(shared_data / "monusac")
    train, tune, test = split_three(data, seed=0)
    parts = [set(p.sources) for p in (train, tune, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(data.sources) and [len(p) for p in parts] == [4, 4, 4]
    for part in (tune, test):
        assert (sum(class_pixels_by_source(part).values()) > 0).all()  # every class is there
    assert split_three(data, seed=0)[2].sources == test.sources  # the same for the same seed
    with pytest.raises(ValueError, match="leave no sources to train on"):
        split_three(data, 0.5, 0.5)
