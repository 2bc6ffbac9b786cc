"""The EWF, NeST and BARM baselines: hand-worked values on tiny tensors and modules, the hooks on a
tiny model, and one short real step each."""

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cinuseg import drain, load_model, train_step
from napari_cinuseg.losses import IGNORE
from napari_cinuseg.methods import (
    _REGISTRY,
    StepBatch,
    StepContext,
    available,
    get_method,
    register,
)
from napari_cinuseg.methods.barm import (
    BARM,
    background_adaptation_losses,
    background_feature_distillation,
    compose_background,
    fold_residual,
    group_distillation,
    pseudo_background_bce,
    pseudo_labels,
)
from napari_cinuseg.methods.ewf import EWF, fuse_weights, fusion_factor
from napari_cinuseg.methods.mib import MiB
from napari_cinuseg.methods.nest import (
    NeST,
    initial_matrices,
    installed_classifier,
    similarity_statistics,
    transformed_weights,
)
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.model.segmenter import CiNuSegModel
from napari_cinuseg.runtime.events import Progress
from napari_cinuseg.training.settings import TrainSettings


def test_the_methods_are_registered():
    assert {"ewf", "ewf-plop", "nest", "nest-plop", "barm"} <= set(available())
    assert all(get_method(n).uses_prior for n in ("ewf", "nest", "barm"))
    assert get_method("ewf-plop").base == "plop" and get_method("nest-plop").name == "nest-plop"
    with pytest.raises(ValueError, match="base method"):
        EWF(base="nope")


# --- a tiny model and a hand-made step context ------------------------------------------------------


def _tiny_step(seed=0, n_images=3, size=32):
    """A prior with 2 classes (K_old = 3) and its child with 1 new class, and a StepContext over
    ``n_images`` random images whose labels hold background, the new class (3) and 255."""
    torch.manual_seed(seed)
    prior = CiNuSegModel.new(["A", "B"], Architecture(decoder_channels=(8, 8, 8, 8)))
    prior.network.eval()
    model = prior.child(["C"], init="softmax")  # EWF and NeST build on MiB
    gen = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n_images):
        x = torch.randn(1, 3, size, size, generator=gen)
        y = torch.zeros(1, size, size, dtype=torch.long)
        y[:, : size // 2, : size // 2] = 3
        y[:, -2:] = IGNORE
        data.append((x, y))
    ctx = StepContext(prior, model, [3], TrainSettings(device="cpu"), torch.device("cpu"), lambda: iter(data))
    return prior, model, ctx


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# --- EWF -----------------------------------------------------------------------------------------


def test_fusion_factor_is_the_papers():
    assert fusion_factor(1, 4) == pytest.approx(0.5)
    assert fusion_factor(1, 17) == pytest.approx(math.sqrt(1 / 17))  # VOC 15-1: 1 new of bg + 16
    with pytest.raises(ValueError):
        fusion_factor(0, 4)


class _Net(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)
        self.classifier = nn.Conv2d(2, k, 1)


def test_fuse_weights_by_hand():
    torch.manual_seed(0)
    old, new = _Net(2), _Net(3)
    with torch.no_grad():
        old.bn.running_mean.fill_(1.0)
        new.bn.running_mean.fill_(3.0)
    old.bn.num_batches_tracked.fill_(5)
    new.bn.num_batches_tracked.fill_(9)
    old_before, new_before = _state(old), _state(new)
    fuse_weights(new, old, alpha=0.25)
    fused = new.state_dict()
    # every old entry: 0.75·old + 0.25·new
    torch.testing.assert_close(fused["bn.running_mean"], torch.full((2,), 0.75 * 1 + 0.25 * 3))
    torch.testing.assert_close(fused["bn.weight"], 0.75 * old_before["bn.weight"] + 0.25 * new_before["bn.weight"])
    for key in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(fused[key][:2], 0.75 * old_before[key] + 0.25 * new_before[key][:2])
        torch.testing.assert_close(fused[key][2:], new_before[key][2:])  # the new class: kept as trained
    assert fused["bn.num_batches_tracked"].item() == 9  # integer buffers: the new model's
    assert all(torch.equal(v, old_before[k]) for k, v in old.state_dict().items())  # old only read
    with pytest.raises(ValueError, match="shapes"):
        fuse_weights(_Net(1), old, 0.5)  # fewer rows than the old model


def test_ewf_freezes_the_old_rows_and_fuses_the_endpoints():
    prior, model, ctx = _tiny_step()
    prior_before = _state(prior.network)
    start = _state(model.network)  # MiB-initialised rows, bias_0 = b_0 − log 2
    method = EWF()
    method.prepare(ctx)
    cls = model.network.classifier
    x = torch.randn(2, 8, 4, 4)
    cls(x).pow(2).sum().backward()
    assert (cls.weight.grad[:3] == 0).all() and (cls.bias.grad[:3] == 0).all()
    assert (cls.weight.grad[3:] != 0).any()
    # "training": every parameter moves, the old rows by a weight-decay-like drift
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(0.01)
    trained = _state(model.network)
    method.finish(ctx)
    alpha = math.sqrt(1 / 4)
    assert method.fused_alpha == pytest.approx(alpha)
    out = model.network.state_dict()
    for key, old in prior_before.items():
        if not old.is_floating_point():
            continue
        if key.startswith("classifier."):
            # old rows: back to their frozen start, then fused; the new row as trained
            torch.testing.assert_close(out[key][:3], (1 - alpha) * old + alpha * start[key][:3])
            torch.testing.assert_close(out[key][3:], trained[key][3:])
        else:
            torch.testing.assert_close(out[key], (1 - alpha) * old + alpha * trained[key])
    assert all(torch.equal(v, prior_before[k]) for k, v in prior.network.state_dict().items())
    cls.weight.grad = None
    cls(x).pow(2).sum().backward()
    assert (cls.weight.grad[:3] != 0).any()  # the hooks are gone after the step


def test_ewf_loss_is_its_base_methods():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 2, (2, 3, 3)) * 3
    batch = StepBatch(logits, [], labels, [3], torch.randn(2, 3, 3, 3), [])
    assert EWF().loss(batch).loss.item() == pytest.approx(MiB().loss(batch).loss.item())


