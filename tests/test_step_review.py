"""A step's result before it is kept, headless: the candidate file, the live preview while it
trains, and its review on the painted regions in plain words."""

import numpy as np
import pytest

from napari_cinuseg.datasets.labelled import TrainingPair
from napari_cinuseg.model.file import load_model
from napari_cinuseg.runtime.devices import device_choices
from napari_cinuseg.runtime.events import Preview, Progress, StepStarted, drain
from napari_cinuseg.session.candidate import StepCandidate, training_fingerprint
from napari_cinuseg.session.learning import learn_class
from napari_cinuseg.session.preview import with_preview
from napari_cinuseg.session.review import StepReview, review_step
from napari_cinuseg.session.storage import Storage
from napari_cinuseg.training.steps import train_step


def _painted(pair):
    """A real CoNSeP patch as a user paints it: its new-class nuclei (1) and some background."""
    target = np.full(pair.target.shape, 255, np.uint8)
    target[pair.target == 1] = 1
    target[(pair.target == 0) & (np.arange(pair.target.shape[1]) % 7 == 0)] = 0
    return TrainingPair(pair.image[:160, :160], target[:160, :160], pair.name)


def test_the_preview_is_the_training_model_and_leaves_training_unchanged(base_file, few_pairs, tiny):
    pairs = [_painted(p) for p in few_pairs[1][:2]]
    settings = tiny.replace(iterations=6, log_every=1)
    job = train_step(base_file, pairs, ["Other"], settings)
    seen = []
    events = with_preview(job, pairs, every_s=0.0)
    for ev in events:
        seen.append(ev)
        if isinstance(ev, Progress) and ev.iteration == 2:
            (started,) = [e for e in seen if isinstance(e, StepStarted)]
            model = started.model  # the model being trained
            assert model is not None and model.class_names == ["Epithelial", "Spindle-shaped", "Other"]
            assert model.network.training  # in training, not left in eval mode
    previews = [ev for ev in seen if isinstance(ev, Preview)]
    assert previews and [p.iteration for p in previews] == list(range(1, 6))  # none after the last
    assert previews[0].maps[0].shape == (160, 160) and previews[0].offsets == ((0, 0), (0, 0))
    assert int(previews[-1].maps[0].max()) <= 3
    # the same step without previews ends with the same weights: a preview changes nothing
    with_p = seen[-1].model
    without = drain(train_step(base_file, pairs, ["Other"], settings))
    for a, b in zip(with_p.network.state_dict().values(), without.network.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())


def test_review_counts_the_painted_nuclei_and_says_grew_or_shrank(base_file, few_pairs, tiny):
    from napari_cinuseg.model.file import load_model

    prior = load_model(base_file)
    pairs = [_painted(p) for p in few_pairs[1][:1]]
    candidate = drain(train_step(prior, pairs, ["Other"], tiny.replace(iterations=2)))
    review = drain(review_step(prior, candidate, pairs, "Other", device="cpu", tile=128))
    assert review.maps[0].shape == (160, 160)
    from skimage.measure import label

    assert review.painted == label(pairs[0].target == 1).max() > 0
    assert review.called + review.called_background + sum(review.called_old.values()) == review.painted
    assert set(review.old_pixels) == {"Epithelial", "Spindle-shaped"}
    assert f"of the {review.painted} painted Other nuclei Other" in review.new_class_sentence()
    # a pair whose context is a whole image: the review segments its painted part and 64 px
    whole = np.full((400, 420), 255, np.uint8)
    whole[200:360, 220:380] = pairs[0].target
    image = np.full((400, 420, 3), 230, np.uint8)
    image[200:360, 220:380] = pairs[0].image
    rows, cols = np.nonzero(pairs[0].target != 255)
    big = drain(review_step(prior, candidate, [TrainingPair(image, whole)], "Other", device="cpu", tile=128))
    y0, x0 = 200 + rows.min() - 64, 220 + cols.min() - 64
    assert big.offsets == [(y0, x0)] and big.maps[0].shape == (400 - y0, 420 - x0)
    assert big.painted == review.painted

    r = StepReview(
        "Lymphocyte",
        [],
        painted=15,
        called=2,
        called_background=13,
        old_pixels={
            "Epithelial": (1000, 300, 280),
            "Spindle-shaped": (1000, 2000, 900),
            "Other": (500, 500, 490),
            "Necrosis": (0, 0, 0),
            "Moved": (1000, 1000, 300),
        },
    )
    words = " ".join(r.old_class_sentences())
    assert "Epithelial shrank: the new model marks 30% of the pixels the prior did" in words
    assert "may have forgotten Epithelial" in words
    assert (
        "Spindle-shaped grew: the new model marks 2.0× the pixels" in words
        and "may call other nuclei Spindle-shaped" in words
    )
    assert "Other is kept" in words and "Necrosis: neither model finds it" in words and "Moved moved" in words
    assert "segment an image that has Necrosis before keeping it" in words  # a class the step cannot check
    assert "calls 2 of the 15 painted Lymphocyte nuclei Lymphocyte (13 background)" in r.new_class_sentence()
    assert "Fewer than half" in r.new_class_sentence() and r.worrying()
    assert not StepReview("X", [], painted=4, called=4, old_pixels={"A": (10, 10, 10)}).worrying()


