"""The CoNuSeg, INS and IDEC baselines: hand-worked loss values on tiny tensors, edge cases, and one
short real step each."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_cinuseg import drain, load_model, train_step
from napari_cinuseg.losses import IGNORE
from napari_cinuseg.methods import StepBatch, StepContext, available, get_method
from napari_cinuseg.methods.conuseg import (
    CoNuSeg,
    batch_prototypes,
    class_confidence_thresholds,
    confidence_histogram,
    old_pseudo_labels,
    prototype_contrastive,
    prototype_relation_distillation,
    pseudo_unbiased_cross_entropy,
    update_running_prototypes,
)
from napari_cinuseg.methods.idec import (
    IDEC,
    asymmetric_region_contrast,
    bce_with_ignore,
    channel_distillation,
    dense_distillation,
    region_embeddings,
    threshold_pseudo_labels,
)
from napari_cinuseg.methods.ins import (
    INS,
    compatibility_distillation,
    compatibility_targets,
    future_class_labels,
    unknown_head,
    update_centroids,
)
from napari_cinuseg.methods.mib import unbiased_cross_entropy
from napari_cinuseg.runtime.events import Progress
from napari_cinuseg.training.settings import TrainSettings

U = IGNORE


def _pixels(values):
    """(N, K) per-pixel values → (1, K, 1, N) maps."""
    return torch.tensor(values, dtype=torch.float32).T[None, :, None, :]


def _probs_logits(p_max, cls, k=3):
    """Logits of one pixel whose softmax gives p_max to ``cls`` and shares the rest evenly."""
    rest = (1 - p_max) / (k - 1)
    return [math.log(p_max) if c == cls else math.log(rest) for c in range(k)]


def _batch(logits, labels, new, old, feats=(), old_feats=(), emb=None, old_emb=None):
    return StepBatch(logits, list(feats), labels, new, old, list(old_feats), emb, old_emb)


def test_the_three_methods_are_registered():
    assert {"conuseg", "ins", "idec"} <= set(available())
    for name in ("conuseg", "ins", "idec"):
        m = get_method(name)
        assert m.name == name and m.uses_prior


# --- CoNuSeg: thresholds and PUCE --------------------------------------------------------------


def test_confidence_histogram_and_thresholds_by_hand():
    # K_old = 3; background pixels: class 0 with p = .81, .91; class 1 with p = .61 ×3; class 2 never
    old = _pixels(
        [_probs_logits(0.81, 0), _probs_logits(0.91, 0)] + [_probs_logits(0.61, 1)] * 3 + [_probs_logits(0.99, 2)]
    )
    labels = torch.tensor([[[0, 0, 0, 0, 0, 3]]])  # the last pixel is a new class: not counted
    hist = confidence_histogram(labels, old)
    assert hist.shape == (3, 20) and hist.sum() == 5
    assert hist[0, 16] == 1 and hist[0, 18] == 1 and hist[1, 12] == 3
    thresholds = class_confidence_thresholds([(labels, old)])
    # class 0: N/2 = 1 reached in bin 16 → (16 + 1/1)/20 = .85, capped at .75
    # class 1: N/2 = 1.5 in bin 12 (3 counts) → (12 + 1.5/3)/20 = .625; class 2: never → 0
    torch.testing.assert_close(thresholds, torch.tensor([0.75, 0.625, 0.0]))
    assert class_confidence_thresholds([(labels, old)], base_threshold=0.9)[0].item() == pytest.approx(0.85)


def test_puce_by_hand():
    # K = 3 (bg, old 1, new 2), K_old = 2; the new model's logits are 0: p = 1/3 everywhere
    old = _pixels([[0, 10], [0, 0.1], [10, 0], [0, 0], [0, 0]])
    labels = torch.tensor([[[0, 0, 0, 2, U]]])
    thresholds = torch.tensor([0.5, 0.6])
    per_pixel = pseudo_unbiased_cross_entropy(torch.zeros(1, 3, 1, 5), labels, old, thresholds, reduction="none")
    # confident old class 1 → CE on 1; unconfident (p = .525 < .6) → unbiased bg −log(2/3);
    # confident bg → CE on 0; new class → CE on 2; unlabelled → 0
    expected = [math.log(3), math.log(1.5), math.log(3), math.log(3), 0.0]
    torch.testing.assert_close(per_pixel[0, 0], torch.tensor(expected))
    mean = pseudo_unbiased_cross_entropy(torch.zeros(1, 3, 1, 5), labels, old, thresholds)
    assert mean.item() == pytest.approx(sum(expected) / 5)  # over all pixels, the ignored one counting 0
    # the top probability must *exceed* θ (the code's ``>``): p = .5 at θ = .5 is not confident
    tie = pseudo_unbiased_cross_entropy(
        torch.zeros(1, 3, 1, 1),
        torch.zeros(1, 1, 1, dtype=torch.long),
        torch.zeros(1, 2, 1, 1),
        torch.tensor([0.5, 0.5]),
        reduction="none",
    )
    assert tie.item() == pytest.approx(math.log(1.5))


def test_puce_matches_ce_and_unbiased_ce_on_random_values():
    torch.manual_seed(0)
    logits, old = torch.randn(2, 4, 3, 5), torch.randn(2, 2, 3, 5) * 3
    labels = torch.randint(0, 2, (2, 3, 5)) * torch.randint(2, 4, (2, 3, 5))  # 0 or a new class 2, 3
    labels[0, 0, 0] = U
    thresholds = torch.tensor([0.7, 0.8])
    per_pixel = pseudo_unbiased_cross_entropy(logits, labels, old, thresholds, reduction="none")
    max_p, arg = torch.softmax(old, 1).max(1)
    confident = (labels == 0) & (max_p > thresholds[arg])
    ce_pseudo = F.cross_entropy(logits, torch.where(confident, arg, labels), ignore_index=U, reduction="none")
    uce = unbiased_cross_entropy(
        logits, torch.where(confident, torch.full_like(labels, U), labels), 2, reduction="none"
    )
    torch.testing.assert_close(per_pixel, torch.where(confident, ce_pseudo, uce))


# --- CoNuSeg: prototypes, PRD, PCon ------------------------------------------------------------


def test_batch_prototypes_average_unit_vectors_over_the_batch():
    feats = torch.tensor([[[[3.0, 0.0, 5.0]], [[4.0, 2.0, 0.0]]]])  # (1, 2, 1, 3): (3,4), (0,2), (5,0)
    labels = torch.tensor([[[1, 1, U]]])
    protos, counts = batch_prototypes(feats, labels, 3)
    torch.testing.assert_close(protos, torch.tensor([[0.0, 0.0], [0.3, 0.9], [0.0, 0.0]]))  # ((.6,.8)+(0,1))/2
    torch.testing.assert_close(counts, torch.tensor([0.0, 2.0, 0.0]))
    weighted, _ = batch_prototypes(feats, labels, 3, weights=torch.tensor([[[0.5, 1.0, 1.0]]]))
    torch.testing.assert_close(weighted[1], torch.tensor([0.15, 0.7]))  # (.5·(.6,.8) + (0,1))/2


def test_prd_by_hand():
    # prototypes P0 = (1,0), P1 = (0,1), P2 = (1,1)/√2; old = new
    s = 1 / math.sqrt(2)
    feats = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])[None, :, None, :]
    pseudo = torch.tensor([[[0, 1, 2]]])
    loss = prototype_relation_distillation(feats, feats, pseudo, 3)
    # rows 0 and 1: off-diagonal sims (0, s); row 2: (s, s). p at τ=.2, q at τ=.01
    row01 = -sum(
        q * math.log(p)
        for q, p in zip(torch.softmax(torch.tensor([0, s / 0.01]), 0), torch.softmax(torch.tensor([0, s / 0.2]), 0))
    )
    expected = (2 * float(row01) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # one old class (+ bg): a single off-diagonal entry per row, always 0
    assert prototype_relation_distillation(feats, feats, pseudo, 2).item() == 0
    # the old model's relations are the target: a different old geometry changes the loss
    other = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[None, :, None, :]  # P̂0 = P̂1
    assert prototype_relation_distillation(feats, other, pseudo, 3).item() > loss.item()


def test_pcon_by_hand_with_and_without_hard_sampling():
    # K = 3 (bg, old 1, new 2), K_old = 2; G1 = (1,0), G2 = (0,1); the bg prototype is never a key
    protos = torch.tensor([[5.0, 5.0], [0.3, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[2.0, 0.0, 7.0], [0.0, 3.0, 7.0]])[None, :, None, :]  # class 1, class 2, bg
    pseudo = torch.tensor([[[1, 2, 0]]])
    logits = _pixels([[0, 0, 0], [0, 0, math.log(6)], [0, 0, 0]])  # pixel 2 predicted as 2 with p = .75
    hard = prototype_contrastive(feats, protos, logits, pseudo, 2)
    # L1 = (1,0): logits (3, 0) → log(1+e^−3); L2 = .25·(0,1): (0, 2.5) → log(1+e^−2.5)
    assert hard.item() == pytest.approx((math.log1p(math.exp(-3)) + math.log1p(math.exp(-2.5))) / 2, abs=1e-6)
    plain = prototype_contrastive(feats, protos, logits, pseudo, 2, hard=False)  # L2 = (0,1): (0, 10)
    assert plain.item() == pytest.approx((math.log1p(math.exp(-3)) + math.log1p(math.exp(-10))) / 2, abs=1e-6)
    # a hard pixel (predicted as another class) keeps its weight 1
    wrong = _pixels([[0, 0, 0], [0, math.log(6), 0], [0, 0, 0]])
    assert prototype_contrastive(feats, protos, wrong, pseudo, 2).item() == pytest.approx(plain.item(), abs=1e-6)
    # no foreground class in the batch: 0, not NaN
    only_bg = torch.tensor([[[0, 0, U]]])
    assert prototype_contrastive(feats, protos, logits, only_bg, 2).item() == 0


def test_running_prototypes_are_cumulative_means_of_the_given_classes():
    protos, counts = torch.zeros(3, 2), torch.zeros(3)
    update_running_prototypes(
        protos, counts, torch.tensor([[3.0], [4.0]])[None, :, :, None], torch.tensor([[[2]]]), [2]
    )
    torch.testing.assert_close(protos[2], torch.tensor([0.6, 0.8]))
    feats = torch.tensor([[1.0, 0.0, 9.0], [0.0, 2.0, 9.0]])[None, :, None, :]
    update_running_prototypes(protos, counts, feats, torch.tensor([[[2, 2, 1]]]), [2])
    torch.testing.assert_close(protos[2], torch.tensor([1.6 / 3, 1.8 / 3]))  # ((.6,.8) + (1,0) + (0,1)) / 3
    assert counts.tolist() == [0, 0, 3] and protos[1].abs().sum() == 0  # class 1 is not updated


def test_conuseg_loss_is_puce_plus_tenth_prd_and_pcon_and_spares_the_prior():
    torch.manual_seed(1)
    b, k, k_old = 2, 4, 3
    logits = torch.randn(b, k, 16, 16, requires_grad=True)
    old = torch.randn(b, k_old, 16, 16, requires_grad=True)
    feats = [torch.rand(b, 6, 4, 4, requires_grad=True) for _ in range(4)]
    old_feats = [torch.rand(b, 6, 4, 4, requires_grad=True) for _ in range(4)]
    labels = torch.zeros(b, 16, 16, dtype=torch.long)
    labels[:, :6] = 3
    labels[:, -2:] = U
    method = CoNuSeg(
        thresholds=torch.tensor([0.5, 0.6, 0.4]), prototypes=torch.zeros(k, 6), prototype_counts=torch.zeros(k)
    )
    method.prototypes[1] = F.normalize(torch.ones(6), dim=0)
    method.prototype_counts[1] = 10
    out = method.loss(_batch(logits, labels, [3], old, feats, old_feats))
    assert set(out.terms) == {"puce", "prd", "pcon"} and out.r is None
    # independent recomputation (the prototypes were updated with the batch's new-class pixels first)
    small = F.interpolate(labels[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    pseudo = F.interpolate(old_pseudo_labels(labels, old)[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    protos = torch.zeros(k, 6)
    protos[1] = method.prototypes[1]
    protos[3] = F.normalize(feats[3].detach(), dim=1).permute(0, 2, 3, 1)[small == 3].mean(0)
    torch.testing.assert_close(method.prototypes, protos)
    puce = pseudo_unbiased_cross_entropy(logits, labels, old, method.thresholds)
    prd = prototype_relation_distillation(feats[3], old_feats[3], pseudo, k_old)
    pcon = prototype_contrastive(feats[3], protos, F.interpolate(logits, size=(4, 4), mode="nearest"), pseudo, k_old)
    assert out.loss.item() == pytest.approx((puce + 0.1 * prd + 0.1 * pcon).item(), rel=1e-5)
    assert out.terms["prd"] > 0 and out.terms["pcon"] > 0
    out.loss.backward()
    assert old.grad is None and all(f.grad is None for f in old_feats)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(feats[3].grad).all()
    with pytest.raises(RuntimeError, match="prepare"):
        CoNuSeg().loss(_batch(logits, labels, [3], old, feats, old_feats))


@pytest.mark.parametrize("fill", [0, 3, U])
def test_conuseg_is_finite_without_new_or_old_pixels(fill):
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    feats = [torch.zeros(2, 5, 1, 1, requires_grad=True) for _ in range(4)]  # dead (all-zero) features too
    labels = torch.full((2, 8, 8), fill, dtype=torch.long)
    method = CoNuSeg(thresholds=torch.zeros(3), prototypes=torch.zeros(4, 5), prototype_counts=torch.zeros(4))
    out = method.loss(_batch(logits, labels, [3], torch.randn(2, 3, 8, 8), feats, [torch.rand(2, 5, 1, 1)] * 4))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(feats[3].grad).all()


def test_conuseg_prepare_thresholds_and_old_prototypes():
    class Net(torch.nn.Module):
        def forward(self, x):
            from napari_cinuseg.model.network import NetworkOutput

            logits = torch.stack([x[:, 0], x[:, 1], x[:, 2]], 1) * 10  # K_old = 3: channel = colour
            return NetworkOutput(logits, (x, x, x, x[:, :2] + 1.0), None)

    class Prior:
        network, num_channels = Net(), 3

    x = torch.zeros(1, 3, 2, 2)
    x[0, 1, 0, :] = 1.0  # top row: old class 1, confident
    x[0, 0, 1, :] = 1.0  # bottom row: background
    labels = torch.tensor([[[0, 0], [0, 3]]])
    method = CoNuSeg()
    ctx = StepContext(Prior(), None, [3], TrainSettings(), torch.device("cpu"), lambda: iter([(x, labels)]))
    method.prepare(ctx)
    # p ≈ 1 for class 1 (2 px) and class 0 (1 bg px; the new-class pixel is not counted): median in
    # the last bin, capped at .75; class 2 is never predicted → 0
    torch.testing.assert_close(method.thresholds, torch.tensor([0.75, 0.75, 0.0]))
    # class 1's old prototype: its two pixels' features (x[:, :2] + 1 = (1, 2)) normalised
    torch.testing.assert_close(method.prototypes[1], torch.tensor([1.0, 2.0]) / math.sqrt(5))
    assert method.prototype_counts.tolist() == [0, 2, 0, 0] and method.prototypes.shape == (4, 2)


# --- INS ---------------------------------------------------------------------------------------


def test_ins_centroids_are_running_means_of_raw_features():
    cents, counts = torch.zeros(4, 2), torch.zeros(4)
    feats = torch.tensor([[2.0, 4.0, 9.0], [0.0, 2.0, 9.0]])[None, :, None, :]
    update_centroids(cents, counts, feats, torch.tensor([[[3, 3, 0]]]), [3])
    torch.testing.assert_close(cents[3], torch.tensor([3.0, 1.0]))
    update_centroids(cents, counts, torch.tensor([[6.0], [4.0]])[None, :, :, None], torch.tensor([[[3]]]), [3])
    torch.testing.assert_close(cents[3], torch.tensor([4.0, 2.0]))  # (2·(3,1) + (6,4)) / 3
    assert counts.tolist() == [0, 0, 0, 3] and cents[:3].abs().sum() == 0


def test_fca_relabels_background_close_to_the_seen_centroids():
    cents, counts = torch.zeros(4, 2), torch.zeros(4)
    cents[3], counts[3] = torch.tensor([5.0, 0.0]), 1
    feats = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0], [0.1, 1.0, 0.0, 0.0, 1.0]])[None, :, None, :]
    labels = torch.tensor([[[0, 0, 3, U, 0]]])
    out = future_class_labels(labels, feats, cents, counts, [3], unknown=4)
    # cos .995 → unknown; cos 0 → bg; new and unlabelled pixels keep their label; cos .707 < .8 → bg
    assert out.tolist() == [[[4, 0, 3, U, 0]]]
    # the similarity is the mean over the seen centroids: (1,0) and (0,1) give .5 and .707 < .8
    cents[2], counts[2] = torch.tensor([0.0, 2.0]), 1
    assert future_class_labels(labels, feats, cents, counts, [2, 3], 4).tolist() == [[[0, 0, 3, U, 0]]]
    assert future_class_labels(labels, feats, cents, counts, [2, 3], 4, threshold=0.7).tolist() == [[[0, 0, 3, U, 4]]]
    # the code's ``>=``: a similarity equal to the threshold is close enough
    assert future_class_labels(labels, feats, cents, counts, [3], 4, threshold=1.0).tolist() == [[[0, 0, 3, U, 0]]]
    exact = torch.tensor([[1.0], [0.0]])[None, :, :, None]
    assert future_class_labels(torch.zeros(1, 1, 1, dtype=torch.long), exact, cents, counts, [3], 4, 1.0).item() == 4
    # no centroid yet: nothing changes
    assert torch.equal(future_class_labels(labels, feats, cents, torch.zeros(4), [3], 4), labels)


def test_fca_works_at_the_embedding_resolution():
    cents, counts = torch.zeros(3, 2), torch.zeros(3)
    cents[2], counts[2] = torch.tensor([1.0, 0.0]), 1
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, :, None, :]  # (1, 2, 1, 2): left close, right far
    labels = torch.tensor([[[0, 2, 0, 0], [0, 0, 0, U]]])  # (1, 2, 4)
    out = future_class_labels(labels, feats, cents, counts, [2], unknown=3)
    assert out.tolist() == [[[3, 2, 0, 0], [3, 3, 0, U]]]


def test_cid_targets_by_hand():
    old = _pixels([[2.0, -1.0], [2.0, -1.0], [2.0, -1.0]])  # K_old = 2
    labels = torch.tensor([[[2, 0, 3]]])
    t = compatibility_targets(old, labels, [2], channels=4)
    # new-class pixel: bg logit moves to channel 2, bg → 0; other pixels: old logits, new channels 0
    torch.testing.assert_close(
        t[0, :, 0].T, torch.tensor([[0.0, -1.0, 2.0, 0.0], [2.0, -1.0, 0.0, 0.0], [2.0, -1.0, 0.0, 0.0]])
    )
    future = torch.full((1, 1, 1, 3), 0.5)  # an old unknown channel (not in this engine) adds to it
    t = compatibility_targets(old, labels, [2], channels=4, old_future=future)
    torch.testing.assert_close(t[0, :, 0, 0], torch.tensor([0.0, -1.0, 2.5, 0.0]))
    torch.testing.assert_close(t[0, :, 0, 1], torch.tensor([2.0, -1.0, 0.0, 0.0]))


def test_cid_by_hand_and_against_a_pixel_loop():
    old = _pixels([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [1.0, 3.0]])
    labels = torch.tensor([[[2, 0, 4, U]]])  # new, bg, unknown (excluded), unlabelled; C = 5 channels
    loss = compatibility_distillation(torch.zeros(1, 5, 1, 4), old, labels, [2], reduction="none")

    def lse(t):
        return math.log(sum(math.exp(v) for v in t))

    expected = [
        -(1 / 25) * sum(v - lse([0, 0, 2, 0, 0]) for v in [0, 0, 2, 0, 0]),
        -(1 / 25) * sum(v - lse([2, 0, 0, 0, 0]) for v in [2, 0, 0, 0, 0]),
        0.0,
        -(1 / 25) * sum(v - lse([1, 3, 0, 0, 0]) for v in [1, 3, 0, 0, 0]),
    ]
    torch.testing.assert_close(loss[0, 0], torch.tensor(expected))
    # random values, checked pixel by pixel with the plain definition
    torch.testing.assert_close(
        compatibility_distillation(torch.zeros(1, 5, 1, 4), old, labels, [2]), torch.tensor(sum(expected) / 4)
    )
    torch.manual_seed(3)
    logits, old = torch.randn(2, 5, 3, 3), torch.randn(2, 2, 3, 3)
    labels = torch.randint(0, 5, (2, 3, 3))
    labels[0, 0, 0] = U
    total = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(3):
                y = int(labels[b, i, j])
                t = [0.0] * 5
                t[0], t[1] = float(old[b, 0, i, j]), float(old[b, 1, i, j])
                if y in (2, 3):
                    t[y], t[0] = float(old[b, 0, i, j]), 0.0
                if y == 4:
                    continue  # the unknown label: no distillation
                log_q = torch.log_softmax(torch.tensor(t), 0)
                total += -float((torch.softmax(logits[b, :, i, j], 0) * log_q).sum()) / 5
    assert compatibility_distillation(logits, old, labels, [2, 3]).item() == pytest.approx(total / 18, rel=1e-5)


def test_cid_spares_the_prior_and_stays_finite():
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    old = (torch.randn(1, 2, 2, 2) * 50).requires_grad_(True)
    loss = compatibility_distillation(logits, old, torch.full((1, 2, 2), 2), [2])
    loss.backward()
    assert torch.isfinite(loss) and old.grad is None and torch.isfinite(logits.grad).all()


def test_unknown_head_copies_the_background_row():
    cls = torch.nn.Conv2d(6, 4, 1)
    head = unknown_head(cls)
    assert head.out_channels == 1
    assert torch.equal(head.weight, cls.weight[:1]) and torch.equal(head.bias, cls.bias[:1])
    assert head.weight.data_ptr() != cls.weight.data_ptr()


def test_ins_loss_is_uce_on_fca_labels_plus_cid():
    torch.manual_seed(4)
    k, k_old = 4, 3
    cls = torch.nn.Conv2d(3, k, 1)
    method = INS()
    method.setup(cls)
    assert [p.shape for p in method.extra_parameters()] == [(1, 3, 1, 1), (1,)]
    emb = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = F.interpolate(cls(emb), size=(8, 8), mode="bilinear", align_corners=False)
    old = torch.randn(2, k_old, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :2] = 3
    labels[1, -1] = U
    out = method.loss(_batch(logits, labels, [3], old, emb=emb, old_emb=emb.detach()))
    assert set(out.terms) == {"uce", "cid", "unknown"}
    # independent recomputation
    small = F.interpolate(labels[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    centroid = emb.detach().permute(0, 2, 3, 1)[small == 3].mean(0)
    torch.testing.assert_close(method.centroids[3], centroid)
    sim = F.cosine_similarity(emb.detach(), centroid[None, :, None, None], dim=1)
    close = F.interpolate((sim >= 0.8).float()[:, None], size=(8, 8), mode="nearest")[:, 0].bool()
    fca = torch.where(close & (labels == 0), torch.full_like(labels, k), labels)
    assert out.terms["unknown"] == pytest.approx(float((fca == k).float().mean()))
    unk = F.interpolate(method.head(emb), size=(8, 8), mode="bilinear", align_corners=False)
    full = torch.cat([logits, unk], 1)
    uce = unbiased_cross_entropy(full, fca, k_old, reduction="none").mean()
    cid = compatibility_distillation(full, old, fca, [3])
    assert out.loss.item() == pytest.approx((uce + cid).item(), rel=1e-5)
    out.loss.backward()
    assert old.grad is None and torch.isfinite(emb.grad).all()
    assert method.head.weight.grad is not None and torch.isfinite(method.head.weight.grad).all()
    with pytest.raises(RuntimeError, match="prepare"):
        INS().loss(_batch(logits, labels, [3], old, emb=emb, old_emb=emb))


@pytest.mark.parametrize("fill", [0, 3, U])
def test_ins_is_finite_without_new_or_old_pixels(fill):
    method = INS()
    method.setup(torch.nn.Conv2d(3, 4, 1))
    emb = torch.zeros(1, 3, 4, 4, requires_grad=True)
    logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = method.loss(_batch(logits, torch.full((1, 8, 8), fill), [3], torch.randn(1, 3, 8, 8), emb=emb, old_emb=emb))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(emb.grad).all()


# --- IDEC --------------------------------------------------------------------------------------


def test_idec_pseudo_labels_by_hand():
    # sigmoid(2) = .88, sigmoid(.5) = .62
    old = _pixels([[0, 2, -5], [0, 0.5, -5], [3, 2, -5], [0, 2, -5], [0, -5, 2]])
    labels = torch.tensor([[[0, 0, 0, U, 3]]])
    # claimed (.88 ≥ .7); below the threshold; the argmax is background; unlabelled and new kept
    assert threshold_pseudo_labels(labels, old).tolist() == [[[1, 0, 0, U, 3]]]
    assert threshold_pseudo_labels(labels, old, 0.6).tolist() == [[[1, 1, 0, U, 3]]]


def test_bce_with_ignore_by_hand():
    labels = torch.tensor([[[0, 2, U]]])
    # zero logits: every channel costs log 2, 3 channels, mean over the 2 labelled pixels
    assert bce_with_ignore(torch.zeros(1, 3, 1, 3), labels).item() == pytest.approx(3 * math.log(2))
    logits = _pixels([[2.0, -1.0, 0.0], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]])

    def sp(v):  # BCE(1, z) = sp(−z), BCE(0, z) = sp(z)
        return math.log1p(math.exp(v))

    expected = ((sp(-2) + sp(-1) + sp(0)) + (sp(0) + sp(0) + sp(-3))) / 2
    assert bce_with_ignore(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert bce_with_ignore(logits, torch.full((1, 1, 3), U)).item() == 0


def test_channel_distillation_by_hand_and_narrowing():
    # new = 0 → log p = −log C_old; Σ q = 1: loss = log C / C
    assert channel_distillation(torch.zeros(1, 4, 2, 2), torch.randn(1, 4, 2, 2)).item() == pytest.approx(
        math.log(4) / 4
    )
    torch.manual_seed(5)
    new, old = torch.randn(2, 5, 3, 3), torch.randn(2, 3, 3, 3)
    ref = -(torch.softmax(2 * old, 1) * torch.log_softmax(new[:, :3], 1)).sum(1).div(3).mean()
    torch.testing.assert_close(channel_distillation(new, old), ref)  # α = 2, the extra channels dropped
    ref1 = -(torch.softmax(old, 1) * torch.log_softmax(new[:, :3], 1)).sum(1).div(3).mean()
    torch.testing.assert_close(channel_distillation(new, old, alpha=1.0), ref1)
    maps = [torch.zeros(1, 2, 1, 1), torch.zeros(1, 4, 2, 2)]
    total = dense_distillation(maps, [torch.randn(1, 2, 1, 1), torch.randn(1, 4, 2, 2)], weights=(0.5, 2.0))
    assert total.item() == pytest.approx(0.5 * math.log(2) / 2 + 2.0 * math.log(4) / 4)


def test_region_embeddings_and_complements():
    feats = torch.tensor([[1.0, 3.0, 5.0, 100.0]])[None, :, None, :]
    regions = torch.tensor([[[0, 0, 2, U]]])
    mean, rest, counts, rest_counts = region_embeddings(feats, regions, 3)
    assert mean[0, :, 0].tolist() == [2.0, 0.0, 5.0] and rest[0, :, 0].tolist() == [5.0, 3.0, 2.0]
    assert counts[0].tolist() == [2, 0, 1] and rest_counts[0].tolist() == [1, 3, 2]  # the 255 pixel is nowhere


def test_arcl_triplet_by_hand():
    new = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])[None, :, None, :]
    regions = torch.tensor([[[0, 0, 2, 2]]])
    # old = new: d(a, p) = 0, d(a, n) = √2 → both regions give max(1 − √2, 0) = 0
    assert asymmetric_region_contrast(new, new, regions, 3).item() == pytest.approx(0.0, abs=1e-5)
    assert asymmetric_region_contrast(new, new, regions, 3, margin=2.0).item() == pytest.approx(
        2 - math.sqrt(2), abs=1e-5
    )
    # the old model saw region 2 like region 0: its anchor (1,0) is far from the positive (0,1), near the
    # negative (1,0): √2 − 0 + 1 for region 2, 0 for region 0
    old = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])[None, :, None, :]
    assert asymmetric_region_contrast(new, old, regions, 3).item() == pytest.approx((math.sqrt(2) + 1) / 2, abs=1e-5)
    # a class alone in its image has no negative; no region at all → 0
    assert asymmetric_region_contrast(new, old, torch.zeros(1, 1, 4, dtype=torch.long), 3).item() == 0
    assert asymmetric_region_contrast(new, old, torch.full((1, 1, 4), U), 3).item() == 0


def test_arcl_upsamples_features_to_the_regions_and_spares_the_old_ones():
    torch.manual_seed(6)
    new = torch.randn(2, 4, 4, 4, requires_grad=True)
    old = torch.randn(2, 4, 4, 4, requires_grad=True)
    regions = torch.randint(0, 3, (2, 8, 8))
    loss = asymmetric_region_contrast(new, old, regions, 3)
    up = F.interpolate(new, size=(8, 8), mode="bilinear", align_corners=False)
    up_old = F.interpolate(old, size=(8, 8), mode="bilinear", align_corners=False)
    assert loss.item() == pytest.approx(asymmetric_region_contrast(up, up_old, regions, 3).item(), rel=1e-5)
    loss.backward()
    assert old.grad is None and torch.isfinite(new.grad).all()


def test_idec_loss_is_the_sum_of_its_parts_and_spares_the_prior():
    torch.manual_seed(7)
    k, k_old = 4, 3
    logits = torch.randn(2, k, 16, 16, requires_grad=True)
    old = (torch.randn(2, k_old, 16, 16) * 3).requires_grad_(True)
    sizes = [(8, 4), (16, 2), (32, 1), (6, 8)]
    feats = [torch.randn(2, c, s, s, requires_grad=True) for c, s in sizes]
    old_feats = [torch.randn(2, c, s, s, requires_grad=True) for c, s in sizes]
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, :4] = 3
    labels[:, -1] = U
    b = _batch(
        logits,
        labels,
        [3],
        old,
        feats[:3] + [torch.randn(2, 64, 1, 1)],
        old_feats[:3] + [torch.randn(2, 64, 1, 1)],
        feats[3],
        old_feats[3],
    )
    out = IDEC().loss(b)
    assert set(out.terms) == {"bce", "kd_feat", "kd_logits", "arcl"}
    pseudo = threshold_pseudo_labels(labels, old)
    expected = (
        bce_with_ignore(logits, pseudo)
        + dense_distillation(feats, old_feats, (0.5, 1.0, 2.0, 1.0), 2.0)
        + channel_distillation(logits, old, 2.0)
        + asymmetric_region_contrast(feats[3], old_feats[3], pseudo, k)
    )
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    assert old.grad is None and all(f.grad is None for f in old_feats)
    assert all(torch.isfinite(f.grad).all() for f in feats) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("fill", [0, 3, U])
def test_idec_is_finite_without_new_or_old_pixels(fill):
    feats = [torch.zeros(1, 4, 2, 2, requires_grad=True) for _ in range(4)]
    logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = IDEC().loss(
        _batch(logits, torch.full((1, 8, 8), fill), [3], torch.randn(1, 3, 8, 8), feats, feats, feats[3], feats[3])
    )
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all() and all(torch.isfinite(f.grad).all() for f in feats)


# --- one short step each, on real patches ---------------------------------------------------------


@pytest.mark.parametrize(
    "method, terms",
    [
        ("conuseg", {"puce", "prd", "pcon"}),
        ("ins", {"uce", "cid", "unknown"}),
        ("idec", {"bce", "kd_feat", "kd_logits", "arcl"}),
    ],
)
def test_three_iterations_of_a_step(base_file, few_pairs, tiny, tmp_path, method, terms):
    events = []
    prior = load_model(base_file)
    out = tmp_path / f"{method}.cinuseg.pt"
    model = drain(
        train_step(prior, few_pairs[1], ["Other"], tiny.replace(iterations=3), method=method, out=out), events.append
    )
    progress = [e for e in events if isinstance(e, Progress)]
    assert len(progress) == 3 and all(math.isfinite(e.loss) for e in progress)
    assert set(progress[-1].terms) == terms and all(math.isfinite(v) for v in progress[-1].terms.values())
    # the saved model knows the step's classes only: no trace of a training-only channel (INS)
    saved = load_model(out)
    assert saved.class_names == ["Epithelial", "Spindle-shaped", "Other"] and saved.network.num_classes == 4
    assert set(saved.network.state_dict()) == set(prior.child(["Other"]).network.state_dict())
    assert [s.method for s in model.steps] == ["base", method]