# --- NeST ----------------------------------------------------------------------------------------


def test_transformed_weights_by_hand():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # M = 1, P = (½, ½): the mean of the old rows
    torch.testing.assert_close(
        transformed_weights(w, torch.ones(1, 2, 2), torch.tensor([[0.5, 0.5]])), torch.tensor([[2.0, 3.0]])
    )
    # M picks dimension 0 of row 0 and dimension 1 of row 1
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(transformed_weights(w, m, torch.tensor([[1.0, 1.0]])), torch.tensor([[1.0, 4.0]]))


def test_similarity_statistics_match_the_codes_indicator():
    torch.manual_seed(2)
    probs = torch.softmax(torch.randn(2, 3, 4, 5), 1)
    emb = torch.randn(2, 6, 4, 5)  # negative values too
    emb[0, 0, 0, 0] = 0.0
    weight = torch.randn(3, 6)
    weight[1, 2] = 0.0  # a zero weight never counts
    labels = torch.randint(0, 3, (2, 4, 5)) + 2  # channels 2, 3, 4; new classes 3 and 5 (absent)
    sums, counts = similarity_statistics(probs, emb, labels, weight, [3, 5])
    # the code's way: a (pixels, K_old, D) indicator of f_d · W_jd > 0, times p_j
    p = probs.permute(0, 2, 3, 1).reshape(-1, 3)
    f = emb.permute(0, 2, 3, 1).reshape(-1, 6)
    indicator = ((f[:, None, :] * weight[None]) > 0).float()
    for i, c in enumerate([3, 5]):
        mask = labels.reshape(-1) == c
        torch.testing.assert_close(sums[i], (indicator[mask] * p[mask][:, :, None]).sum(0))
        assert counts[i].item() == mask.sum().item()
    assert counts[1] == 0 and (sums[1] == 0).all()


