"""Base step and incremental step on real CoNSeP patches, tiny model, CPU."""

import hashlib
import math
import threading

import numpy as np
import pytest
import torch

from napari_cinuseg import drain, load_model, train_base, train_step
from napari_cinuseg.model.file import ModelFileError
from napari_cinuseg.runtime.events import Cancelled, Progress, Saved, StepFinished, StepStarted


def _losses(job):
    events = []
    model = drain(job, events.append)
    return model, events, [e.loss for e in events if isinstance(e, Progress)]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_base_step_learns_and_saves(few_pairs, tiny, tmp_path):
    out = tmp_path / "base.cinuseg.pt"
    model, events, losses = _losses(
        train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=15), out=out)
    )
    assert isinstance(events[0], StepStarted) and events[0].total_iterations == 15
    assert isinstance(events[-2], Saved) and isinstance(events[-1], StepFinished)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # the loss goes down
    assert model.class_names == ["Epithelial", "Spindle-shaped"]
    assert [c.step for c in model.classes] == [0, 0]
    assert model.steps[0].results["iterations"] == 15
    loaded = load_model(out)
    assert loaded.id == model.id
    for k, v in model.network.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.cinuseg.pt"]  # no temporary file left


def test_incremental_step_learns_new_class_and_keeps_prior(base_file, few_pairs, tiny, tmp_path):
    before = _digest(base_file)
    prior = load_model(base_file)
    prior_state = {k: v.clone() for k, v in prior.network.state_dict().items()}
    out = tmp_path / "step1.cinuseg.pt"
    # The barely trained prior is never confident: τ = 0.3 lets its pseudo-labels (and so CAC)
    # take part; lr 0.01 makes 15 iterations enough to see the step's BCE fall. Crops fall
    # anywhere (painted_crops=0): these pairs are labelled everywhere, and the curves compare.
    settings = tiny.replace(iterations=15, lr_step=0.01, tau=0.3, painted_crops=0.0)
    model, events, _ = _losses(train_step(prior, few_pairs[1], ["Other"], settings, out=out))
    progress = [e for e in events if isinstance(e, Progress)]
    ns = [e.terms["ns"] for e in progress]
    assert np.mean(ns[-3:]) < np.mean(ns[:3])  # the loss on the step's pseudo-labels goes down
    # old-class anchors are aligned: 0 while the new model still equals the prior, then > 0
    assert progress[0].terms["cac"] < 1e-6 and all(e.terms["cac"] > 0 for e in progress[1:])
    assert {"cac", "pkd", "fgl", "bgl", "ns"} <= set(progress[-1].terms)
    assert len(progress[-1].crops) == 4 and all(c.t_o >= 1 >= c.t_n for c in progress[-1].crops)
    assert model.class_names == ["Epithelial", "Spindle-shaped", "Other"]
    assert [c.step for c in model.classes] == [0, 0, 1]
    assert model.lineage == [prior.id] and model.network.num_classes == 4
    assert [s.method for s in model.steps] == ["base", "cinuseg"]
    # the prior, in memory and on disk, is untouched
    assert _digest(base_file) == before
    assert prior.network.num_classes == 3
    for k, v in prior.network.state_dict().items():
        assert torch.equal(v, prior_state[k]), k
    reloaded = load_model(out)
    assert reloaded.class_names == model.class_names and reloaded.steps[1].method == "cinuseg"
    # the record holds every setting of the method's own, as it trained; the base step none
    recorded = reloaded.steps[1].settings["method_settings"]
    assert recorded["tau"] == 0.3 and recorded["omega"] == 0.1 and recorded["unpainted"] == "prior"
    assert reloaded.steps[0].settings["method_settings"] == {}
    # the step's record holds the forgetting report and each loss term's curve
    results = reloaded.steps[1].results
    report = results["forgetting"]
    assert set(report["agreement"]) == {"Epithelial", "Spindle-shaped"}
    # the report is the agreement of prior and new model on the step's images, computed again here
    from napari_cinuseg.analysis.forgetting import old_class_agreement

    again = old_class_agreement(prior, reloaded, few_pairs[1])["agreement"]
    assert report["agreement"] == pytest.approx(again, abs=0.02) and any(v is not None for v in again.values())
    assert report["images"] == len(few_pairs[1])
    assert 0 <= results["att_fired_share"] <= 1  # how often ATT fired over the step's crops
    curve = results["loss_curve"]
    assert curve["iteration"][-1] == 15 and {"loss", "cac", "pkd", "fgl", "bgl", "ns"} <= set(curve)
    assert all(len(v) == len(curve["iteration"]) for v in curve.values())


