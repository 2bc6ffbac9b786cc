"""A step at the prior's pixel size: a 20× image (0.5 µm/px) and the 40× bundled model (0.25 µm/px).
The step trains on the painted pairs resampled to the model's pixel size, and its review and live
preview see them as Segment image does, so the review's calls are Segment image's calls; the same
through ``cinuseg step`` on a painted 20× folder. Real CoNSeP patches, downsampled by 2."""

import json

import numpy as np
import pytest
import torch
from skimage import io as skio
from skimage.measure import label
from skimage.transform import resize

from napari_cinuseg.cli import main
from napari_cinuseg.datasets.labelled import TrainingPair
from napari_cinuseg.inference.segmentation import segment
from napari_cinuseg.model.file import BUNDLED_MODEL, load_model
from napari_cinuseg.runtime.events import Preview, drain
from napari_cinuseg.session.learning import learn_class
from napari_cinuseg.session.preview import with_preview
from napari_cinuseg.session.review import review_step
from napari_cinuseg.training.resampling import pairs_at_pixel_size, resampled_pair
from napari_cinuseg.training.settings import preset
from napari_cinuseg.training.steps import train_step

AT_20X = 0.5  # µm per pixel of the painted images: a 40× CoNSeP patch (0.25) downsampled by 2


@pytest.fixture(scope="module")
def painted_20x(consep):
    """A CoNSeP patch rich in Other nuclei at 20× (128 px), painted: its Other nuclei 1, background
    on every fifth column, the rest unlabelled (255)."""
    other = consep.class_id("Other")
    item = next(it for it in consep.items if it.name == "train_18_003")
    image = resize(item.image, (128, 128, 3), order=1, anti_aliasing=True, preserve_range=True)
    labels = resize(item.labels, (128, 128), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
    target = np.full(labels.shape, 255, np.uint8)
    target[labels == other] = 1
    target[(labels == 0) & (np.arange(128) % 5 == 0)] = 0
    return TrainingPair((image + 0.5).astype(np.uint8), target, item.name)


def _calls(model, class_map, target) -> np.ndarray:
    """The class most of each painted nucleus's pixels get (a connected region painted 1)."""
    nuclei, k = label(target == 1), model.num_channels
    counts = np.bincount(nuclei.ravel() * k + class_map.ravel(), minlength=(nuclei.max() + 1) * k)
    return counts.reshape(-1, k)[1:].argmax(1)


def _review_calls(model, review) -> list[int]:
    """The review's counts as calls per channel: background, each old class, the new class."""
    out = [review.called_background] + [review.called_old[c] for c in model.class_names[:-1]]
    return out + [review.called]


def test_training_pairs_are_resampled_to_the_models_pixel_size_with_their_labels_intact():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    target = rng.choice(np.array([0, 1, 255], np.uint8), (30, 40))
    pair = TrainingPair(image, target, "a")
    (up,), factor = pairs_at_pixel_size([pair], 0.5, 0.25)
    assert factor == 2.0 and up.image.shape == (60, 80, 3) and up.target.shape == (60, 80) and up.name == "a"
    assert up.image.dtype == np.uint8 and set(np.unique(up.target)) == {0, 1, 255}  # no label blended
    np.testing.assert_array_equal(up.target[::2, ::2], target)  # nearest neighbour: each label kept whole
    (down,), factor = pairs_at_pixel_size([pair], 0.25, 0.5)
    assert factor == 0.5 and down.image.shape == (15, 20, 3) and set(np.unique(down.target)) <= {0, 1, 255}
    for px, model_px in ((0.26, 0.25), (None, 0.25), (0.5, None)):  # within 5 % or unknown: left alone
        (same,), factor = pairs_at_pixel_size([pair], px, model_px)
        assert factor == 1.0 and same is pair
    assert resampled_pair(pair, 1.0) is pair
    assert up.instances is None  # none given, none made


def test_an_instance_map_is_resampled_with_its_pair_nucleus_ids_intact():
    ids = np.zeros((30, 40), np.int32)
    ids[2:10, 3:12], ids[12:25, 20:35] = 7, 300  # ids above 255 survive
    pair = TrainingPair(np.zeros((30, 40, 3), np.uint8), (ids > 0).astype(np.uint8), "a", ids)
    (up,), _ = pairs_at_pixel_size([pair], 0.5, 0.25)
    assert up.instances.shape == (60, 80) and up.instances.dtype == np.int32
    np.testing.assert_array_equal(up.instances[::2, ::2], ids)
    (down,), _ = pairs_at_pixel_size([pair], 0.25, 0.5)
    assert down.instances.shape == (15, 20) and set(np.unique(down.instances)) == {0, 7, 300}


def test_a_20x_step_is_reviewed_as_segment_image_calls_the_painted_nuclei(painted_20x):
    prior = load_model(BUNDLED_MODEL)
    assert prior.pixel_size == 0.25
    settings = preset("cpu", iterations=12, crop_size=64, batch_size=4, device="cpu", log_every=1)
    job = learn_class(prior, [painted_20x], "Other", "#ff0000", settings, out=None, pixel_size=AT_20X)
    events = []
    model = drain(with_preview(job, [painted_20x], every_s=0.0, image_pixel_size=AT_20X), events.append)
    previews = [ev for ev in events if isinstance(ev, Preview)]
    assert previews and all(p.maps[0].shape == (128, 128) for p in previews)  # at the image's own scale
    # the step saw its images at the model's pixel size: crops of the 256 px resampled image
    crops = [c for ev in events for c in getattr(ev, "crops", ())]
    assert crops and max(c.top + c.size for c in crops) > 128 and max(c.left + c.size for c in crops) > 128

    review = drain(review_step(prior, model, [painted_20x], "Other", device="cpu", image_pixel_size=AT_20X))
    assert review.maps[0].shape == (128, 128)
    segmented = drain(segment(model, painted_20x.image, image_pixel_size=AT_20X, device="cpu"))  # Segment image
    calls = _calls(model, segmented, painted_20x.target)
    assert review.painted == len(calls) > 50
    assert _review_calls(model, review) == np.bincount(calls, minlength=model.num_channels).tolist()
    np.testing.assert_array_equal(review.maps[0], segmented)

    # the review as it was, on the image unresampled, called them otherwise
    unresampled = drain(review_step(prior, model, [painted_20x], "Other", device="cpu"))
    assert abs(unresampled.called_background - review.called_background) > len(calls) // 4


def _weights(model) -> dict:
    return {k: v.float() for k, v in model.network.state_dict().items()}


def test_cinuseg_step_on_a_painted_20x_folder_trains_at_the_priors_pixel_size(painted_20x, tmp_path, capsys):
    folder = tmp_path / "painted"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    skio.imsave(folder / "images" / "a.png", painted_20x.image, check_contrast=False)
    skio.imsave(folder / "labels" / "a.png", painted_20x.target, check_contrast=False)
    (folder / "classes.json").write_text(json.dumps({"0": "background", "1": "Other", "pixel_size_um": AT_20X}))
    quick = {"iterations": 2, "batch_size": 2, "crop_size": 64, "device": "cpu"}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in quick.items()]
    out = tmp_path / "step.cinuseg.pt"
    args = ["step", "--dataset", "folder", "--data", str(folder), "--split", "all", *flags]
    assert main([*args, "--prior", str(BUNDLED_MODEL), "--new-class", "Other", "--out", str(out)]) == 0
    assert "the images (0.5 µm/px) are resampled to the prior's 0.25 µm/px" in capsys.readouterr().err

    prior = load_model(BUNDLED_MODEL)
    settings = preset("cpu", **quick).for_network(prior.arch)
    pair = TrainingPair(painted_20x.image, painted_20x.target, "a")
    want = tmp_path / "headless.cinuseg.pt"
    drain(train_step(prior, [pair], ["Other"], settings, out=want, pixel_size=AT_20X))
    unresampled = drain(train_step(prior, [pair], ["Other"], settings))
    got, expected = _weights(load_model(out)), _weights(load_model(want))
    assert all(torch.equal(got[k], expected[k]) for k in got)  # the step learned at 0.25 µm/px
    assert not all(torch.equal(got[k], v) for k, v in _weights(unresampled).items())