def test_initial_matrices_by_hand():
    sums = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    counts = torch.tensor([2.0, 0.0])
    m, p = initial_matrices(sums, counts)
    torch.testing.assert_close(m[0], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    torch.testing.assert_close(p[0], torch.softmax(torch.tensor([1.0, 1.0]), 0))  # row sums 1 and 1
    torch.testing.assert_close(m[1], torch.ones(2, 2))  # absent class: MiB's copy of background
    torch.testing.assert_close(p[1], torch.tensor([1.0, 0.0]))


def test_installed_classifier_by_hand():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # ‖w_0‖ = 5
    b = torch.tensor([1.0, -1.0])  # ‖b_old‖ = √2
    bg, rows, bias = installed_classifier(
        w,
        b,
        importance=torch.ones(1, 2, 2),
        projection=torch.tensor([[1.0, 0.0]]),
        new_bias=torch.tensor([2.0]),
        importance_bg=torch.tensor([1.0, 0.0]),
        projection_bg=torch.tensor(2.0),
    )
    torch.testing.assert_close(bg, torch.tensor([5.0, 0.0]))  # 2·(1, 0)⊙(3, 4) = (6, 0), rescaled to norm 5
    torch.testing.assert_close(bias, torch.tensor([math.sqrt(2)]))  # 2 · √2/2
    # rows (3, 4), norm 5; old rows (5, 0) and (0, 1): mean norm 3 → γ = 3/5
    torch.testing.assert_close(rows, torch.tensor([[1.8, 2.4]]))


def test_nest_prepare_installs_the_transform_of_the_old_rows():
    prior, model, ctx = _tiny_step(n_images=3)
    prior_before = _state(prior.network)
    method = NeST(pretune_epochs=5, pretune_max_iterations=4)
    method.prepare(ctx)
    assert len(method.pretune_losses) == 4 and all(math.isfinite(v) for v in method.pretune_losses)
    cls = model.network.classifier
    old_w = prior_before["classifier.weight"][:, :, 0, 0]
    old_b = prior_before["classifier.bias"]
    bg, rows, bias = installed_classifier(old_w, old_b, **method.matrices)
    torch.testing.assert_close(cls.weight[0, :, 0, 0], bg)
    torch.testing.assert_close(cls.weight[3:, :, 0, 0], rows)
    torch.testing.assert_close(cls.bias[3:], bias)
    torch.testing.assert_close(cls.weight[1:3], prior_before["classifier.weight"][1:])  # old classes: as before
    torch.testing.assert_close(cls.bias[:3], old_b)  # background bias: the prior's, not MiB's
    assert torch.linalg.vector_norm(cls.weight[0]).item() == pytest.approx(
        torch.linalg.vector_norm(old_w[0]).item(), rel=1e-5
    )
    # the matrices were initialised from the similarity statistics and then pre-tuned
    net = prior.network
    sums = counts = 0
    for x, y in ctx.batches():
        emb = net(x).embedding
        small = F.interpolate(y[:, None].float(), size=emb.shape[-2:], mode="nearest")[:, 0].long()
        s, c = similarity_statistics(torch.softmax(net.classifier(emb), 1), emb, small, old_w, [3])
        sums, counts = sums + s, counts + c
    m0, p0 = initial_matrices(sums, counts)
    assert not torch.allclose(method.matrices["importance"], m0)
    assert not torch.allclose(method.matrices["projection"], p0)
    assert all(torch.equal(v, prior_before[k]) for k, v in prior.network.state_dict().items())
    # the pre-tuning iterations: epochs × images when under the bound
    _, _, ctx2 = _tiny_step(n_images=2)
    short = NeST(pretune_epochs=2)
    short.prepare(ctx2)
    assert len(short.pretune_losses) == 4


def test_nest_prepare_leaves_batchnorm_statistics_alone():
    _, model, ctx = _tiny_step(n_images=2)
    model.network.train()
    before = {k: v.clone() for k, v in model.network.state_dict().items() if "running" in k}
    NeST(pretune_epochs=1).prepare(ctx)
    after = model.network.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.network.training and model.network.decoder.training  # modes given back


# --- BARM ----------------------------------------------------------------------------------------


def _pixels(values):
    """(N, K) per-pixel values → (1, K, 1, N) logits."""
    return torch.tensor(values, dtype=torch.float32).T[None, :, None, :]


def test_barm_pseudo_labels_by_hand():
    # old logits: bg, class 1, class 2 (sigmoid scores); labels 0 except one new pixel and one 255
    old = _pixels([[-5, 3, -5], [-5, 0.5, -5], [4, 3, -5], [-5, 3, -5], [-5, -5, 3]])
    labels = torch.tensor([[[0, 0, 0, 3, IGNORE]]])
    # σ(3) = .95 ≥ .7 → 1; σ(.5) = .62 < .7 → stays 0; bg wins → 0; new pixel and 255 kept
    assert pseudo_labels(labels, old).tolist() == [[[1, 0, 0, 3, IGNORE]]]


def test_compose_background_detaches_the_old_parts():
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    residual = torch.randn(1, 1, 2, 2, requires_grad=True)
    out = compose_background(logits, residual, k_old=3)
    torch.testing.assert_close(out[:, 0], logits[:, 0] + residual[:, 0])
    torch.testing.assert_close(out[:, 1:], logits[:, 1:])
    out.sum().backward()
    assert (logits.grad[:, :3] == 0).all() and (logits.grad[:, 3] == 1).all() and (residual.grad == 1).all()


def test_pseudo_background_bce_by_hand():
    adapted = torch.zeros(1, 3, 1, 3)
    targets = torch.tensor([[[0, 2, IGNORE]]])
    # zero logits: each channel's BCE is log 2, three channels per labelled pixel
    assert pseudo_background_bce(adapted, targets).item() == pytest.approx(3 * math.log(2))
    adapted[0, 2, 0, 1] = 10.0  # a confident right answer lowers that pixel's term
    expected = (3 * math.log(2) + 2 * math.log(2) + F.softplus(torch.tensor(-10.0)).item()) / 2
    assert pseudo_background_bce(adapted, targets).item() == pytest.approx(expected, rel=1e-5)
    assert pseudo_background_bce(adapted, torch.full_like(targets, IGNORE)).item() == 0


def test_background_adaptation_losses_by_hand():
    r = torch.tensor([0.0, math.log(3), -math.log(3), 2.0]).view(1, 1, 1, 4)
    labels = torch.tensor([[[0, 0, 0, 3]]])
    ba_ce, ba_t = background_adaptation_losses(r, labels)
    assert ba_ce.item() == pytest.approx(math.log(1 + math.e**2))  # BCE(2, 0) on the one new pixel
    # background pixels: max(0, 1 − 2σ): σ(0) = ½ → 0; σ(ln 3) = ¾ → 0; σ(−ln 3) = ¼ → ½
    assert ba_t.item() == pytest.approx(0.5 / 3)
    # labels at full resolution are resized to the residual's by nearest neighbour
    ba_ce2, ba_t2 = background_adaptation_losses(r, labels.repeat_interleave(2, dim=2).repeat_interleave(2, dim=1))
    assert ba_ce2.item() == pytest.approx(ba_ce.item()) and ba_t2.item() == pytest.approx(ba_t.item())
    # no new-class pixel, no background pixel: both 0, never NaN
    zero_ce, _ = background_adaptation_losses(r, torch.zeros_like(labels))
    _, zero_t = background_adaptation_losses(r, torch.full_like(labels, 3))
    assert zero_ce.item() == 0 and zero_t.item() == 0


def test_group_distillation_and_feature_distillation_by_hand():
    # zero logits against zero old logits: BCE(0, ½) = log 2 per old channel
    assert group_distillation(torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 3, 3)).item() == pytest.approx(3 * math.log(2))
    torch.manual_seed(3)
    z, old = torch.randn(2, 4, 3, 3), torch.randn(2, 3, 3, 3)
    ref = F.binary_cross_entropy_with_logits(z[:, :3], torch.sigmoid(old), reduction="none").mean(dim=(0, 2, 3)).sum()
    torch.testing.assert_close(group_distillation(z, old), ref)
    f = torch.ones(1, 2, 1, 2)
    g = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[0, 3]]])
    # only the background pixel counts, averaged over all 4 elements: (1² + 1²) / 4
    assert background_feature_distillation(f, g, labels).item() == pytest.approx(0.5)


