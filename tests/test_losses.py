"""Each CiNuSeg loss against values worked out by hand on tiny tensors."""

import math

import pytest
import torch

from napari_cinuseg.losses import (
    adaptive_temperatures,
    background_suppression,
    base_bce,
    cinuseg_loss,
    class_anchor_consolidation,
    class_anchors,
    foreground_guidance,
    negative_sample_bce,
    negative_sample_mask,
    prediction_distillation,
    pseudo_labels,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def pixels(*columns):
    """(1, K, 1, W) from per-pixel channel lists."""
    return torch.tensor(columns, dtype=torch.float32).T[None, :, None, :]


# Old model: K_old = 3 (background, old class 1, old class 2); new class = channel 3.
NEW = [3]
# per pixel: sigmoid scores (bg, c1, c2) of the old model
OLD = pixels(
    [logit(0.1), logit(0.9), logit(0.2)],  # new-class pixel the old model calls class 1
    [logit(0.1), logit(0.3), logit(0.8)],  # labelled background, old class 2 claims it
    [logit(0.1), logit(0.6), logit(0.5)],  # unlabelled, nobody above tau
    [logit(0.1), logit(0.95), logit(0.2)],  # unlabelled, class 1 claims it
    [logit(0.9), logit(0.1), logit(0.1)],  # labelled background, nobody claims it
    [logit(0.1), logit(0.5), logit(0.2)],  # new-class pixel, old model unsure
)
LABELS = torch.tensor([[[3, 0, 255, 255, 0, 3]]])


def test_pseudo_labels_eq1():
    out = pseudo_labels(LABELS, OLD, NEW, tau=0.7)
    assert out.tolist() == [[[3, 2, 255, 1, 0, 3]]]
    assert out.dtype == torch.long


def test_pseudo_labels_respects_tau():
    # with tau = 0.85 class 2's 0.8 no longer claims pixel 1
    assert pseudo_labels(LABELS, OLD, NEW, tau=0.85).tolist() == [[[3, 0, 255, 1, 0, 3]]]


def test_uncertain_old_pixels_background_unlabelled_or_the_prior_class():
    old = pixels(
        [logit(0.3), logit(0.6), logit(0.2)],  # labelled background, the prior's argmax class 1 at 0.6 ≤ τ
        [logit(0.1), logit(0.3), logit(0.8)],  # labelled background, class 2 above τ
        [logit(0.7), logit(0.6), logit(0.2)],  # labelled background, the prior's argmax is background
        [logit(0.1), logit(0.6), logit(0.2)],  # a new-class pixel: stays new
        [logit(0.1), logit(0.6), logit(0.2)],  # unlabelled, nobody above τ: stays unlabelled
    )
    labels = torch.tensor([[[0, 0, 0, 3, 255]]])
    assert pseudo_labels(labels, old, NEW, tau=0.7).tolist() == [[[0, 2, 0, 3, 255]]]  # eq. 1 as written
    assert pseudo_labels(labels, old, NEW, tau=0.7, uncertain_old="ignore").tolist() == [[[255, 2, 0, 3, 255]]]
    assert pseudo_labels(labels, old, NEW, tau=0.7, uncertain_old="prior").tolist() == [[[1, 2, 0, 3, 255]]]
    with pytest.raises(ValueError, match="uncertain_old"):
        pseudo_labels(labels, old, NEW, uncertain_old="unsure")
    # an ignored pixel is no negative in NS: the loss differs from eq. 1's where pixel 0 is background
    feats = [torch.zeros(1, 2, 1, 5)]
    logits = torch.cat([old, torch.zeros(1, 1, 1, 5)], 1)
    as_written = cinuseg_loss(logits, old, feats, feats, labels, NEW, att=False)
    ignored = cinuseg_loss(logits, old, feats, feats, labels, NEW, att=False, uncertain_old="ignore")
    assert ignored.terms["ns"] != pytest.approx(as_written.terms["ns"])


def test_negative_sample_mask_eq11():
    assert negative_sample_mask(LABELS, OLD, NEW, tau=0.7).tolist() == [[[True, False, False, False, False, False]]]


def test_class_anchors_eq2_nearest_resize_and_absent_class():
    # labels 4x4 → features 2x2: nearest neighbour keeps pixels (0,0), (0,2), (2,0), (2,2)
    labels = torch.tensor([[[1, 9, 2, 9], [9, 9, 9, 9], [1, 9, 0, 9], [9, 9, 9, 9]]])
    feats = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])  # (1, D=2, 2, 2)
    anchors, present = class_anchors(feats, labels, [1, 2, 5])
    assert present.tolist() == [[True, True, False]]
    torch.testing.assert_close(anchors[0, 0], torch.tensor([2.0, 20.0]))  # mean of (1,10) and (3,30)
    torch.testing.assert_close(anchors[0, 1], torch.tensor([2.0, 20.0]))  # pixel (0,1) of the map
    torch.testing.assert_close(anchors[0, 2], torch.tensor([0.0, 0.0]))


