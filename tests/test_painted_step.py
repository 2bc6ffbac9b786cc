"""The painted step: a few painted nuclei, one step from the bundled model, never diverging;
the sparse-annotation rule of the losses; simulated painting. Real data, CPU, small crops."""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cinuseg import drain, load_model, train_step
from napari_cinuseg.benchmark.painting import painted_nuclei, simulate_painting
from napari_cinuseg.losses import IGNORE, cinuseg_loss
from napari_cinuseg.methods import register
from napari_cinuseg.methods.finetune import FineTune
from napari_cinuseg.runtime.events import IterationSkipped, Progress
from napari_cinuseg.training.crops import CropDataset
from napari_cinuseg.training.settings import preset

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "napari_cinuseg" / "resources" / "base-consep.cinuseg.pt"


@pytest.fixture(scope="module")
def painted(consep, shared_data):
    """20 painted Other nuclei and background dabs on 4 CoNSeP patches of 2 sources."""
    p = simulate_painting(
        consep.subset(["train_2", "train_3"]),
        "Other",
        20,
        images=4,
        seed=0,
        instances_dir=shared_data / "consep" / "train" / "instances",
    )
    assert p.nuclei == 20 and len(p.sources) <= 2
    return p.pairs


@pytest.fixture(scope="module")
def bundled():
    return load_model(BUNDLED)


def _quick(prior, **changes):
    base = dict(iterations=10, crop_size=64, batch_size=4, device="cpu")
    return preset("cpu", **{**base, **changes}).for_network(prior.arch)


def test_simulated_painting_paints_whole_nuclei_and_background_away_from_them(consep, shared_data, painted):
    assert painted_nuclei(painted) >= 8  # 20 drawn; touching ones merge into one painted region
    for pair in painted:
        t = pair.target
        assert set(np.unique(t)) <= {0, 1, 255}
        assert (t == 255).mean() > 0.8  # sparse: most of the image is not painted
        assert (t == 0).any() and (t == 1).any()
    # the painted pixels of class 1 are the data set's Other nuclei
    item = next(it for it in consep.items if it.name == painted[0].name)
    other = consep.class_id("Other")
    ys, xs = np.nonzero(painted[0].target == 1)
    # the pair is a crop of the image: find its offset by matching the image
    h, w = painted[0].target.shape
    offsets = [
        (y, x)
        for y in range(item.image.shape[0] - h + 1)
        for x in range(item.image.shape[1] - w + 1)
        if np.array_equal(item.image[y : y + h, x : x + w], painted[0].image)
    ]
    y0, x0 = offsets[0]
    assert (item.labels[ys + y0, xs + x0] == other).mean() > 0.9
    bg_y, bg_x = np.nonzero(painted[0].target == 0)
    assert (item.labels[bg_y + y0, bg_x + x0] == 0).all()


def test_the_step_that_diverged_now_stays_finite(bundled, painted):
    """The issue's case, small: fine-tuning from the bundled model under frozen BatchNorm with
    lr_step = 0.01 became NaN within a few iterations. Without gradient clipping it still does
    (the case is real); with the default settings every iteration is finite and none skipped."""
    with pytest.raises(FloatingPointError, match="not finite"):
        drain(
            train_step(
                bundled,
                painted,
                ["Other"],
                _quick(bundled, lr_step=0.01, grad_clip=0.0, max_skipped=0),
                method="finetune",
            )
        )
    events = []
    model = drain(
        train_step(bundled, painted, ["Other"], _quick(bundled, lr_step=0.01), method="finetune"), events.append
    )
    losses = [e.loss for e in events if isinstance(e, Progress)]
    assert len(losses) == 10 and all(math.isfinite(v) and v < 100 for v in losses)
    assert not [e for e in events if isinstance(e, IterationSkipped)]
    assert model.steps[-1].results["skipped_iterations"] == []


@register("test-nan-at-3")
@dataclass
class _NanAtThree(FineTune):
    """Fine-tuning whose loss is NaN at its third iteration."""

    name: str = "test-nan-at-3"
    calls: int = 0

    def loss(self, b):
        out = super().loss(b)
        self.calls += 1
        if self.calls == 3:
            out.loss = out.loss * float("nan")
        return out


def test_a_non_finite_loss_never_reaches_the_optimiser(bundled, painted):
    events = []
    model = drain(
        train_step(bundled, painted, ["Other"], _quick(bundled, iterations=4), method="test-nan-at-3"), events.append
    )
    skipped = [e for e in events if isinstance(e, IterationSkipped)]
    assert [(e.iteration, e.reason) for e in skipped] == [(3, "loss")]
    assert "left as they were" in skipped[0].message
    assert [e.iteration for e in events if isinstance(e, Progress)] == [1, 2, 4]
    record = model.steps[-1].results
    assert record["iterations"] == 4 and [s["iteration"] for s in record["skipped_iterations"]] == [3]
    assert all(math.isfinite(v) for v in record["loss_curve"]["loss"])