def test_step_refuses_to_write_over_prior(base_file, few_pairs, tiny):
    before = _digest(base_file)
    with pytest.raises(ModelFileError, match="prior"):
        drain(train_step(load_model(base_file), few_pairs[1], ["Other"], tiny, out=base_file))
    assert _digest(base_file) == before


def test_cancel_leaves_no_file_and_prior_unchanged(base_file, few_pairs, tiny, tmp_path):
    before = _digest(base_file)
    out = tmp_path / "cancelled.cinuseg.pt"
    cancel = threading.Event()
    events = []

    def on_event(ev):
        events.append(ev)
        if isinstance(ev, Progress) and ev.iteration == 2:
            cancel.set()

    result = drain(
        train_step(base_file, few_pairs[1], ["Other"], tiny.replace(iterations=50), out=out, cancel=cancel), on_event
    )
    assert result is None
    assert isinstance(events[-1], Cancelled) and events[-1].iteration == 2
    assert list(tmp_path.iterdir()) == []
    assert _digest(base_file) == before


def test_closing_the_generator_cancels(few_pairs, tiny, tmp_path):
    out = tmp_path / "closed.cinuseg.pt"
    job = train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=50), out=out)
    for ev in job:
        if isinstance(ev, Progress):
            break
    job.close()
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_model_on_cpu(few_pairs, tiny):
    a = drain(train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=3)))
    b = drain(train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=3)))
    c = drain(train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=3, seed=1)))
    sa, sb, sc = (m.network.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("method", ["finetune", "cinuseg-baseline", "cinuseg+acl", "cinuseg+drr", "cinuseg+acl+drr"])
def test_every_method_runs_a_step(base_file, few_pairs, tiny, method):
    model = drain(train_step(base_file, few_pairs[1], ["Other"], tiny.replace(iterations=2), method=method))
    assert model.steps[-1].method == method and model.network.num_classes == 4


def test_bad_training_input_is_refused_clearly(base_file, few_pairs, tiny):
    pair = few_pairs[1][0]
    nothing_painted = [pair._replace(target=np.zeros_like(pair.target))]
    with pytest.raises(ValueError, match="no pixel is painted"):
        drain(train_step(base_file, nothing_painted, ["Other"], tiny))
    with pytest.raises(ValueError, match="already knows"):  # one new class named twice
        drain(train_step(base_file, few_pairs[0], ["Other", "other"], tiny))
    with pytest.raises(ValueError, match="needs a name"):
        drain(train_step(base_file, few_pairs[1], ["  "], tiny))
    wrong = [pair._replace(target=pair.target[:10])]
    with pytest.raises(ValueError, match="annotation of"):
        drain(train_step(base_file, wrong, ["Other"], tiny))
    with pytest.raises(ValueError, match="unknown method"):
        drain(train_step(base_file, few_pairs[1], ["Other"], tiny, method="nope"))


def test_a_prior_can_be_reused_for_several_steps(base_file, few_pairs, tiny):
    """Training against a prior must not freeze it: a second child of it still learns everywhere."""
    prior = load_model(base_file)
    drain(train_step(prior, few_pairs[1], ["Other"], tiny.replace(iterations=1)))
    assert all(p.requires_grad for p in prior.network.parameters())
    second = drain(train_step(prior, few_pairs[1], ["Other"], tiny.replace(iterations=2, lr_step=0.05)))
    before = prior.network.encoder.layer1[0].conv1.weight
    after = second.network.encoder.layer1[0].conv1.weight
    assert not torch.equal(before, after)


def test_seed_sets_the_initial_weights_too(few_pairs, tiny):
    def initial(seed):  # lr 0: the weights stay as initialised
        model = drain(
            train_base(
                few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=1, lr_base=0.0, seed=seed)
            )
        )
        return model.network.classifier.weight

    assert torch.equal(initial(3), initial(3))
    assert not torch.equal(initial(3), initial(4))