def test_class_anchor_consolidation_eq3():
    pseudo = torch.tensor([[[1, 1], [2, 0]]])
    # layer A: class 1 anchor (1,0) vs old (0,1): 1 - cos = 1; class 2 (1,1) vs (2,2): 0
    new_a = torch.tensor([[[[1.0, 1.0], [1.0, 5.0]], [[0.0, 0.0], [1.0, 5.0]]]])
    old_a = torch.tensor([[[[0.0, 0.0], [2.0, 7.0]], [[1.0, 1.0], [2.0, 7.0]]]])
    # layer B: identical → 0
    new_b = torch.randn(1, 3, 2, 2)
    loss = class_anchor_consolidation([new_a, new_b], [old_a, new_b.clone()], pseudo, [1, 2])
    torch.testing.assert_close(loss, torch.tensor([0.5]))  # (1 + 0) summed over classes, mean of 2 layers


def test_class_anchor_consolidation_skips_absent_classes():
    pseudo = torch.zeros(1, 2, 2, dtype=torch.long)  # no old class anywhere
    f = torch.randn(1, 3, 2, 2)
    assert class_anchor_consolidation([f], [torch.randn(1, 3, 2, 2)], pseudo, [1, 2]).item() == 0.0


def test_prediction_distillation_eqs4_5():
    # K = 3 (bg, old 1, new 2), K_old = 2; all logits 0 → p = 1/3 each, p̂ = (2/3, 1/3), q = (1/2, 1/2)
    logits = torch.zeros(1, 3, 1, 2)
    old = torch.zeros(1, 2, 1, 2)
    expected = -(0.5 * math.log(2 / 3) + 0.5 * math.log(1 / 3))
    torch.testing.assert_close(prediction_distillation(logits, old, [2]), torch.tensor([expected]))


def test_prediction_distillation_on_sigmoid_scores():
    # S = sigmoid: logits (bg 0, old 1 log 3, new 2 -log 3) → S = (1/2, 3/4, 1/4);
    # merged background p̂_0 = 1 − (1 − 1/2)(1 − 1/4) = 5/8, p̂_1 = 3/4; the prior's q = (1/2, 3/4).
    # Binary distillation per channel: −[q log p̂ + (1 − q) log(1 − p̂)].
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)]).view(1, 3, 1, 1)
    old = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    expected = -(0.5 * math.log(5 / 8) + 0.5 * math.log(3 / 8)) - (0.75 * math.log(3 / 4) + 0.25 * math.log(1 / 4))
    torch.testing.assert_close(prediction_distillation(logits, old, [2], scores="sigmoid"), torch.tensor([expected]))
    with pytest.raises(ValueError, match="softmax"):
        prediction_distillation(logits, old, [2], scores="argmax")


def test_sigmoid_distillation_holds_the_prior_s_scores_where_they_are():
    # Where the new model already scores each old class as the prior does, the binary
    # distillation has no gradient: it neither raises nor lowers an old score (−Σ q log p̂ alone
    # would keep pushing every old score up, towards 1, on every pixel).
    old = torch.tensor([-1.0, 0.5, -2.0]).view(1, 3, 1, 1)
    logits = torch.cat([old, torch.full((1, 1, 1, 1), -30.0)], dim=1).requires_grad_(True)
    prediction_distillation(logits, old, [3], scores="sigmoid").sum().backward()
    assert logits.grad[0, :3].abs().max() < 1e-5
    # and an old score above the prior's is pulled down, one below it pushed up
    up = (old + torch.tensor([0.0, 2.0, -2.0]).view(1, 3, 1, 1)).clone()
    logits = torch.cat([up, torch.full((1, 1, 1, 1), -30.0)], dim=1).requires_grad_(True)
    prediction_distillation(logits, old, [3], scores="sigmoid").sum().backward()
    assert logits.grad[0, 1] > 0 and logits.grad[0, 2] < 0