def test_a_candidate_waits_beside_the_models_until_kept(tmp_path):
    storage = Storage(tmp_path / "models", tmp_path / "results")
    cand = storage.candidate_path(None, "Lymphocyte")
    assert cand.parent == tmp_path / "models" / "candidates" and cand.name.startswith("base+lymphocyte-")
    cand.write_bytes(b"model")
    kept = storage.keep(cand)
    assert kept == tmp_path / "models" / cand.name and kept.read_bytes() == b"model" and not cand.exists()
    cand.write_bytes(b"again")
    with pytest.raises(FileExistsError, match="exists; the candidate stays at"):
        storage.keep(cand)


def test_steps_ending_in_the_same_second_get_their_own_names(tmp_path, monkeypatch):
    from datetime import datetime

    from napari_cinuseg.session import storage as storage_module

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 2, 10, 12, 33)

    monkeypatch.setattr(storage_module, "datetime", Frozen)
    storage = Storage(tmp_path / "models", tmp_path / "results")
    waiting = storage.candidate_path(None, "Lymphocyte")
    waiting.write_bytes(b"the result waiting to be kept")
    again = storage.candidate_path(None, "Lymphocyte")  # train again, in the same second
    assert again != waiting and again.name == "base+lymphocyte-20261202-101233-2.cinuseg.pt"
    kept = storage.keep(waiting)
    assert storage.candidate_path(None, "Lymphocyte") not in (kept, waiting)  # nor a kept model's name
    assert waiting.exists() is False and kept.read_bytes() == b"the result waiting to be kept"


def test_device_choices_list_auto_the_cpu_and_each_gpu(monkeypatch):
    import torch

    assert [d for _, d in device_choices()][:2] == ["auto", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"Fake GPU {i}")
    names = dict((d, label) for label, d in device_choices())
    assert names["cuda:0"] == "GPU 0: Fake GPU 0" and names["cuda:1"] == "GPU 1: Fake GPU 1"


def _train(prior, pairs, name, settings, storage):
    """One step as the panel runs it, headless: learn, review, and the result as a candidate."""
    out = storage.candidate_path(prior, name)
    model = drain(learn_class(prior, pairs, name, "#00ff00", settings, out=out))
    review = drain(review_step(prior, model, pairs, name, device="cpu"))
    fingerprint = training_fingerprint(prior, pairs, name, settings)
    return StepCandidate(model, out, name, prior, review, fingerprint=fingerprint)


def test_a_candidate_is_trained_reviewed_kept_replaced_and_discarded_without_qt(base_file, few_pairs, tiny, tmp_path):
    """The keep, replace and discard policy is the engine's: a newer result deletes the file of
    the one it replaces, Keep moves the file into the models folder and makes the model current,
    Discard deletes the file, and the prior's file is never touched."""
    storage = Storage(tmp_path / "models", tmp_path / "results")
    prior = load_model(base_file)
    before = base_file.read_bytes()
    pairs = [_painted(p) for p in few_pairs[1][:2]]
    settings = tiny.replace(iterations=2)

    first = _train(prior, pairs, "Other", settings, storage).replaces(None)
    assert first.path.parent == storage.models / "candidates" and first.path.is_file()
    assert isinstance(first.review, StepReview) and first.review.painted > 0
    assert first.same_training(training_fingerprint(prior, pairs, "Other", settings))  # unchanged paint
    assert not first.same_training(training_fingerprint(prior, pairs[:1], "Other", settings))

    second = _train(prior, pairs[:1], "Other", settings, storage).replaces(first)  # train again
    assert not first.path.exists() and second.path.is_file()
    with pytest.raises(RuntimeError, match="already kept, discarded or replaced"):
        first.keep(storage)

    current = second.keep(storage)
    assert current is second.model and second.path.parent == storage.models and second.path.is_file()
    assert current.source_path == str(second.path) and current.class_names[-1] == "Other"

    third = _train(current, pairs, "Tumour", settings, storage)
    third.discard()
    assert not third.path.exists() and second.path.is_file()
    assert base_file.read_bytes() == before  # the prior's file, untouched throughout


def test_the_preview_follows_the_painted_nuclei_not_the_background_strokes():
    """A painted region of 1200² px whose nuclei sit in one corner and whose background strokes
    spread wide: the 512-px preview box holds the nuclei."""
    from napari_cinuseg.session.preview import preview_boxes

    target = np.full((1200, 1200), 255, np.uint8)
    target[100:140, 900:940] = 1  # the painted nuclei, top right
    target[150:170, 1000:1030] = 1
    target[1100:1110, :] = 0  # a background stroke along the bottom
    (y0, x0, y1, x1), (cy0, cx0, cy1, cx1) = preview_boxes(
        [
            TrainingPair(np.zeros((1200, 1200, 3), np.uint8), target, "a"),
            TrainingPair(np.zeros((100, 80, 3), np.uint8), np.full((100, 80), 255, np.uint8), "b"),
        ]
    )
    assert y1 - y0 == 512 and x1 - x0 == 512
    assert (target[y0:y1, x0:x1] == 1).sum() == (target == 1).sum()  # every painted nucleus is in sight
    assert (cy0, cx0, cy1, cx1) == (0, 0, 100, 80)  # a small region: all of it
