"""The paired bootstrap over test images: Means as scored, their intervals, and differences
paired on the same draws; and the per-image counts the benchmark keeps for it."""

import numpy as np
import pytest
import torch

from napari_cinuseg import CiNuSegModel
from napari_cinuseg.analysis.evaluation import evaluate, score
from napari_cinuseg.benchmark.bootstrap import image_counts, paired_bootstrap
from napari_cinuseg.datasets.labelled import LabelledSet
from napari_cinuseg.model.network import Architecture


def _counts(per_image_dice_pairs):
    """(1 seed, images, classes, 3) from per image and class (tp, truth, called)."""
    return np.asarray([per_image_dice_pairs], np.int64)


def test_means_are_pooled_dice_and_a_method_always_below_has_an_interval_below_zero():
    n = 12
    perfect = _counts([[[50, 50, 50], [10, 10, 10]] for _ in range(n)])  # Dice 100 on both classes
    half = _counts([[[25, 50, 50], [5, 10, 10]] for _ in range(n)])  # Dice 50
    # as good as the reference on all but one image, where it finds nothing of either class
    mixed = perfect.copy()
    mixed[0, 3] = [[0, 50, 0], [0, 10, 0]]
    out = paired_bootstrap({"ref": perfect, "half": half, "mixed": mixed}, reference="ref", resamples=500)
    assert out["ref"]["mean"] == pytest.approx(100) and out["ref"]["low"] == pytest.approx(100)
    assert "difference" not in out["ref"]
    assert out["half"]["mean"] == pytest.approx(50)
    assert out["half"]["difference_low"] == pytest.approx(-50) == out["half"]["difference_high"]
    assert out["half"]["above_reference"] == 0
    # pooled over the images: 2·550 / (600 + 550) for the first class, 2·110 / (120 + 110) for the second
    assert out["mixed"]["mean"] == pytest.approx(100 * (1100 / 1150 + 220 / 230) / 2)
    assert out["mixed"]["low"] < out["mixed"]["mean"] < out["mixed"]["high"] == pytest.approx(100)
    # draws without the bad image tie with the reference: the difference's interval reaches 0
    assert out["mixed"]["difference_low"] < 0 and out["mixed"]["difference_high"] == pytest.approx(0)
    assert paired_bootstrap({"ref": perfect, "mixed": mixed}, "ref", resamples=500) == {
        k: out[k] for k in ("ref", "mixed")
    }  # the same draws for the same seed


def test_a_class_a_draw_lacks_is_left_out_and_seeds_are_averaged():
    # class 2 only on image 0; seed 1 scores class 1 at 0
    seed0 = [[[10, 10, 10], [4, 4, 4]], [[10, 10, 10], [0, 0, 0]]]
    seed1 = [[[0, 10, 0], [4, 4, 4]], [[0, 10, 0], [0, 0, 0]]]
    counts = np.asarray([seed0, seed1], np.int64)
    out = paired_bootstrap({"m": counts}, resamples=400)
    assert out["m"]["mean"] == pytest.approx((100 + 50) / 2)
    # a draw of image 1 alone scores class 1 only: seed 0 100, seed 1 0
    assert out["m"]["low"] == pytest.approx(50) and out["m"]["high"] == pytest.approx(75)


def test_bad_counts_say_what_to_do():
    with pytest.raises(ValueError, match="different numbers of test images"):
        paired_bootstrap({"a": np.zeros((1, 3, 2, 3)), "b": np.zeros((1, 4, 2, 3))})
    with pytest.raises(ValueError, match="not one of the methods"):
        paired_bootstrap({"a": np.zeros((1, 3, 2, 3))}, reference="cinuseg")
    run = {
        "config": {"protocols": {"1-1": [["A"], ["B"]]}},
        "evaluations": {"1-1/cinuseg/step1": {"dice": {"A": 1.0, "B": 1.0}}},
    }
    with pytest.raises(ValueError, match="with the same --out, which scores it again"):
        image_counts([run], "1-1", "cinuseg")
    with pytest.raises(ValueError, match="until mib has finished"):
        image_counts([run], "1-1", "mib")
    run["evaluations"]["1-1/cinuseg/step1"]["per_image"] = {"x": {"A": [1, 2, 1], "B": [0, 1, 0]}}
    other = {**run, "evaluations": {"1-1/cinuseg/step1": {"per_image": {"y": {"A": [1, 1, 1]}}}}}
    images, classes, counts = image_counts([run], "1-1", "cinuseg")
    assert images == ["x"] and classes == ["A", "B"] and counts.tolist() == [[[[1, 2, 1], [0, 1, 0]]]]
    with pytest.raises(ValueError, match="other test images"):
        image_counts([run, other], "1-1", "cinuseg")


def test_per_image_counts_add_up_to_the_dice_the_benchmark_reports(consep):
    torch.manual_seed(0)
    model = CiNuSegModel.new(["Epithelial", "Other"], Architecture("resnet18", "unet", (32, 16, 16, 8)))
    items = [it for it in consep.items if it.source in ("train_1", "train_2")][:6]
    data = LabelledSet(consep.class_names, items)
    scores = score(model, data, "cpu", say_unscored=False)
    assert scores.dice == evaluate(model, data, "cpu", say_unscored=False)
    assert sorted(scores.per_image) == sorted(it.name for it in items)
    for c in ("Epithelial", "Other"):
        tp, truth, called = np.sum([scores.per_image[i][c] for i in scores.per_image], axis=0)
        assert truth == sum(int((it.labels == data.class_id(c)).sum()) for it in items) > 0
        assert scores.dice[c] == pytest.approx(200 * tp / (truth + called))