def test_distillation_leaves_out_the_masked_pixels():
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    old = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    for scores in ("softmax", "sigmoid"):
        top = prediction_distillation(logits[..., :2, :], old[..., :2, :], [2], scores)
        torch.testing.assert_close(prediction_distillation(logits, old, [2], scores, mask=mask), top)


def test_prediction_distillation_averages_pixels():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 1, 0, 1] = math.log(4.0)  # pixel 2: p = (1/6, 4/6, 1/6) → p̂ = (1/3, 2/3)
    old = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # pixel 2: q = (1/4, 3/4)
    px1 = -(0.5 * math.log(2 / 3) + 0.5 * math.log(1 / 3))
    px2 = -(0.25 * math.log(1 / 3) + 0.75 * math.log(2 / 3))
    torch.testing.assert_close(prediction_distillation(logits, old, [2]), torch.tensor([(px1 + px2) / 2]))


def test_foreground_guidance_eqs7_8():
    logits = torch.zeros(2, 4, 1, 3)
    logits[0, 3, 0, 1] = math.log(3.0)  # S = 0.75
    labels = torch.tensor([[[3, 3, 0]], [[0, 255, 0]]])
    out = foreground_guidance(logits, labels, NEW)
    expected = (math.log(2.0) - math.log(0.75)) / 2
    torch.testing.assert_close(out, torch.tensor([expected, 0.0]))


def test_background_suppression_eq10():
    logits = torch.zeros(2, 4, 1, 2)
    logits[0, 1, 0, 0] = math.log(3.0)  # old class score 0.75 at the new pixel
    logits[0, 3, 0, 0] = 5.0  # the new channel itself does not count
    labels = torch.tensor([[[3, 0]], [[0, 0]]])
    out = background_suppression(logits, labels, NEW)
    expected = 0.25 + 0.75**2 + 0.25  # S_bg² + S_1² + S_2²
    torch.testing.assert_close(out, torch.tensor([expected, 0.0]))


def test_negative_sample_bce_eq12():
    logits = torch.zeros(1, 2, 1, 3)
    pseudo = torch.tensor([[[1, 0, 255]]])
    neg = torch.tensor([[[True, False, False]]])
    two_log2 = 2 * math.log(2.0)  # Σ_c BCE at S = 0.5, whatever the target
    out = negative_sample_bce(logits, pseudo, neg, omega=0.1)
    torch.testing.assert_close(out, torch.tensor([(1.1 * two_log2 + two_log2) / 2]))  # 255 left out
    torch.testing.assert_close(base_bce(logits, pseudo), torch.tensor([two_log2]))


def test_negative_sample_bce_target_matters():
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # S = (0.5, 0.75)
    out = negative_sample_bce(logits, torch.tensor([[[1]]]), torch.zeros(1, 1, 1, dtype=torch.bool))
    torch.testing.assert_close(out, torch.tensor([-math.log(0.5) - math.log(0.75)]))


def test_adaptive_temperatures_eqs14_16_are_a_step_function():
    pseudo = torch.tensor(
        [
            [[1, 3, 3, 3, 3, 3, 3, 3, 3, 3]],  # 1 old, 9 new → r = 0.9 > σ: ATT fires
            [[1, 1, 1, 1, 3, 0, 0, 0, 0, 0]],  # 4 old, 1 new → r = 0.2 ≤ σ
            [[0, 0, 0, 0, 0, 0, 0, 0, 255, 255]],  # neither: r = 0
            [[1, 1, 1, 3, 3, 3, 3, 3, 3, 3]],  # r = 0.7 = σ: not above, no change
            [[1, 1, 3, 3, 3, 3, 3, 3, 3, 3]],  # r = 0.8 (just above σ): the full α, not a ramp
        ]
    )
    r, t_o, t_n = adaptive_temperatures(pseudo, [1, 2], [3], sigma=0.7, alpha_o=10.0, alpha_n=0.5)
    torch.testing.assert_close(r, torch.tensor([0.9, 0.2, 0.0, 0.7, 0.8]))
    torch.testing.assert_close(t_o, torch.tensor([10.0, 1.0, 1.0, 1.0, 10.0]))  # eq. 16
    torch.testing.assert_close(t_n, torch.tensor([0.5, 1.0, 1.0, 1.0, 0.5]))  # eq. 15
    # other α and σ are taken as given
    _, t_o, t_n = adaptive_temperatures(pseudo, [1, 2], [3], sigma=0.1, alpha_o=3.0, alpha_n=0.25)
    torch.testing.assert_close(t_o, torch.tensor([3.0, 3.0, 1.0, 3.0, 3.0]))
    torch.testing.assert_close(t_n, torch.tensor([0.25, 0.25, 1.0, 0.25, 0.25]))


