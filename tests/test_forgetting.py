"""The forgetting report that needs no old labels (issue 12, part 4), on real CoNSeP patches."""

import numpy as np
import pytest

from napari_cinuseg.datasets.labelled import TrainingPair
from napari_cinuseg.analysis.forgetting import (
    confident_share,
    format_report,
    forgetting_warnings,
    old_class_agreement,
)
from napari_cinuseg.model.file import BUNDLED_MODEL, load_model


@pytest.fixture(scope="module")
def bundled():
    return load_model(BUNDLED_MODEL)


def _pairs(consep, n=3):
    out = []
    for item in consep.items[:n]:
        target = np.full(item.labels.shape, 255, np.uint8)
        target[:64, :64] = 1  # "painted" new class: left out of the report
        out.append(TrainingPair(item.image, target, item.name))
    return out


def test_an_untrained_child_keeps_everything(bundled, consep):
    child = bundled.child(["Other"])  # sigmoid growth: the old scores are the prior's
    report = old_class_agreement(bundled, child, _pairs(consep))
    assert report["images"] == 3 and report["pixels"] == 3 * (256 * 256 - 64 * 64)
    measured = [v for v in report["agreement"].values() if v is not None]
    assert measured and all(v > 0.99 for v in measured)
    assert forgetting_warnings(report) == []
    assert "Epithelial" in format_report(report)


def test_a_model_that_lost_a_class_is_reported(bundled, consep):
    import torch

    child = bundled.child(["Other"])
    with torch.no_grad():
        child.network.classifier.bias[1] -= 50  # Epithelial can no longer win anywhere
    report = old_class_agreement(bundled, child, _pairs(consep))
    assert report["agreement"]["Epithelial"] == 0.0
    warnings = forgetting_warnings(report)
    assert len(warnings) == 1 and warnings[0].startswith("Epithelial") and "train the step again" in warnings[0]


def test_the_painted_new_class_is_left_out(bundled, consep):
    pairs = _pairs(consep, 1)
    everything_new = [TrainingPair(p.image, np.ones_like(p.target), p.name) for p in pairs]
    report = old_class_agreement(bundled, bundled.child(["Other"]), everything_new)
    assert report["pixels"] == 0 and all(v is None for v in report["agreement"].values())


def test_confident_share_counts_ground_truth_pixels_above_tau(bundled, consep):
    from napari_cinuseg.datasets.labelled import LabelledSet

    few = LabelledSet(consep.class_names, consep.items[:4])
    shares = confident_share(bundled, few, ["Epithelial", "Spindle-shaped"], tau=0.7)
    assert all(v is None or 0 <= v <= 1 for v in shares.values())
    assert confident_share(bundled, few, ["Epithelial"], tau=0.0)["Epithelial"] in (None, 1.0)