def test_folding_the_residual_gives_the_composed_background():
    torch.manual_seed(4)
    cls, res = nn.Conv2d(5, 4, 1), nn.Conv2d(5, 1, 1)
    emb = torch.randn(2, 5, 3, 3)
    with torch.no_grad():
        before, r = cls(emb), res(emb)
        fold_residual(cls, res)
        after = cls(emb)
    torch.testing.assert_close(after[:, :1], before[:, :1] + r)
    torch.testing.assert_close(after[:, 1:], before[:, 1:])


def test_barm_loss_is_finite_and_sums_its_terms():
    prior, model, ctx = _tiny_step()
    method = BARM()
    start = _state(model.network)
    method.prepare(ctx)
    cls = model.network.classifier
    assert cls.bias[0].item() == pytest.approx(prior.network.classifier.bias[0].item())  # not MiB's
    assert not torch.allclose(cls.weight[3], start["classifier.weight"][3])  # new row re-initialised
    torch.testing.assert_close(cls.weight[:3], start["classifier.weight"][:3])
    assert [p.shape for p in method.extra_parameters()] == [(1, 8, 1, 1), (1,)]
    torch.manual_seed(5)
    emb = torch.rand(2, 8, 4, 4, requires_grad=True)
    old_emb = torch.rand(2, 8, 4, 4)
    logits = F.interpolate(cls(emb), size=(8, 8), mode="bilinear", align_corners=False)
    old_logits = torch.randn(2, 3, 8, 8)
    for labels in (
        torch.zeros(2, 8, 8, dtype=torch.long),  # no new-class pixel
        torch.full((2, 8, 8), 3, dtype=torch.long),  # no background pixel
        torch.full((2, 8, 8), IGNORE, dtype=torch.long),  # nothing labelled
    ):
        out = method.loss(StepBatch(logits, [], labels, [3], old_logits, [], emb, old_emb))
        assert torch.isfinite(out.loss) and set(out.terms) == {"pb_bce", "ba_t", "ba_ce", "gkd", "bfd"}
        t = out.terms
        assert out.loss.item() == pytest.approx(
            t["pb_bce"] + 5 * t["ba_t"] + 4 * t["bfd"] + t["gkd"] + t["ba_ce"], rel=1e-5
        )
        grads = torch.autograd.grad(out.loss, [emb, method.residual.weight], retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads)
    with pytest.raises(RuntimeError, match="prepare"):
        BARM().loss(StepBatch(logits, [], labels, [3], old_logits, [], emb, old_emb))