def _random_case(seed=0, b=3, k_old=3, k=4, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g)
    old = torch.randn(b, k_old, h, w, generator=g) * 3
    labels = torch.randint(0, 2, (b, h, w), generator=g) * 3
    labels[:, :2] = 255
    labels[0] = 3  # an image that is all new class: ATT is active there
    feats = [torch.randn(b, 4, h // s, w // s, generator=g) for s in (1, 2, 4, 8)]
    old_feats = [torch.randn(b, 4, h // s, w // s, generator=g) for s in (1, 2, 4, 8)]
    return logits, old, feats, old_feats, labels


def test_cinuseg_loss_eq17_is_the_weighted_sum_of_its_terms():
    """Eq. 17 with hyper-parameters that are not the paper's, each passed through to its term."""
    logits, old, feats, old_feats, labels = _random_case()
    hp = dict(tau=0.5, omega=0.3, sigma=0.4, alpha_o=4.0, alpha_n=0.2)
    out = cinuseg_loss(logits, old, feats, old_feats, labels, NEW, **hp)
    pseudo = pseudo_labels(labels, old, NEW, tau=0.5)
    neg = negative_sample_mask(labels, old, NEW, tau=0.5)
    r, t_o, t_n = adaptive_temperatures(pseudo, [1, 2], NEW, sigma=0.4, alpha_o=4.0, alpha_n=0.2)
    # image 0 is all new class (r = 1 > σ): ×α_o on the old group, ×α_n on the new one (eqs. 15-16)
    assert r[0] == 1 and t_o[0] == 4.0 and t_n[0] == pytest.approx(0.2)
    torch.testing.assert_close(t_o, torch.where(r > 0.4, 4.0, 1.0))
    cac = class_anchor_consolidation(feats, old_feats, pseudo, [1, 2])
    old_group = cac + prediction_distillation(logits, old, NEW)  # eq. 5 over every pixel
    new_group = (
        foreground_guidance(logits, labels, NEW)
        + background_suppression(logits, labels, NEW)
        + negative_sample_bce(logits, pseudo, neg, 0.3)
    )
    torch.testing.assert_close(out.loss, (t_o * old_group + t_n * new_group).mean())
    # a painted step's reading: distillation leaves out the pixels labelled new
    not_new = ~torch.isin(labels, torch.tensor(NEW))
    painted = cinuseg_loss(logits, old, feats, old_feats, labels, NEW, pkd_on_new=False, **hp)
    old_group = cac + prediction_distillation(logits, old, NEW, mask=not_new)
    torch.testing.assert_close(painted.loss, (t_o * old_group + t_n * new_group).mean())
    # and not the paper's values: the defaults give another loss on the same batch
    assert not torch.isclose(cinuseg_loss(logits, old, feats, old_feats, labels, NEW).loss, out.loss)
    assert set(out.terms) == {"cac", "pkd", "fgl", "bgl", "ns"}
    assert out.r.shape == (3,)


def test_cinuseg_ablation_switches():
    logits, old, feats, old_feats, labels = _random_case(1)
    pseudo = pseudo_labels(labels, old, NEW)
    none = torch.zeros_like(labels, dtype=torch.bool)
    baseline = cinuseg_loss(logits, old, feats, old_feats, labels, NEW, acl=False, drr=False, att=False)
    torch.testing.assert_close(baseline.loss, negative_sample_bce(logits, pseudo, none, 0.0).mean())
    assert set(baseline.terms) == {"bce"}
    no_att = cinuseg_loss(logits, old, feats, old_feats, labels, NEW, att=False)
    assert torch.all(no_att.t_o == 1) and torch.all(no_att.t_n == 1)
    acl_only = cinuseg_loss(logits, old, feats, old_feats, labels, NEW, drr=False, att=False)
    expected = (
        class_anchor_consolidation(feats, old_feats, pseudo, [1, 2])
        + prediction_distillation(logits, old, NEW)
        + negative_sample_bce(logits, pseudo, none, 0.0)
    ).mean()
    torch.testing.assert_close(acl_only.loss, expected)


def test_gradients_reach_the_new_model_only():
    logits, old, feats, old_feats, labels = _random_case(2)
    logits.requires_grad_(True)
    feats = [f.requires_grad_(True) for f in feats]
    old.requires_grad_(True)
    old_feats = [f.requires_grad_(True) for f in old_feats]
    cinuseg_loss(logits, old, feats, old_feats, labels, NEW).loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(f.grad is not None for f in feats)
    assert old.grad is None
    assert all(f.grad is None for f in old_feats)


@pytest.mark.parametrize("fn", [foreground_guidance, background_suppression])
def test_per_image_shape(fn):
    logits, _, _, _, labels = _random_case(3)
    assert fn(logits, labels, NEW).shape == (3,)


def test_class_thresholds_lower_tau_for_an_under_confident_prior():
    from napari_cinuseg.losses import class_thresholds

    # prior with K_old = 3: class 1 predicted with score sigmoid(0.4) ≈ 0.60, class 2 with ≈ 0.95
    old = torch.zeros(1, 3, 2, 2)
    old[0, 1, 0] = 0.4  # row 0: class 1 wins (bg logit 0)
    old[0, 2, 1] = 3.0  # row 1: class 2 wins
    tau = class_thresholds([old], tau=0.7)
    assert tau.shape == (2,)
    assert abs(float(tau[0]) - torch.sigmoid(torch.tensor(0.4)).item()) < 0.01  # lowered to its median
    assert float(tau[1]) == pytest.approx(0.7)  # a confident class keeps τ
    # eq. 1 with per-class τ: the under-confident class's own pixels are claimed now
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    with_tau = pseudo_labels(labels, old, [3], tau=0.7)
    per_class = pseudo_labels(labels, old, [3], tau=tau)
    assert (with_tau[0, 0] == 0).all() and (per_class[0, 0] == 1).all() and (per_class[0, 1] == 2).all()


def test_unpainted_pixels_keep_the_prior_s_prediction_at_any_score():
    """Sparse annotations: an unlabelled pixel the prior predicts as an old class keeps that class
    under ``unpainted="prior"``, however low the score; eq. 1 as written needs it above τ."""
    # four unlabelled pixels and one painted background pixel; the prior's logits (bg, A, B)
    old = torch.tensor([[[-3.0, 0.0, 0.0, 0.0, 0.0], [-1.0, 2.0, -2.0, -1.0, -1.0], [-2.0, -2.0, -3.0, 0.5, -2.0]]])[
        ..., None
    ]
    labels = torch.tensor([[255, 255, 255, 255, 0]])[..., None]
    # scores: A 0.27, 0.88, 0.12, 0.27, 0.27; B 0.12, 0.12, 0.05, 0.62, 0.12; argmax of bg, A, B: A, A, bg, B, bg
    as_written = pseudo_labels(labels, old, [3], tau=0.7)
    assert as_written[0, :, 0].tolist() == [255, 1, 255, 255, 0]
    prior = pseudo_labels(labels, old, [3], tau=0.7, unpainted="prior")
    assert prior[0, :, 0].tolist() == [1, 1, 255, 2, 0]  # the painted background stays eq. 1's
    with pytest.raises(ValueError, match="unpainted"):
        pseudo_labels(labels, old, [3], unpainted="argmax")


def test_unpainted_background_the_prior_is_sure_of_is_background():
    """Sparse annotations: with ``background`` an unlabelled pixel no old class claims becomes
    background where the prior's background score exceeds it, and stays unlabelled elsewhere;
    old-class claims and the user's paint come first."""
    # the prior's logits (bg, A, B) on five pixels: sure background, unsure background, A, B, painted new
    old = torch.tensor([[[3.0, -0.5, -2.0, -2.0, 3.0], [-3.0, -1.0, 2.0, -2.0, -3.0], [-3.0, -1.5, -2.0, 0.5, -3.0]]])[
        ..., None
    ]
    labels = torch.tensor([[255, 255, 255, 255, 3]])[..., None]
    # background scores 0.95, 0.38; A 0.05, 0.27, 0.88; B ... 0.62
    without = pseudo_labels(labels, old, [3], tau=0.7, unpainted="prior")
    assert without[0, :, 0].tolist() == [255, 255, 1, 2, 3]
    sure = pseudo_labels(labels, old, [3], tau=0.7, unpainted="prior", background=0.5)
    assert sure[0, :, 0].tolist() == [0, 255, 1, 2, 3]
    every = pseudo_labels(labels, old, [3], tau=0.7, unpainted="prior", background=0.2)
    assert every[0, :, 0].tolist() == [0, 0, 1, 2, 3]


def test_unpainted_background_stays_a_negative_of_the_new_class_without_uncertain_negatives():
    """``uncertain_negatives=False`` frees the new channel only where the prior's argmax gives an
    unpainted pixel an old class below τ; an unpainted pixel made background by ``background``
    still teaches the new channel 0 (its gradient there is not zero)."""
    # the prior's logits (bg, A, B): sure background, A below τ (argmax A), painted new
    old = torch.tensor([[[3.0, -1.0, -3.0], [-3.0, 0.5, -3.0], [-3.0, -2.0, -3.0]]])[..., None]
    labels = torch.tensor([[255, 255, 3]])[..., None]
    logits = torch.zeros(1, 4, 3, 1, requires_grad=True)
    out = cinuseg_loss(
        logits,
        old,
        [torch.zeros(1, 2, 3, 1)],
        [torch.zeros(1, 2, 3, 1)],
        labels,
        [3],
        acl=False,
        att=False,
        unpainted="prior",
        background=0.5,
        uncertain_negatives=False,
    )
    out.loss.backward()
    new_grad = logits.grad[0, 3, :, 0]
    assert new_grad[0] > 0  # the prior's sure background: a negative of the new class
    assert new_grad[1] == 0  # an uncertain old nucleus: no word on the new class
    assert new_grad[2] < 0  # the painted new pixel


def test_old_class_paint_is_kept_in_eq1_and_left_out_of_distillation():
    """A pixel painted with an old class (a correction of the prior) keeps that label in eq. 1,
    even where the prior is sure of another class; PKD leaves it out, so its gradient there comes
    from NS alone, toward the painted class."""
    # the prior (bg, A, B) is sure of A on both pixels; the user paints the first one B
    old = torch.tensor([[[-3.0, -3.0], [3.0, 3.0], [-3.0, -3.0]]])[..., None]
    labels = torch.tensor([[2, 255]])[..., None]
    assert pseudo_labels(labels, old, [])[0, :, 0].tolist() == [2, 1]
    logits = old.clone().requires_grad_(True)  # the new model starts as the prior, no new class
    feats = [torch.zeros(1, 2, 2, 1)]
    out = cinuseg_loss(logits, old, feats, feats, labels, [], drr=False, att=False)
    out.loss.backward()
    g = logits.grad[0, :, :, 0]
    assert g[2, 0] < 0 and g[1, 0] > 0  # the painted pixel: B up, A down
    pkd_only = cinuseg_loss(logits.detach(), old, feats, feats, labels, [], drr=False, att=False).terms["pkd"]
    plain = prediction_distillation(old, old, [], mask=torch.tensor([[False, True]])[..., None])
    assert pkd_only == pytest.approx(float(plain.mean()))  # distilled on the unpainted pixel only


def _unpainted_step(rule, **kw):
    """The new channel's and the old channels' gradients of a step on one row of pixels: a sure
    background far from the prior's nucleus, a pixel next to that nucleus the prior calls
    background, the nucleus the prior calls A (above τ), a painted new pixel."""
    # the prior's logits (bg, A) on 12 pixels: 0-5 sure background, 6-7 background beside the
    # nucleus, 8-10 the nucleus (A 0.95), 11 painted new
    bg = [4.0] * 8 + [-3.0] * 3 + [4.0]
    a = [-4.0] * 8 + [3.0] * 3 + [-4.0]
    old = torch.tensor([[bg, a]])[..., None]
    labels = torch.tensor([[255] * 11 + [2]])[..., None]
    logits = torch.zeros(1, 3, 12, 1, requires_grad=True)
    out = cinuseg_loss(
        logits,
        old,
        [torch.zeros(1, 2, 12, 1)],
        [torch.zeros(1, 2, 12, 1)],
        labels,
        [2],
        acl=False,
        att=False,
        unpainted="prior",
        background=0.5,
        unpainted_nuclei=rule,
        nucleus_margin=2,
        **kw,
    )
    out.loss.backward()
    return logits.grad[0, 2, :, 0], logits.grad[0, 1, :, 0]


def test_given_negatives_are_the_prior_s_sure_background_a_margin_from_its_nuclei():
    from napari_cinuseg.losses import given_negatives

    old = torch.tensor([[[4.0] * 8 + [-3.0] * 3 + [4.0], [-4.0] * 8 + [3.0] * 3 + [-4.0]]])[..., None]
    pseudo = torch.tensor([[0] * 8 + [1] * 3 + [255]])[..., None]
    assert given_negatives(pseudo, old, 2)[0, :, 0].tolist() == [True] * 6 + [False] * 6
    assert given_negatives(pseudo, old, 0)[0, :, 0].tolist() == [True] * 8 + [False] * 4


def test_an_unpainted_nucleus_is_unlabelled_for_the_new_class():
    """The positive-unlabelled rule: the new channel learns 0 only on what the user gave and on
    the prior's sure background a margin from its nuclei; unpainted nuclei and their edges teach
    it nothing. "unlabelled" keeps the prior's prediction for the old channels there,
    "distilled" leaves those pixels out of NS altogether; "negative" (as before) makes every
    pseudo-labelled pixel a negative of the new class."""
    new, old_a = _unpainted_step("unlabelled")
    assert (new[:6] > 0).all()  # sure background far from the nucleus: a negative
    assert (new[6:11] == 0).all()  # the nucleus's edge and the nucleus itself: unlabelled
    assert new[11] < 0  # the painted pixel
    assert (old_a[8:11] < 0).all()  # the old channel still learns the prior's A there
    new_d, old_d = _unpainted_step("distilled")
    assert (new_d[6:11] == 0).all() and (old_d[6:11] == 0).all() and (old_d[:6] > 0).all()
    new_n, _ = _unpainted_step("negative")
    assert (new_n[:11] > 0).all()
    with pytest.raises(ValueError, match="unpainted_nuclei must be one of"):
        _unpainted_step("ignore")


def test_unpainted_nuclei_may_be_weighed_negatives_of_the_new_class():
    none, _ = _unpainted_step("unlabelled")
    some, _ = _unpainted_step("unlabelled", unpainted_nucleus_weight=0.25)
    full, _ = _unpainted_step("negative")
    assert (none[6:11] == 0).all() and (some[6:11] > 0).all()
    assert torch.allclose(some[6:11], 0.25 * full[6:11] * some[0] / full[0])  # a quarter, as the rest is the same


def test_ns_can_leave_the_old_channels_alone_on_background():
    """With ``ns_old_on_background`` off, eq. 12 no longer pushes an old class's channel down where
    label and pseudo-label are both background (an old nucleus the prior scores under τ); the
    background and new channels keep eq. 12 there, and a pixel pseudo-labelled old is unchanged."""
    old_logits = torch.tensor([[[[2.0, 0.0, 0.0]], [[-2.0, 0.5, 3.0]]]])  # old class 1: under τ, then sure
    labels = torch.tensor([[[0, 0, 0]]])  # fully labelled step: old nuclei are background to it

    def grads(on: bool) -> torch.Tensor:
        logits = torch.cat([old_logits, torch.zeros(1, 1, 1, 3)], dim=1).requires_grad_(True)
        out = cinuseg_loss(logits, old_logits, [], [], labels, [2], acl=False, att=False, ns_old_on_background=on)
        out.loss.backward()
        return logits.grad[0, :, 0]

    paper, free = grads(True), grads(False)
    assert paper[1, 1] > 0 and free[1, 1] == 0  # the uncertain old nucleus: pushed down, or left alone
    assert free[2, 1] > 0 and free[0, 1] != 0  # the new and background channels still learn there
    torch.testing.assert_close(paper[:, 2], free[:, 2])  # pseudo-labelled old: the same either way
