"""The forgetting report that needs no old labels, on real CoNSeP patches."""

import numpy as np
import pytest

from napari_cinuseg.analysis.forgetting import (
    FORGETTING_WARN_BELOW,
    confident_share,
    forgetting_warnings,
    format_report,
    old_class_agreement,
)
from napari_cinuseg.datasets.labelled import TrainingPair
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
    assert warnings[0].startswith("Epithelial") and "train the step again" in warnings[0]
    # one sentence per class below the threshold (Epithelial's pixels may go to another class,
    # whose agreement then falls too), and none for a class above it
    low = [c for c, v in report["agreement"].items() if v is not None and v < FORGETTING_WARN_BELOW]
    assert [w.split(":")[0] for w in warnings] == low


def test_the_painted_new_class_is_left_out(bundled, consep):
    pairs = _pairs(consep, 1)
    everything_new = [TrainingPair(p.image, np.ones_like(p.target), p.name) for p in pairs]
    report = old_class_agreement(bundled, bundled.child(["Other"]), everything_new)
    assert report["pixels"] == 0 and all(v is None for v in report["agreement"].values())


def test_confident_share_counts_ground_truth_pixels_above_tau(bundled, consep):
    import torch

    from napari_cinuseg.datasets.labelled import LabelledSet
    from napari_cinuseg.model.segmenter import image_batch

    few = LabelledSet(consep.class_names, consep.items[:4])
    classes = ["Epithelial", "Spindle-shaped"]
    # the share counted by hand from the model's own scores, on the ground truth's pixels
    hit, total = {c: 0 for c in classes}, {c: 0 for c in classes}
    bundled.network.eval()
    with torch.no_grad():
        for item in few.items:
            x = image_batch(item.image)
            scores = torch.sigmoid(bundled.network(bundled.normalize(x)).logits)[0].numpy()
            for c in classes:
                mask = item.labels == few.class_names.index(c) + 1
                total[c] += int(mask.sum())
                hit[c] += int((scores[bundled.channel_of(c)][mask] > 0.7).sum())
    assert all(total.values()), "these patches hold both classes"
    shares = confident_share(bundled, few, classes, tau=0.7)
    assert shares == {c: round(hit[c] / total[c], 4) for c in classes}
    assert 0 < shares["Epithelial"] < 1
    assert confident_share(bundled, few, classes, tau=0.0) == {c: 1.0 for c in classes}
    assert confident_share(bundled, few, classes, tau=1.0) == {c: 0.0 for c in classes}
    none_here = LabelledSet(consep.class_names, [i for i in consep.items if not (i.labels == 1).any()][:1])
    assert confident_share(bundled, none_here, ["Epithelial"])["Epithelial"] is None


def test_read_only_images_are_scored_without_a_warning(bundled, consep):
    import dataclasses
    import warnings

    from napari_cinuseg.datasets.labelled import LabelledSet

    items = []
    for item in consep.items[:2]:
        image = item.image.copy()
        image.setflags(write=False)  # as a cached data set or a napari layer hands them out
        items.append(dataclasses.replace(item, image=image))
    few = LabelledSet(consep.class_names, items)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning would fail here
        shares = confident_share(bundled, few, ["Epithelial"], tau=0.7)
        bundled.predict(items[0].image)
    assert shares["Epithelial"] is None or 0 <= shares["Epithelial"] <= 1


def test_confident_share_leaves_every_module_mode_as_it_was(bundled, consep):
    """A model in training, whose step froze some batch norms, can be scored and trains on as it was."""
    from napari_cinuseg.datasets.labelled import LabelledSet

    few = LabelledSet(consep.class_names, consep.items[:1])
    net = bundled.network
    net.train()
    frozen = [m for m in net.modules() if "BatchNorm" in type(m).__name__][:3]
    for m in frozen:
        m.eval()
    modes = [m.training for m in net.modules()]
    try:
        confident_share(bundled, few, ["Epithelial"], tau=0.7)
        assert [m.training for m in net.modules()] == modes
    finally:
        net.eval()
