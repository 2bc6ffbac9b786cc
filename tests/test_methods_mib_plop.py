"""The MiB and PLOP baselines: hand-worked loss values on tiny tensors, and one short step each."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_cinuseg import drain, load_model, train_step
from napari_cinuseg.losses import IGNORE
from napari_cinuseg.methods import StepBatch, available, get_method
from napari_cinuseg.methods._shared import histogram_medians
from napari_cinuseg.methods.mib import unbiased_cross_entropy, unbiased_distillation
from napari_cinuseg.methods.plop import (
    PLOP,
    class_entropy_thresholds,
    classif_adaptive_factor,
    entropy_histogram,
    entropy_pseudo_labels,
    local_pod,
    local_pod_embedding,
    normalized_entropy,
)
from napari_cinuseg.runtime.events import Progress


def _pixels(values):
    """(N, K) per-pixel values → (1, K, 1, N) logits."""
    t = torch.tensor(values, dtype=torch.float32)
    return t.T[None, :, None, :]


# --- MiB -----------------------------------------------------------------------------------------


def test_both_methods_are_registered():
    assert {"mib", "plop"} <= set(available())
    assert get_method("mib").uses_prior and get_method("plop").uses_prior


def test_uce_zero_logits_by_hand():
    # K = 3: background, one old class, one new class; old_classes = 2 (bg + the old class).
    logits = torch.zeros(1, 3, 1, 3)
    labels = torch.tensor([[[0, 1, 2]]])
    per_pixel = unbiased_cross_entropy(logits, labels, old_classes=2, reduction="none")
    # bg (and the old label, mapped to bg): −log(2/3); new: −log(1/3)
    torch.testing.assert_close(per_pixel[0, 0], torch.tensor([math.log(1.5), math.log(1.5), math.log(3)]))
    mean = unbiased_cross_entropy(logits, labels, old_classes=2)
    assert mean.item() == pytest.approx((2 * math.log(1.5) + math.log(3)) / 3)


def test_uce_ignores_255_and_averages_over_labelled_pixels():
    logits = torch.zeros(1, 3, 1, 2)
    labels = torch.tensor([[[2, IGNORE]]])
    per_pixel = unbiased_cross_entropy(logits, labels, 2, reduction="none")
    assert per_pixel[0, 0, 1].item() == 0
    assert unbiased_cross_entropy(logits, labels, 2).item() == pytest.approx(math.log(3))
    all_ignored = torch.full((1, 1, 2), IGNORE)
    assert unbiased_cross_entropy(logits, all_ignored, 2).item() == 0


def test_uce_is_plain_cross_entropy_without_old_classes_and_merges_them_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    labels[0, 0, 0] = IGNORE
    ref = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    torch.testing.assert_close(unbiased_cross_entropy(logits, labels, 1), ref)
    # old_classes = 3: p̃_bg = p_0 + p_1 + p_2, label 1 and 2 count as bg
    p = torch.softmax(logits, 1)
    merged = torch.log(torch.stack([p[:, :3].sum(1), p[:, 3]], 1))
    target = torch.where(labels == IGNORE, labels, (labels == 3).long())
    ref = F.nll_loss(merged, target, ignore_index=IGNORE)
    torch.testing.assert_close(unbiased_cross_entropy(logits, labels, 3), ref)


def test_ukd_zero_logits_by_hand():
    # K = 3, K_old = 2: q = (1/2, 1/2); q̂_bg = p_0 + p_2 = 2/3, q̂_1 = 1/3; divided by K_old = 2
    loss = unbiased_distillation(torch.zeros(1, 3, 1, 1), torch.zeros(1, 2, 1, 1))
    assert loss.item() == pytest.approx((0.5 * math.log(1.5) + 0.5 * math.log(3)) / 2)


def test_ukd_matches_its_definition_and_alpha_sharpens_the_old_probabilities():
    torch.manual_seed(1)
    logits, old = torch.randn(2, 5, 2, 3), torch.randn(2, 3, 2, 3)
    for alpha in (1.0, 2.0):
        p = torch.softmax(logits, 1)
        p_hat = torch.cat([p[:, :1] + p[:, 3:].sum(1, keepdim=True), p[:, 1:3]], 1)
        q = torch.softmax(alpha * old, 1)
        ref = -(q * torch.log(p_hat)).sum(1).div(3).mean()
        torch.testing.assert_close(unbiased_distillation(logits, old, alpha), ref)


def test_no_gradient_into_the_old_logits():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    old = torch.randn(1, 2, 2, 2, requires_grad=True)
    unbiased_distillation(logits, old).backward()
    assert old.grad is None and logits.grad is not None and torch.isfinite(logits.grad).all()


def test_mib_method_loss_is_uce_plus_ten_ukd():
    logits = torch.zeros(1, 3, 1, 2, requires_grad=True)
    labels = torch.tensor([[[2, IGNORE]]])
    batch = StepBatch(logits, [], labels, [2], torch.zeros(1, 2, 1, 2), [])
    out = get_method("mib").loss(batch)
    uce = math.log(3) / 2  # MiB's Trainer: mean over all pixels, the ignored one counting 0
    ukd = (0.5 * math.log(1.5) + 0.5 * math.log(3)) / 2
    assert out.loss.dim() == 0 and out.loss.item() == pytest.approx(uce + 10 * ukd)
    assert out.terms == pytest.approx({"uce": uce, "ukd": ukd})
    assert out.r is None and out.t_o is None and out.t_n is None
    out.loss.backward()


# --- PLOP: Local POD -----------------------------------------------------------------------------


def test_local_pod_embedding_on_a_2x2_map():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    # scale 1: row means (pooled over the width), then column means (pooled over the height)
    torch.testing.assert_close(local_pod_embedding(x, (1,)), torch.tensor([[1.5, 3.5, 2.0, 3.0]]))
    # scale 2: four 1×1 regions, each giving its value twice
    torch.testing.assert_close(local_pod_embedding(x, (2,)), torch.tensor([[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]]))
    # scale 4 is larger than the map: skipped
    assert local_pod_embedding(x, (1, 4)).shape == (1, 4)


def test_local_pod_by_hand_at_scale_1():
    new = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    old = torch.zeros_like(new)
    # squares [[1, 4], [9, 16]]: row means 2.5, 12.5; column means 5, 10
    expected = math.sqrt(2.5**2 + 12.5**2 + 5**2 + 10**2)
    assert local_pod([new], [old], scales=(1,), normalize=False).item() == pytest.approx(expected)
    assert local_pod([-new], [old], scales=(1,), normalize=False).item() == pytest.approx(expected)  # squared first
    # normalised (PLOP's default for feature maps): the embedding (2.5, 12.5, 5, 10) / its norm, old = 0
    assert local_pod([new], [old], scales=(1,)).item() == pytest.approx(1.0)
    halfway = torch.tensor([[2.0, 2.0], [2.0, 2.0]])[None, None]  # embedding (4, 4, 4, 4) → (.5, .5, .5, .5)
    unit = torch.tensor([2.5, 12.5, 5.0, 10.0]) / expected
    assert local_pod([new], [halfway], scales=(1,)).item() == pytest.approx(float(torch.linalg.vector_norm(unit - 0.5)))
    # two maps: factors weight them, and the sum is divided by the number of maps
    two = local_pod([new, new], [old, new], scales=(1,), factors=(0.5, 3.0), normalize=False)
    assert two.item() == pytest.approx(0.5 * expected / 2)


def test_local_pod_is_zero_for_identical_features_with_a_finite_gradient():
    torch.manual_seed(2)
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 2, 2)]
    new = [f.clone().requires_grad_(True) for f in feats]
    loss = local_pod(new, feats)
    assert loss.item() == 0
    loss.backward()
    assert all(torch.isfinite(f.grad).all() and (f.grad == 0).all() for f in new)


def test_local_pod_is_positive_for_different_features_and_spares_the_old_ones():
    torch.manual_seed(3)
    new = [torch.randn(2, 4, 8, 8, requires_grad=True)]
    old = [torch.randn(2, 4, 8, 8, requires_grad=True)]
    loss = local_pod(new, old)
    assert loss.item() > 0
    loss.backward()
    assert old[0].grad is None and new[0].grad.abs().sum() > 0
    assert local_pod(new, old, reduction="none").shape == (2,)


def test_local_pod_sums_the_new_logits_into_background():
    old = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None].repeat(1, 2, 1, 1)
    new = torch.cat([old[:, :1] - 1.0, old[:, 1:], torch.ones(1, 1, 2, 2)], dim=1)  # bg + new = old bg
    assert local_pod([new], [old]).item() == pytest.approx(0.0, abs=1e-6)


# --- PLOP: entropy pseudo-labels -----------------------------------------------------------------


def test_normalized_entropy_is_plops():
    # uniform over C_old = 2, K = 3: −mean_c p log p / log 2 = 1/2, then / log 3
    ent = normalized_entropy(torch.zeros(1, 2, 1, 1), num_classes=3)
    assert ent.item() == pytest.approx(0.5 / math.log(3), rel=1e-5)
    assert normalized_entropy(torch.tensor([0.0, 30.0])[None, :, None, None]).item() == pytest.approx(0, abs=1e-6)


def test_pseudo_labels_follow_plop():
    # K_old = 2 (bg, old class 1), K = 3 (new class 2)
    old = _pixels([[0, 10], [0, 0], [0, 0], [0, 0], [10, 0]])
    labels = torch.tensor([[[0, 0, 2, IGNORE, 0]]])
    thresholds = torch.tensor([0.01, 0.01])
    pseudo = entropy_pseudo_labels(labels, old, thresholds, num_classes=3)
    # confident old class → 1; uncertain background → ignored; new class and 255 kept; confident bg → 0
    assert pseudo.tolist() == [[[1, IGNORE, 2, IGNORE, 0]]]
    # ν: two of the three background pixels were confident
    assert classif_adaptive_factor(labels, pseudo, 2).tolist() == pytest.approx([2 / 3])
    # an image without background pixels keeps its weight
    only_new = torch.tensor([[[2, 2]]])
    assert classif_adaptive_factor(only_new, only_new, 2).tolist() == [1.0]


def test_histogram_medians_by_hand():
    hist = torch.zeros(3, 100, dtype=torch.long)
    hist[0, :2] = torch.tensor([2, 2])  # N/2 = 2 reached at the end of bin 0
    hist[1, :2] = torch.tensor([1, 3])  # N/2 = 2 in bin 1, one of its three
    medians = histogram_medians(hist)  # row 2 empty
    torch.testing.assert_close(medians, torch.tensor([0.01, (1 + 1 / 3) / 100, 0.0]))


def test_class_thresholds_floor_and_histogram():
    # every background pixel: the old model is certain of class 0; class 1 never predicted
    old = _pixels([[30, 0]] * 4)
    labels = torch.tensor([[[0, 0, 0, 2]]])
    hist = entropy_histogram(labels, old, num_classes=3)
    assert hist.shape == (2, 100) and hist[0, 0] == 3 and hist.sum() == 3  # the new pixel is not counted
    thresholds = class_entropy_thresholds([(labels, old), (labels, old)], num_classes=3)
    torch.testing.assert_close(thresholds, torch.tensor([0.005, 0.001]))  # median of bin 0; the floor


def test_plop_loss_on_a_tiny_batch():
    torch.manual_seed(4)
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    old_logits = torch.randn(2, 3, 8, 8)
    logits = torch.cat([old_logits, torch.randn(2, 1, 8, 8)], 1).requires_grad_(True)
    new_feats = [f.clone().requires_grad_(True) for f in feats]
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :2] = 3
    labels[:, -1] = IGNORE
    method = PLOP(thresholds=torch.tensor([0.1, 0.1, 0.1]))
    out = method.loss(StepBatch(logits, new_feats, labels, [3], old_logits, feats))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.terms) == {"ce", "pod", "nu"} and all(isinstance(v, float) for v in out.terms.values())
    pseudo = entropy_pseudo_labels(labels, old_logits, method.thresholds, 4)
    nu = classif_adaptive_factor(labels, pseudo, 3)
    ce = (F.cross_entropy(logits, pseudo, ignore_index=IGNORE, reduction="none") * nu[:, None, None]).mean()
    pod = math.sqrt(4 / 1) * local_pod(
        [*new_feats, logits], [*feats, old_logits], factors=(0.01, 0.01, 0.0005), normalize=(True, True, False)
    )
    assert out.loss.item() == pytest.approx((ce + pod).item(), rel=1e-5)
    out.loss.backward()
    assert all(torch.isfinite(f.grad).all() for f in new_feats) and torch.isfinite(logits.grad).all()
    with pytest.raises(RuntimeError, match="prepare"):
        PLOP().loss(StepBatch(logits, new_feats, labels, [3], old_logits, feats))


# --- one short step each, on real patches ---------------------------------------------------------


@pytest.mark.parametrize("method, terms", [("mib", {"uce", "ukd"}), ("plop", {"ce", "pod", "nu"})])
def test_two_iterations_of_a_step(base_file, few_pairs, tiny, method, terms):
    events = []
    prior = load_model(base_file)
    model = drain(train_step(prior, few_pairs[1], ["Other"], tiny.replace(iterations=2), method=method), events.append)
    progress = [e for e in events if isinstance(e, Progress)]
    assert len(progress) == 2 and all(math.isfinite(e.loss) for e in progress)
    assert set(progress[-1].terms) == terms and progress[-1].crops == ()
    assert model.network.num_classes == 4 and [s.method for s in model.steps] == ["base", method]