def test_the_weights_do_not_move_on_a_skipped_iteration(bundled, painted):
    """Two runs with the same seed and a constant lr, 2 and 3 iterations, the third NaN: the
    same weights."""
    a = drain(train_step(bundled, painted, ["Other"], _quick(bundled, iterations=2, poly_power=0.0), method="finetune"))
    b = drain(
        train_step(bundled, painted, ["Other"], _quick(bundled, iterations=3, poly_power=0.0), method="test-nan-at-3")
    )
    sa, sb = a.network.state_dict(), b.network.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@register("test-always-nan")
@dataclass
class _AlwaysNan(FineTune):
    name: str = "test-always-nan"

    def loss(self, b):
        out = super().loss(b)
        out.loss = out.loss * float("nan")
        return out


def test_too_many_non_finite_iterations_stop_the_step_clearly(bundled, painted, tmp_path):
    out = tmp_path / "never.cinuseg.pt"
    with pytest.raises(FloatingPointError, match=r"in 3 iterations .*nothing was saved.*lr_step"):
        drain(
            train_step(bundled, painted, ["Other"], _quick(bundled, max_skipped=2), method="test-always-nan", out=out)
        )
    assert not out.exists()


def test_crops_are_placed_on_painted_pixels(painted):
    share = lambda ds: np.mean([(ds[i][1] == 1).any() for i in range(len(ds))])  # noqa: E731
    anywhere = CropDataset(painted, 64, seed=0, length=200)
    focused = CropDataset(painted, 64, seed=0, length=200, painted_share=1.0)
    assert share(focused) == 1.0
    assert share(anywhere) < 0.9


def test_new_class_rows_learn_faster_than_the_rest(bundled, painted):
    """new_class_lr scales the first step of the new classifier rows only."""

    def moved(factor):
        m = drain(
            train_step(
                bundled, painted, ["Other"], _quick(bundled, iterations=1, new_class_lr=factor), method="finetune"
            )
        )
        w, b0 = m.network.classifier.weight.detach(), bundled.network.classifier.weight.detach()
        return float(w[3].abs().sum()), float((w[:3] - b0).abs().sum())

    new1, old1 = moved(1.0)
    new10, old10 = moved(10.0)
    assert new10 > 5 * new1
    assert old10 == pytest.approx(old1, rel=1e-4)


def test_new_class_rows_are_clipped_in_a_step(bundled, painted):
    """The new classifier rows' gradient is clipped to grad_clip too (on its own): their first
    SGD step moves them by at most lr_step × new_class_lr × grad_clip."""
    settings = _quick(bundled, iterations=1, new_class_lr=1.0, grad_clip=1e-3)
    m = drain(train_step(bundled, painted, ["Other"], settings, method="finetune"))
    w = m.network.classifier.weight.detach()[3]  # the new row starts at zero weights
    assert float(torch.linalg.vector_norm(w)) <= settings.lr_step * 1e-3 * 1.01


# --- the sparse-annotation rule of the losses (docs/method.md, "Sparse annotations") ---------


def _sparse_case(pkd_scores, **rule):
    """One image of 4×4 pixels, K_old = 3 (bg, old 1, old 2), new class 3. Row 0 painted new,
    pixel (1, 0) painted background, the rest unpainted. The prior calls row 3 old class 1 with
    a score above τ (0.9), row 2 old class 2 below τ (0.6); the new model starts as the prior."""
    old = torch.full((1, 3, 4, 4), -3.0)
    old[0, 0] = 2.0
    old[0, 1, 3], old[0, 0, 3] = 2.2, -2.0  # 0.90 > τ
    old[0, 2, 2], old[0, 0, 2] = 0.4, -1.0  # 0.60 < τ
    logits = torch.cat([old.clone(), torch.full((1, 1, 4, 4), -4.6)], dim=1).requires_grad_(True)
    labels = torch.full((1, 4, 4), IGNORE, dtype=torch.long)
    labels[0, 0] = 3
    labels[0, 1, 0] = 0
    feats = [torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))]
    out = cinuseg_loss(logits, old, feats, [f.clone() for f in feats], labels, [3], pkd_scores=pkd_scores, **rule)
    out.loss.backward()
    return logits.grad[0], labels[0]


@pytest.mark.parametrize("pkd_scores", ["softmax", "sigmoid"])
def test_unpainted_pixels_keep_what_the_prior_knows(pkd_scores):
    grad, labels = _sparse_case(pkd_scores)
    # no term pushes an old class's score down on an unpainted pixel the prior does not claim
    # (rows 1 and 2, row 2 scored 0.6 < τ for class 2: distillation only) ...
    unclaimed = (labels == IGNORE).clone()
    unclaimed[3] = False
    assert grad[1:3][:, unclaimed].max() <= 1e-7  # gradient ≤ 0: the loss falls as the score rises
    # ... and where the prior is confident (row 3, class 1 at 0.9 > τ) its class is held or raised
    assert (grad[1, 3] <= 1e-7).all()