def test_incremental_step_keeps_batchnorm_statistics(base_file, few_pairs, tiny):
    prior = load_model(base_file)
    one_image = few_pairs[1][:1]  # the plugin's usual case: one annotated image, batch of crops from it
    model = drain(train_step(prior, one_image, ["Other"], tiny.replace(iterations=2)))
    bn, prior_bn = model.network.encoder.layer2[0].bn1, prior.network.encoder.layer2[0].bn1
    assert torch.equal(bn.running_mean, prior_bn.running_mean)
    assert model.steps[-1].settings["freeze_bn"] is True
    thawed = drain(train_step(prior, one_image, ["Other"], tiny.replace(iterations=2, freeze_bn=False)))
    assert not torch.equal(thawed.network.encoder.layer2[0].bn1.running_mean, prior_bn.running_mean)


def test_few_images_still_train_min_iterations(few_pairs, tiny):
    from napari_cinuseg.runtime.events import StepStarted as Started

    job = train_base(
        few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=None, epochs=2, min_iterations=7)
    )
    first = next(job)
    job.close()
    assert isinstance(first, Started) and first.total_iterations == 7  # 2 epochs of 1 batch would be 2


def test_a_methods_extra_parameters_are_trained_and_not_saved(base_file, few_pairs, tiny, tmp_path):
    """The ``extra_parameters`` hook: a training-only head built in ``prepare`` learns with the
    model, and the saved model holds only the network."""
    from napari_cinuseg.losses import LossOutput
    from napari_cinuseg.methods import _REGISTRY, Method, register

    class WithHead(Method):
        name, uses_prior = "test-with-head", False

        def prepare(self, ctx):
            self.head = torch.nn.Conv2d(ctx.model.network.decoder.out_channels, 4, 1).to(ctx.device)
            self.start = self.head.weight.detach().clone()

        def extra_parameters(self):
            return self.head.parameters()

        def loss(self, b):
            value = self.head(b.embedding).pow(2).mean() + b.logits.float().pow(2).mean()
            return LossOutput(loss=value, terms={})

    made = []
    register("test-with-head")(lambda: made.append(WithHead()) or made[-1])
    try:
        out = tmp_path / "step.cinuseg.pt"
        model = drain(
            train_step(load_model(base_file), few_pairs[1], ["Other"], tiny, method="test-with-head", out=out)
        )
    finally:
        _REGISTRY.pop("test-with-head")
    assert not torch.equal(made[0].head.weight.detach(), made[0].start)  # the head learned
    assert sorted(load_model(out).network.state_dict()) == sorted(model.network.state_dict())


