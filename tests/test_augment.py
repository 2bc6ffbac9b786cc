"""Stain and scale augmentation of training crops (augment.py) on real CoNSeP patches."""

import numpy as np
import pytest
import torch

from napari_cinuseg import drain, train_base
from napari_cinuseg.training.augment import magnification_jitter, stain_jitter
from napari_cinuseg.training.crops import CropDataset
from napari_cinuseg.training.settings import TrainSettings


def _crops(dataset, n=8):
    return [dataset[i] for i in range(n)]


def test_off_by_default_gives_the_crops_of_before(few_pairs):
    """Strength 0 draws nothing from the crop's generator: the same crops as a dataset built
    without the options (cached benchmark models stay what this code would train)."""
    plain = _crops(CropDataset(few_pairs[0], 64, seed=3, length=8))
    zero = _crops(CropDataset(few_pairs[0], 64, seed=3, length=8, stain_jitter=0.0, scale_jitter=0.0))
    for (x0, y0, _, b0), (x1, y1, _, b1) in zip(plain, zero):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(b0, b1)


def test_stain_jitter_changes_colour_not_structure(few_pairs):
    img = few_pairs[0][0].image
    rng = np.random.default_rng(0)
    outs = [stain_jitter(img, rng, 1.0) for _ in range(6)]
    grey = img.astype(float).mean(2).ravel()
    for out in outs:
        assert out.shape == img.shape and out.dtype == np.uint8
        # the tissue is where it was: grey levels stay strongly correlated
        assert np.corrcoef(grey, out.astype(float).mean(2).ravel())[0, 1] > 0.8
    means = np.array([o.reshape(-1, 3).mean(0) for o in outs])
    assert means.std(0).max() > 3  # colours really vary between draws
    # deterministic for a given generator, and strength 0 is the identity
    assert np.array_equal(
        stain_jitter(img, np.random.default_rng(5), 1.0), stain_jitter(img, np.random.default_rng(5), 1.0)
    )
    assert stain_jitter(img, rng, 0.0) is img


def test_scale_jitter_zooms_crops_and_keeps_labels_exact(few_pairs):
    ds = CropDataset(few_pairs[0], 64, seed=0, length=32, scale_jitter=1.0)
    labels = set(np.unique(np.concatenate([p.target.ravel() for p in few_pairs[0]])).tolist())
    sizes = []
    for x, y, _, box in _crops(ds, 32):
        assert x.shape == (3, 64, 64) and y.shape == (64, 64) and x.dtype == torch.uint8
        assert set(torch.unique(y).tolist()) <= labels  # nearest-neighbour: no blended label values
        sizes.append(int(box[3]))
    assert min(sizes) >= 32 and max(sizes) <= 128  # 0.5×..2× of 64 pixels read from the image
    assert min(sizes) < 48 and max(sizes) > 90  # and the range is used


def test_magnification_jitter_blurs_a_share_of_the_crops_in_place(few_pairs):
    """A crop seen as a 20× scan: the same tissue at the same place and size, with less detail
    (a lower high-frequency energy); the others untouched."""
    img = few_pairs[0][0].image[:128, :128]
    rng = np.random.default_rng(0)
    outs = [magnification_jitter(img, rng, 0.5) for _ in range(40)]
    same = [o is img for o in outs]
    assert 8 < sum(same) < 32  # about half the crops
    lap = lambda a: np.abs(np.diff(a.astype(float).mean(2), 2, axis=0)).mean()  # noqa: E731
    for out in (o for o, s in zip(outs, same) if not s):
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.corrcoef(img.astype(float).ravel(), out.astype(float).ravel())[0, 1] > 0.8
        assert lap(out) < lap(img)
    assert all(magnification_jitter(img, rng, 0.0) is img for _ in range(5))


def test_augmented_base_step_trains_and_records_its_settings(few_pairs, tiny):
    settings = tiny.replace(stain_jitter=0.5, scale_jitter=0.5, magnification_jitter=0.5, iterations=3)
    model = drain(train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], settings))
    assert model.steps[-1].settings["stain_jitter"] == 0.5 and model.steps[-1].settings["scale_jitter"] == 0.5
    assert model.steps[-1].settings["magnification_jitter"] == 0.5


@pytest.mark.parametrize(
    "field, value",
    [("stain_jitter", -0.1), ("stain_jitter", 3.0), ("scale_jitter", 2.5), ("magnification_jitter", 1.5)],
)
def test_out_of_range_strengths_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainSettings(**{field: value})