@pytest.mark.parametrize("pkd_scores", ["softmax", "sigmoid"])
def test_unpainted_sure_background_is_background_weighed_apart(pkd_scores):
    """With ``background``: row 1's unpainted pixels, which the prior calls background at 0.88,
    teach background (the new score down, the background up), and weighed apart they leave the
    pull on the prior's old nuclei (row 3) as it is without them; averaged in with the rest they
    would dilute it."""
    grad, labels = _sparse_case(pkd_scores, unpainted="prior", background=0.5, background_apart=True)
    quiet = torch.zeros(4, 4, dtype=torch.bool)
    quiet[1, 1:] = True
    assert (grad[3][quiet] > 0).all() and (grad[0][quiet] < 0).all()
    alone, _ = _sparse_case(pkd_scores, unpainted="prior")
    assert torch.allclose(grad[1, 3], alone[1, 3], atol=1e-7)
    diluted, _ = _sparse_case(pkd_scores, unpainted="prior", background=0.5, background_apart=False)
    assert (diluted[1, 3].abs() < grad[1, 3].abs()).all()


@pytest.mark.parametrize("pkd_scores", ["softmax", "sigmoid"])
def test_painted_pixels_teach_the_new_class_and_real_background(pkd_scores):
    grad, labels = _sparse_case(pkd_scores)
    assert (grad[3, 0] < 0).all()  # painted new: the new score is pushed up
    assert (grad[1:3, 0] > 0).all()  # and the old ones down, where the user says it is new
    assert grad[3, 1, 0] > 0 and grad[1, 1, 0] > 0 and grad[2, 1, 0] > 0  # painted background


def test_simulated_clicks_take_the_model_s_object_or_paint_by_hand(consep, shared_data):
    """A click at a nucleus's deepest pixel takes the object a model found there; where the model
    found none the nucleus is painted by hand (its true pixels)."""
    data = consep.subset(["train_2"])
    inst_dir = shared_data / "consep" / "train" / "instances"

    def objects(item):  # a model that finds only the left half of the image, each nucleus grown
        from skimage.segmentation import expand_labels

        from napari_cinuseg.benchmark.painting import nucleus_instances

        found = expand_labels(nucleus_instances(item, inst_dir), 2)
        found[:, found.shape[1] // 2 :] = 0
        return found

    p = simulate_painting(data, "Other", 12, images=3, seed=1, instances_dir=inst_dir, objects=objects, margin=None)
    assert p.clicked + p.by_hand == p.nuclei == 12 and p.clicked > 0 and p.by_hand > 0
    for pair in p.pairs:
        item = next(it for it in data.items if it.name == pair.name)
        assert pair.target.shape == item.labels.shape  # the whole image is the context
        left = pair.target[:, : pair.target.shape[1] // 2] == 1
        # clicked nuclei come with the model's grown outline: some painted pixels are background
        if left.any():
            assert (item.labels[:, : item.labels.shape[1] // 2][left] == 0).any()


def test_simulated_painting_says_how_much_of_each_class_the_context_holds(consep, shared_data):
    """The whole image holds every class's pixels; the painted box alone holds all of the painted
    class's painted nuclei but, by a margin, less of the others."""
    data = consep.subset(["train_2", "train_3"])
    shares = {
        margin: simulate_painting(
            data,
            "Other",
            5,
            images=2,
            seed=1,
            instances_dir=shared_data / "consep" / "train" / "instances",
            margin=margin,
        ).context_share
        for margin in (None, 0, 64)
    }
    assert set(shares[None].values()) == {1.0}
    assert set(shares[0]) == set(shares[None]) and "Other" in shares[0]
    for name, share in shares[0].items():
        assert 0.0 <= share <= shares[64][name] <= 1.0
    assert min(shares[0].values()) < 1.0  # the painted box alone leaves some of the images out


def test_simulated_painting_paints_old_class_corrections_on_the_same_images(consep, shared_data):
    """Nuclei of an old class painted as corrections: the panel's label after background, target
    n_new + 1 in the pairs, on the true pixels of that class; nothing else of the painting moves."""
    data = consep.subset(["train_2", "train_3"])
    inst = shared_data / "consep" / "train" / "instances"
    kw = dict(images=3, seed=0, instances_dir=inst, margin=None)  # whole images: a pair is its image
    plain = simulate_painting(data, "Other", 10, **kw)
    fixed = simulate_painting(data, "Other", 10, **kw, corrections={"Spindle-shaped": 6})
    assert fixed.corrected == {"Spindle-shaped": 6} and not plain.corrected
    spindle = consep.class_id("Spindle-shaped")
    for a, b in zip(plain.pairs, fixed.pairs):
        assert np.array_equal(a.target == 1, b.target == 1)  # the new class's paint is the same
        item = next(it for it in consep.items if it.name == b.name)
        if (b.target == 2).any():
            assert (item.labels[b.target == 2] == spindle).mean() > 0.9
    assert sum(int((p.target == 2).any()) for p in fixed.pairs) >= 1