# --- one short real step each ----------------------------------------------------------------------


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _ProbeEWF(EWF):
    def finish(self, ctx):
        self.before_fusion = _state(ctx.model.network)
        super().finish(ctx)


class _ProbeBARM(BARM):
    def finish(self, ctx):
        self.before_fold = _state(ctx.model.network)
        self.residual_state = _state(self.residual)
        super().finish(ctx)


@pytest.mark.parametrize(
    "method, terms",
    [
        ("ewf", {"uce", "ukd"}),
        ("nest", {"uce", "ukd"}),
        ("barm", {"pb_bce", "ba_t", "ba_ce", "gkd", "bfd"}),
    ],
)
def test_a_short_step(base_file, few_pairs, tiny, tmp_path, method, terms):
    before = _digest(base_file)
    prior = load_model(base_file)
    prior_state = _state(prior.network)
    made = []
    probes = {"ewf": _ProbeEWF, "barm": _ProbeBARM, "nest": NeST}
    name = f"test-probe-{method}"
    register(name)(lambda: made.append(probes[method](name=name)) or made[-1])
    events = []
    out = tmp_path / "step.cinuseg.pt"
    try:
        model = drain(
            train_step(prior, few_pairs[1], ["Other"], tiny.replace(iterations=3), method=name, out=out), events.append
        )
    finally:
        _REGISTRY.pop(name)
    progress = [e for e in events if isinstance(e, Progress)]
    assert len(progress) == 3 and all(math.isfinite(e.loss) for e in progress)
    assert set(progress[-1].terms) == terms
    assert model.network.num_classes == 4 and [s.method for s in model.steps] == ["base", name]
    # the prior, in memory and on disk, is untouched; the file holds the network only
    assert _digest(base_file) == before
    assert all(torch.equal(v, prior_state[k]) for k, v in prior.network.state_dict().items())
    saved = load_model(out).network.state_dict()
    assert sorted(saved) == sorted(model.network.state_dict())
    final = model.network.state_dict()
    m = made[0]
    if method == "ewf":
        a = math.sqrt(1 / 4)
        pre = m.before_fusion
        torch.testing.assert_close(
            final["encoder.layer1.0.conv1.weight"],
            (1 - a) * prior_state["encoder.layer1.0.conv1.weight"] + a * pre["encoder.layer1.0.conv1.weight"],
        )
        torch.testing.assert_close(final["classifier.weight"][3], pre["classifier.weight"][3])
    elif method == "barm":
        pre, res = m.before_fold, m.residual_state
        torch.testing.assert_close(final["classifier.weight"][0], pre["classifier.weight"][0] + res["weight"][0])
        torch.testing.assert_close(final["classifier.bias"][0], pre["classifier.bias"][0] + res["bias"][0])
        torch.testing.assert_close(final["classifier.weight"][1:], pre["classifier.weight"][1:])
    else:
        assert 0 < len(m.pretune_losses) <= 5 * len(few_pairs[1])
    for k, v in saved.items():
        torch.testing.assert_close(v, final[k])
