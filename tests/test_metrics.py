"""Dice, the name-to-channel match of evaluate, and the benchmark's summary, against numbers worked
out by hand."""

import math

import numpy as np
import pytest

from napari_cinuseg.analysis.evaluation import evaluate, pixel_confusion
from napari_cinuseg.analysis.metrics import ConfusionMatrix
from napari_cinuseg.benchmark.report import scored_classes, summarize
from napari_cinuseg.datasets.labelled import LabelledImage, LabelledSet
from napari_cinuseg.datasets.protocols import make_protocol
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.model.segmenter import CiNuSegModel


def test_dice_by_hand_and_nan_for_a_class_without_truth_even_when_predicted():
    cm = ConfusionMatrix(3)
    # truth 0 0 0 1 1 (255 skipped); prediction 0 0 1 1 2
    cm.update(np.array([0, 0, 0, 1, 1, 255]), np.array([0, 0, 1, 1, 2, 2]))
    dice = cm.dice()
    assert dice[0] == pytest.approx(2 * 2 / (3 + 2))  # TP 2, |GT| 3, |P| 2
    assert dice[1] == pytest.approx(2 * 1 / (2 + 2))  # TP 1, |GT| 2, |P| 2
    assert math.isnan(dice[2])  # predicted once, but no ground truth: scored for no method
    cm2 = ConfusionMatrix(3)
    cm2.update(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 1]))
    assert math.isnan(cm2.dice()[2])  # neither predicted nor present: the same NaN
    with pytest.raises(ValueError, match="differ in size"):
        cm.update(np.zeros(3), np.zeros(4))


def test_evaluate_matches_the_data_classes_to_the_model_channels_by_name(monkeypatch):
    model = CiNuSegModel.new(["Epithelial", "Spindle-shaped", "Other"], Architecture("resnet18", "unet", (16, 8, 8, 8)))
    # the data names its classes in another order and has one the model does not know
    labels = np.array([[1, 1, 2, 2], [0, 0, 3, 3]], np.uint8)  # 1 Other, 2 Epithelial, 3 Lymphocyte
    data = LabelledSet(
        ["other", "Epithelial", "Lymphocyte"], [LabelledImage(np.zeros((2, 4, 3), np.uint8), labels, "s", "a")]
    )
    # the model's channels: 1 Epithelial, 2 Spindle-shaped, 3 Other
    prediction = np.array([[3, 0, 1, 1], [0, 2, 1, 0]], np.int64)
    monkeypatch.setattr(model, "predict", lambda image, device=None: prediction)
    with pytest.warns(UserWarning, match="Lymphocyte pixels are ignored"):
        dice = evaluate(model, data, "cpu")
    assert set(dice) == {"other", "Epithelial"}
    # Other: truth at (0,0),(0,1); predicted channel 3 at (0,0) -> 2·1/(2+1)
    assert dice["other"] == pytest.approx(100 * 2 / 3)
    # Epithelial: truth at (0,2),(0,3); predicted channel 1 at (0,2),(0,3) and the ignored (1,2) -> 2·2/(2+2)
    assert dice["Epithelial"] == pytest.approx(100.0)


def test_pixel_confusion_counts_each_labelled_class_against_each_channel(monkeypatch):
    model = CiNuSegModel.new(["Epithelial", "Other"], Architecture("resnet18", "unet", (16, 8, 8, 8)))
    # data: 1 Other, 2 Epithelial, 3 Lymphocyte (unknown to the model); 255 unlabelled
    labels = np.array([[1, 1, 2, 2], [0, 0, 3, 255]], np.uint8)
    data = LabelledSet(
        ["Other", "Epithelial", "Lymphocyte"], [LabelledImage(np.zeros((2, 4, 3), np.uint8), labels, "s", "a")]
    )
    prediction = np.array([[2, 0, 1, 1], [0, 2, 1, 2]], np.int64)  # channels: 1 Epithelial, 2 Other
    monkeypatch.setattr(model, "predict", lambda image, device=None: prediction)
    c = pixel_confusion(model, data, "cpu")
    assert c.truth_names == ["background", "Other", "Epithelial", "Lymphocyte"]
    assert c.predicted_names == ["background", "Epithelial", "Other"]
    assert c.counts.tolist() == [[1, 0, 1], [1, 0, 1], [0, 2, 0], [0, 1, 0]]  # the 255 pixel is not counted
    r = c.record()
    assert r["truth"]["Lymphocyte"] == {"background": 0, "Epithelial": 1, "Other": 0}
    assert r["predicted_pixels"]["Epithelial"] == 3
    assert r["predicted_on"]["Epithelial"]["Lymphocyte"] == pytest.approx(1 / 3, abs=1e-4)
    assert r["predicted_on"]["Other"] == {"background": 0.5, "Other": 0.5, "Epithelial": 0.0, "Lymphocyte": 0.0}
    bad = LabelledSet(["Other"], [LabelledImage(np.zeros((2, 4, 3), np.uint8), labels, "s", "a")])
    with pytest.raises(ValueError, match="label 3 but the data set names 1 classes"):
        pixel_confusion(model, bad, "cpu")


def test_summary_means_over_the_classes_scored_and_says_which():
    protocol = make_protocol("1-1", ["Epithelial", "Lymphocyte", "Neutrophil"])
    dice = {"Epithelial": 60.0, "Lymphocyte": 30.0, "Neutrophil": float("nan")}
    s = summarize(protocol, dice)
    assert s["old"] == 60.0 and s["new"] == 30.0 and s["mean"] == 45.0
    scored, absent = scored_classes({"cinuseg": {**s, "per_class": dice}, "mib": {"per_class": dice}})
    assert scored == ["Epithelial", "Lymphocyte"] and absent == ["Neutrophil"]
