"""A method's own hyper-parameters are fields of its dataclass: set by name, checked, recorded."""

import pytest

from napari_cinuseg.benchmark.run import _configured_methods
from napari_cinuseg.cli.commands import _settings
from napari_cinuseg.cli.parser import build_parser
from napari_cinuseg.methods import all_method_settings, get_method, method_settings, settings_of
from napari_cinuseg.training.settings import TrainSettings, preset


def test_cinuseg_keeps_its_own_settings_with_the_papers_defaults():
    m = get_method("cinuseg")
    # the paper's, except σ on a step labelled in full (0, measured; the paper's 0.7 is sigma=0.7)
    assert (m.tau, m.omega, m.sigma, m.sigma_painted, m.alpha_o, m.alpha_n) == (0.7, 0.1, 0.0, 0.7, 10.0, 0.5)
    changed = get_method("cinuseg+acl+drr", tau=0.4, omega=2.0, pkd_scores="sigmoid")
    assert (changed.tau, changed.omega, changed.pkd_scores, changed.att) == (0.4, 2.0, "sigmoid", False)
    assert settings_of(changed)["tau"] == 0.4 and set(settings_of(changed)) == set(method_settings("cinuseg"))
    assert "tau" not in {f for f in TrainSettings.__dataclass_fields__}


@pytest.mark.parametrize(
    "name, values, words",
    [
        ("mib", {"tau": 0.5}, "mib has no setting tau"),
        ("cinuseg", {"tau": 1.5}, "tau must be in [0, 0.99]"),
        ("cinuseg", {"pkd_scores": "both"}, "pkd_scores must be one of softmax, sigmoid"),
        ("cinuseg", {"adaptive_tau": 1}, "adaptive_tau is true or false"),
    ],
)
def test_a_setting_the_method_lacks_or_out_of_range_is_refused(name, values, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        get_method(name, **values)


def test_training_settings_carry_the_users_method_settings():
    s = preset("cpu", tau=0.3, iterations=5).replace(omega=1.0)
    assert s.method_settings == {"tau": 0.3, "omega": 1.0} and s.iterations == 5
    assert s.to_dict()["method_settings"] == {"tau": 0.3, "omega": 1.0}
    with pytest.raises(ValueError, match="unknown setting"):
        preset("cpu", no_such_thing=1)


def test_the_command_line_makes_an_option_of_each_method_setting():
    args = build_parser(["step"]).parse_args(
        [
            "step",
            "--prior",
            "p.cinuseg.pt",
            "--new-class",
            "X",
            "--out",
            "o.cinuseg.pt",
            "--tau",
            "0.5",
            "--no-adaptive-tau",
            "--iterations",
            "3",
        ]
    )
    s = _settings(args)
    assert s.method_settings == {"tau": 0.5, "adaptive_tau": False} and s.iterations == 3
    assert set(all_method_settings()) >= {
        "tau",
        "omega",
        "sigma",
        "alpha_o",
        "alpha_n",
        "pkd_scores",
        "adaptive_tau",
        "unpainted",
    }


def test_a_benchmark_gives_each_method_only_its_own_settings():
    cinuseg, mib = _configured_methods(["cinuseg", "mib"], {"tau": 0.5})
    assert cinuseg.tau == 0.5 and "tau" not in method_settings(mib)
    with pytest.raises(ValueError, match="no method of this benchmark"):
        _configured_methods(["mib", "plop"], {"tau": 0.5})


def test_cinuseg_takes_sigma_on_a_step_labelled_in_full_and_sigma_painted_on_a_painted_one():
    """ATT's σ follows how the step's images were labelled: ``sigma`` (0) where every pixel is,
    ``sigma_painted`` (the paper's 0.7) where a few nuclei were painted."""
    from types import SimpleNamespace

    import torch

    from napari_cinuseg.methods import StepBatch, StepContext

    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :2, :2] = 3  # 4 new-class pixels
    old_logits = torch.full((1, 3, 8, 8), -5.0)
    old_logits[:, 0] = 3.0
    old_logits[:, 0, 2:6, 2:6], old_logits[:, 1, 2:6, 2:6] = -5.0, 5.0  # 16 pixels the prior is sure are old
    painted = labels.clone()
    painted[0, 4:] = 255  # half the pixels unlabelled

    def ctx(lab):
        share = float((lab != 255).float().mean())  # the training loop counts it over the step's targets
        return StepContext(
            SimpleNamespace(network=None),
            None,
            [3],
            TrainSettings(),
            torch.device("cpu"),
            lambda: iter([(torch.zeros(1, 3, 8, 8), lab)]),
            share,
        )

    def batch(lab):
        feats = [torch.randn(1, 4, 8 // s, 8 // s, generator=g) for s in (1, 2, 4, 8)]
        return StepBatch(
            torch.randn(1, 4, 8, 8, generator=g),
            feats,
            lab,
            [3],
            old_logits,
            [f.clone() for f in feats],
        )

    m = get_method("cinuseg")
    m.prepare(ctx(labels))
    assert m.labelled_share == 1.0 and m.sigma_now == 0.0
    out = m.loss(batch(labels))
    assert float(out.r[0]) == pytest.approx(0.2) and float(out.t_o[0]) == 10.0  # r = 4 / 20 > σ = 0: ATT fires
    m.prepare(ctx(painted))
    assert m.labelled_share == 0.5 and m.sigma_now == 0.7
    out = m.loss(batch(painted))
    assert float(out.r[0]) == pytest.approx(0.2) and float(out.t_o[0]) == 1.0  # r ≤ 0.7: it does not
    assert get_method("cinuseg", sigma=0.7).sigma_now == 0.7  # the paper's reading, by setting


def test_cinuseg_distils_over_every_pixel_as_eq5_writes_it():
    """Eq. 5 averages over every pixel, the new class's too: CiNuSeg's PKD term is the
    distillation over all of them, on a step labelled in full and on a painted one; with
    ``pkd_on_new`` off it leaves out the pixels labelled new (the earlier reading)."""
    from types import SimpleNamespace

    import torch

    from napari_cinuseg.losses import prediction_distillation
    from napari_cinuseg.methods import StepBatch, StepContext

    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :3, :3] = 3  # 9 new-class pixels
    painted = labels.clone()
    painted[0, 4:] = 255
    old_logits = torch.randn(1, 3, 8, 8, generator=g) * 3
    logits = torch.randn(1, 4, 8, 8, generator=g) * 3
    feats = [torch.randn(1, 4, 8 // s, 8 // s, generator=g) for s in (1, 2, 4, 8)]

    def pkd(m, lab):
        share = float((lab != 255).float().mean())
        m.prepare(
            StepContext(
                SimpleNamespace(network=None), None, [3], TrainSettings(), torch.device("cpu"), lambda: iter(()), share
            )
        )
        b = StepBatch(logits, feats, lab, [3], old_logits, [f.clone() for f in feats])
        return m.loss(b).terms["pkd"]

    every = float(prediction_distillation(logits, old_logits, [3])[0])
    not_new = float(prediction_distillation(logits, old_logits, [3], mask=labels != 3)[0])
    assert every != pytest.approx(not_new)
    m = get_method("cinuseg")
    assert m.pkd_on_new is True
    assert pkd(m, labels) == pytest.approx(every)  # labelled in full
    assert pkd(m, painted) == pytest.approx(every) and m.painted  # painted
    earlier = get_method("cinuseg", pkd_on_new=False)
    assert pkd(earlier, labels) == pytest.approx(not_new)
    assert pkd(earlier, painted) == pytest.approx(not_new)