def test_a_methods_hooks_see_the_share_of_the_steps_pixels_that_is_labelled(base_file, few_pairs, tiny):
    """StepContext.labelled_share: 1 for images labelled in full, the painted share otherwise."""
    from napari_cinuseg.datasets.labelled import IGNORE, TrainingPair
    from napari_cinuseg.losses import LossOutput
    from napari_cinuseg.methods import _REGISTRY, Method, register

    seen = []

    class Probe(Method):
        name, uses_prior = "test-probe", False

        def prepare(self, ctx):
            seen.append(ctx.labelled_share)

        def loss(self, b):
            return LossOutput(loss=b.logits.float().pow(2).mean(), terms={})

    pairs = few_pairs[1]
    painted = []
    for p in pairs:
        target = p.target.copy()
        target[: target.shape[0] // 2] = IGNORE  # the top half unpainted
        painted.append(TrainingPair(p.image, target, p.name))

    def share(data):
        return sum(int((p.target != IGNORE).sum()) for p in data) / sum(p.target.size for p in data)

    register("test-probe")(Probe)
    try:
        for data in (pairs, painted):
            drain(train_step(load_model(base_file), data, ["Other"], tiny.replace(iterations=1), method="test-probe"))
    finally:
        _REGISTRY.pop("test-probe")
    assert seen == pytest.approx([share(pairs), share(painted)])
    assert seen[0] > 0.9 and seen[1] < 0.6  # labelled in full / painted


def test_new_classifier_rows_are_clipped_on_their_own_then_scaled():
    """clip_gradient clips the new rows' gradient to the limit by itself, then multiplies it by
    the factor; the rest is clipped to the limit; the returned norm counts both."""
    from napari_cinuseg.training.loop import clip_gradient

    clf = torch.nn.Conv2d(4, 3, 1)
    other = torch.nn.Parameter(torch.zeros(5))
    clf.weight.grad = torch.zeros_like(clf.weight)
    clf.bias.grad = torch.zeros_like(clf.bias)
    clf.weight.grad[2] = 30.0  # the new row: norm 60 over 4 weights
    clf.bias.grad[2] = 0.0
    clf.weight.grad[0] = 0.3  # an old row
    other.grad = torch.full((5,), 4.0)
    norm = clip_gradient([clf.weight, clf.bias, other], clf, [2], limit=1.0, factor=10.0)
    assert norm == pytest.approx(math.sqrt(60.0**2 + 0.6**2 + 80.0), rel=1e-4)
    new = torch.linalg.vector_norm(torch.cat([clf.weight.grad[2].flatten(), clf.bias.grad[2:3]]))
    assert float(new) == pytest.approx(10.0, rel=1e-4)  # clipped to 1, then × 10
    rest = torch.linalg.vector_norm(torch.cat([clf.weight.grad[:2].flatten(), other.grad]))
    assert float(rest) == pytest.approx(1.0, rel=1e-4)
    # a non-finite new row makes the norm non-finite, so the step is skipped
    clf.weight.grad[2] = float("inf")
    assert not math.isfinite(clip_gradient([clf.weight, clf.bias, other], clf, [2], 1.0, 10.0))


def test_a_refining_step_teaches_classes_the_prior_has_and_adds_none(base_file, few_pairs, tiny):
    """More paint of a kept class, and a correction of another, in one step without a new class:
    the model keeps its classes, records what was refined, and a method that takes no old-class
    paint refuses it with what to do."""
    prior = load_model(base_file)
    pairs = few_pairs[0][:2]  # targets 0, 1 Epithelial, 2 Spindle-shaped
    model = drain(train_step(prior, pairs, ["spindle-shaped", "Epithelial"], tiny.replace(iterations=2)))
    assert model.class_names == prior.class_names and model.num_channels == prior.num_channels
    assert model.steps[-1].new_classes == [] and model.steps[-1].data["refined_classes"] == [
        "Spindle-shaped",
        "Epithelial",
    ]
    assert model.lineage[-1] == prior.id
    with pytest.raises(ValueError, match="mib learns new classes only, and the prior already has Epithelial"):
        drain(train_step(prior, pairs, ["Epithelial", "Other"], tiny.replace(iterations=1), method="mib"))
    grown = drain(train_step(prior, pairs, ["Epithelial", "Other"], tiny.replace(iterations=2)))
    assert grown.class_names == [*prior.class_names, "Other"]
    assert grown.steps[-1].new_classes == ["Other"] and grown.steps[-1].data["refined_classes"] == ["Epithelial"]
