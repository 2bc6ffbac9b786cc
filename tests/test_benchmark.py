"""The benchmark job end to end on a few real CoNSeP patches, one iteration per step."""

import json

import pytest

from napari_cinuseg.benchmark.report import across_seeds, offline_ratio, write_seed_table, write_table
from napari_cinuseg.benchmark.run import BenchmarkConfig, run_benchmark
from napari_cinuseg.benchmark.split import benchmark_split
from napari_cinuseg.datasets.labelled import LabelledSet
from napari_cinuseg.runtime.events import StepEvaluated, StepPlanned, drain


@pytest.fixture(scope="module")
def small(consep):
    def pick(sources, per_source=4):
        items = []
        for s in sources:
            items += [it for it in consep.items if it.source == s][:per_source]
        return LabelledSet(consep.class_names, items)

    return pick(["train_1", "train_2", "train_3"]), pick(["train_8"], 3)


def _config(small, out, tiny, methods=("cinuseg", "finetune", "offline"), **kw):
    train, test = small
    return BenchmarkConfig(
        dataset="consep",
        train=train,
        test=test,
        protocols=["1-1"],
        methods=list(methods),
        settings=tiny.replace(iterations=1, batch_size=2),
        out=out,
        **kw,
    )


def test_benchmark_writes_results_and_resumes(small, tiny, tmp_path):
    events = []
    split = benchmark_split(small[0], test_data=small[1])
    results = drain(run_benchmark(_config(small, tmp_path, tiny, split=split.record())), events.append)
    planned = [e for e in events if isinstance(e, StepPlanned)]
    # base once, two steps for each of the two incremental methods, offline once
    assert [(e.method, e.step) for e in planned] == [
        ("base", 0),
        ("cinuseg", 1),
        ("cinuseg", 2),
        ("finetune", 1),
        ("finetune", 2),
        ("offline", 0),
    ]
    assert not any(e.cached for e in planned)
    summary = results["summary"]["1-1"]
    assert set(summary) == {"cinuseg", "finetune", "offline"}
    for s in summary.values():
        assert 0 <= s["mean"] <= 100 or s["mean"] != s["mean"]
    curve = results["curves"]["1-1"]["cinuseg"]
    assert len(curve) == 3
    table = (tmp_path / "table.md").read_text()
    assert "| cinuseg |" in table and table.index("| offline |") > table.index("| cinuseg |")
    assert (tmp_path / "curve-1-1.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["split"]["name"] == "test-data"
    assert all(len(e["per_image"]) == 3 for e in saved["evaluations"].values())  # the test images, for bootstrap.py
    assert saved["config"]["split"]["sources"] == {"train": ["train_1", "train_2", "train_3"], "test": ["train_8"]}
    pixels = saved["config"]["split"]["class_pixels"]["test"]
    assert f"Split: test-data; pixels of each class scored: Epithelial {pixels['Epithelial']:,}," in table
    assert saved["summary"]["1-1"]["cinuseg"]["mean"] == pytest.approx(summary["cinuseg"]["mean"], nan_ok=True)

    # a second run finds every model and evaluation and redoes nothing
    events2 = []
    drain(run_benchmark(_config(small, tmp_path, tiny)), events2.append)
    assert all(e.cached for e in events2 if isinstance(e, (StepPlanned, StepEvaluated)))
    assert not any(type(e).__name__ == "Progress" for e in events2)


def test_table_gives_cinuseg_over_offline_beside_the_paper(tmp_path):
    results = {
        "config": {"dataset": "consep"},
        "summary": {
            "1-1": {
                "cinuseg": {"old": 60.0, "new": 30.0, "mean": 40.0},
                "offline": {"old": 70.0, "new": 60.0, "mean": 64.0},
            },
            "2-1": {"cinuseg": {"old": 60.0, "new": 30.0, "mean": 50.0}},  # no offline: no ratio
        },
    }
    assert offline_ratio(results["summary"]["1-1"]) == pytest.approx(0.625)
    assert offline_ratio(results["summary"]["2-1"]) is None
    assert offline_ratio({"cinuseg": {"mean": float("nan")}, "offline": {"mean": 50.0}}) is None
    write_table(results, tmp_path / "table.md")
    table = (tmp_path / "table.md").read_text()
    assert "- 1-1: CiNuSeg's Mean / offline's = 0.625 (the paper's: 0.971)" in table
    assert "2-1: CiNuSeg" not in table


def test_interrupted_benchmark_resumes_without_redoing(small, tiny, tmp_path):
    job = run_benchmark(_config(small, tmp_path, tiny, methods=("cinuseg",)))
    for ev in job:
        if isinstance(ev, StepPlanned) and ev.method == "cinuseg" and ev.step == 2:
            break  # interrupted while the last step starts
    job.close()
    assert not (tmp_path / "models/seed0/1-1/cinuseg/step2.cinuseg.pt").exists()
    events = []
    drain(run_benchmark(_config(small, tmp_path, tiny, methods=("cinuseg",))), events.append)
    planned = [(e.step, e.cached) for e in events if isinstance(e, StepPlanned)]
    assert planned == [(0, True), (1, True), (2, False)]


def test_a_test_set_that_holds_training_images_is_said_and_recorded(small, tiny, tmp_path):
    train, _ = small
    leaky = LabelledSet(train.class_names, train.items[:2])  # two of the training images, scored
    with pytest.warns(UserWarning, match=r"1-1/base/step0: 2 of the 2 images scored have the names of images this"):
        drain(run_benchmark(_config((train, leaky), tmp_path, tiny, methods=("finetune",))))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {e["trained_on"] for e in saved["evaluations"].values()} == {2}


def test_cached_models_of_another_configuration_are_refused(small, tiny, tmp_path):
    drain(run_benchmark(_config(small, tmp_path, tiny, methods=("finetune",), steps_only=True)))
    other = _config(small, tmp_path, tiny, methods=("finetune",), steps_only=True)
    other.settings = other.settings.replace(lr_step=0.5)
    with pytest.raises(ValueError, match="another configuration"):
        drain(run_benchmark(other))
    # a base model trained again: the step models of the old one are not reused silently
    (tmp_path / "models/seed0/1-1/base.cinuseg.pt").unlink()
    with pytest.raises(ValueError, match="prior model"):
        drain(run_benchmark(_config(small, tmp_path, tiny, methods=("finetune",), steps_only=True)))
    # other training images: refused too
    train, test = small
    fewer = type(train)(train.class_names, train.items[:-2])
    with pytest.raises(ValueError, match="data"):
        drain(run_benchmark(_config((fewer, test), tmp_path, tiny, methods=("finetune",), steps_only=True)))


def test_a_cached_step_is_reused_only_with_the_same_learning_settings():
    """A record without a setting (made before it existed) or with another value is not this
    run's step; the run-only settings (device, seed of nothing learned, …) do not matter."""
    from napari_cinuseg.benchmark.run import _same_learning_settings
    from napari_cinuseg.methods import get_method, settings_of
    from napari_cinuseg.model.segmenter import StepRecord
    from napari_cinuseg.training.settings import TrainSettings

    now = TrainSettings(method_settings=settings_of(get_method("cinuseg")))

    def record(settings):
        return StepRecord(step=1, method="cinuseg", new_classes=["x"], settings=settings, data={}, results={})

    assert _same_learning_settings(record(now.to_dict()), now)
    assert _same_learning_settings(record(now.replace(device="cpu").to_dict()), now)
    older = now.to_dict()
    older["method_settings"] = {k: v for k, v in older["method_settings"].items() if k != "uncertain_old"}
    assert not _same_learning_settings(record(older), now)
    assert not _same_learning_settings(record(now.replace(lr_step=0.5).to_dict()), now)


def _load_snapshot_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_snapshot.py"
    spec = importlib.util.spec_from_file_location("benchmark_snapshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _part(methods, dice_by_method, settings=None):
    """A results.json of protocol 2-1 (A, B then C) where each listed method finished step 1."""
    evaluations = {"2-1/base/step0": {"dice": {"A": 70.0, "B": 50.0}}}
    train = {"models/seed0/2-1/base.cinuseg.pt": 10.0}
    for m, dice in dice_by_method.items():
        evaluations[f"2-1/{m}/step1"] = {"dice": dice}
        train[f"models/seed0/2-1/{m}/step1.cinuseg.pt"] = 5.0
    config = {
        "command": "cinuseg benchmark --methods " + ",".join(methods),
        "dataset": "consep",
        "methods": methods,
        "protocols": {"2-1": [["A", "B"], ["C"]]},
        "settings": settings or {"tau": 0.7},
        "test": "split",
        "test_images": 8,
        "test_sources": 2,
        "train_sources": 6,
    }
    return {
        "config": config,
        "evaluations": evaluations,
        "train_seconds": train,
        "curves": {"2-1": {m: [1.0] for m in dice_by_method}},
        "summary": {"2-1": {}},
    }


def test_snapshot_merges_parts_of_one_run_and_refuses_other_runs():
    script = _load_snapshot_script()
    first = _part(["cinuseg", "mib"], {"cinuseg": {"A": 60.0, "B": 40.0, "C": 30.0}})
    # the copy re-evaluated cinuseg too (cached), and finished nest; mib finished nowhere
    second = _part(
        ["cinuseg", "nest"], {"cinuseg": {"A": 1.0, "B": 1.0, "C": 1.0}, "nest": {"A": 50.0, "B": 20.0, "C": 80.0}}
    )
    del second["curves"]["2-1"]["nest"]  # killed before the run wrote its curves
    merged = script.merge(first, second)
    summary = merged["summary"]["2-1"]
    assert set(summary) == {"cinuseg", "nest"}
    assert summary["cinuseg"]["per_class"]["A"] == 60.0  # the first part's figures are kept
    assert summary["nest"]["old"] == pytest.approx(35.0) and summary["nest"]["new"] == pytest.approx(80.0)
    assert "2-1/nest/step1" in merged["evaluations"] and "2-1/mib/step1" not in merged["evaluations"]
    assert "models/seed0/2-1/nest/step1.cinuseg.pt" in merged["train_seconds"]
    assert merged["curves"]["2-1"]["nest"] == pytest.approx([60.0, 50.0])  # from its evaluations
    assert merged["config"]["methods"] == ["cinuseg", "mib", "nest"]
    assert len(merged["config"]["commands"]) == 2

    unwritten = _part(["nest"], {"nest": {"A": 50.0, "B": 20.0, "C": 80.0}})
    unwritten["summary"] = {}  # stopped before it wrote any summary: its finished steps still count
    assert script.snapshot(unwritten)["summary"]["2-1"]["nest"]["new"] == pytest.approx(80.0)

    halfway = _part(["plop"], {"plop": {"A": 60.0, "B": 40.0}})
    halfway["config"]["protocols"] = {"2-1": [["A"], ["B"], ["C"]]}  # two steps: plop reached only the first
    halfway["evaluations"]["2-1/base/step0"] = {"dice": {"A": 70.0}}
    assert "plop" not in script.snapshot(halfway)["summary"].get("2-1", {})

    third = _part(["barm"], {"barm": {"A": 40.0, "B": 40.0, "C": 40.0}})
    assert script.merge(first, second, third)["config"]["methods"] == ["cinuseg", "mib", "nest", "barm"]

    other_run = _part(["nest"], {"nest": {"A": 1.0, "B": 1.0, "C": 1.0}}, settings={"tau": 0.5})
    with pytest.raises(SystemExit, match="settings"):
        script.merge(first, other_run)
    # a method's own settings may differ between parts (CiNuSeg at another σ); each method's are kept
    own = {"tau": 0.7, "method_settings": {"sigma": 0.0}}
    sigma0 = _part(["cinuseg"], {"cinuseg": {"A": 65.0, "B": 45.0, "C": 35.0}}, settings=own)
    merged = script.merge(sigma0, second)
    assert merged["summary"]["2-1"]["cinuseg"]["per_class"]["A"] == 65.0
    assert merged["config"]["method_settings_by_method"] == {"cinuseg": {"sigma": 0.0}, "nest": {}}
    assert "method_settings_by_method" not in script.merge(first, second)["config"]
    with pytest.raises(SystemExit, match="settings"):
        script.merge(sigma0, _part(["nest"], {"nest": {"A": 1.0, "B": 1.0, "C": 1.0}}, settings={**own, "tau": 0.5}))
    retrained = _part(["nest"], {"nest": {"A": 1.0, "B": 1.0, "C": 1.0}})
    first["evaluations"]["2-1/base/step0"]["model_id"] = "a"
    retrained["evaluations"]["2-1/base/step0"]["model_id"] = "b"  # trained again, the same figures
    retrained["training_curves"] = {"models/seed0/2-1/base.cinuseg.pt": [{"iteration": 200, "mean": 50.0}]}
    both = script.merge(first, retrained)
    assert "nest" in both["summary"]["2-1"]
    assert both["training_curves"] == retrained["training_curves"]  # a part's base curve is kept
    other_base = _part(["nest"], {"nest": {"A": 1.0, "B": 1.0, "C": 1.0}})
    other_base["evaluations"]["2-1/base/step0"]["dice"]["A"] = 71.0
    with pytest.raises(SystemExit, match="base models differ"):
        script.merge(first, other_base)


def test_base_budget_and_the_curve_of_dice_while_training(small, tiny, tmp_path):
    import torch

    from napari_cinuseg.model.file import load_model
    from napari_cinuseg.runtime.events import CurvePoint

    events = []
    cfg = _config(small, tmp_path / "curve", tiny, methods=("offline",), base_iterations=3, curve_every=2)
    results = drain(run_benchmark(cfg), events.append)
    points = results["training_curves"]["models/seed0/offline-epithelial_other_spindle-shaped.cinuseg.pt"]
    assert [p["iteration"] for p in points] == [2, 3]  # every 2 and the last
    assert [e.iteration for e in events if isinstance(e, CurvePoint)] == [2, 3]
    assert set(points[-1]["dice"]) == {"Epithelial", "Spindle-shaped", "Other"}
    assert (
        points[-1]["dice"] == results["evaluations"]["1-1/offline/step0"]["dice"]
    )  # the last point is the model's score
    assert (tmp_path / "curve" / "training-curve.png").stat().st_size > 1000
    curved = load_model(tmp_path / "curve" / "models" / "seed0" / "offline-epithelial_other_spindle-shaped.cinuseg.pt")
    assert curved.steps[-1].results["iterations"] == 3  # the base budget, not the steps' one iteration

    # scoring while training changes nothing the model learns
    drain(run_benchmark(_config(small, tmp_path / "plain", tiny, methods=("offline",), base_iterations=3)))
    plain = load_model(tmp_path / "plain" / "models" / "seed0" / "offline-epithelial_other_spindle-shaped.cinuseg.pt")
    for (name, a), b in zip(curved.network.state_dict().items(), plain.network.state_dict().values()):
        assert torch.equal(a, b), name


def _seed_run(seed, per_method, settings=None):
    """A results.json of protocol 2-1 (A, B then C) at ``seed``: each method's Dice per class."""
    summary = {}
    for m, (a, b, c) in per_method.items():
        summary[m] = {"old": (a + b) / 2, "new": c, "mean": (a + b + c) / 3, "per_class": {"A": a, "B": b, "C": c}}
    config = {
        "dataset": "consep",
        "protocols": {"2-1": [["A", "B"], ["C"]]},
        "test_image_names": ["x_000"],
        "base_iterations": 100,
        "settings": {"tau": 0.7, **(settings or {}), "seed": seed},
    }
    return {"config": config, "summary": {"2-1": summary}}


def test_runs_at_several_seeds_give_mean_and_sd_and_refuse_other_runs(tmp_path):
    runs = [
        _seed_run(0, {"cinuseg": (60.0, 40.0, 50.0), "offline": (70.0, 50.0, 60.0), "mib": (10.0, 10.0, 10.0)}),
        _seed_run(1, {"cinuseg": (62.0, 44.0, 47.0), "offline": (70.0, 50.0, 60.0)}),  # mib did not finish
        _seed_run(2, {"cinuseg": (58.0, 42.0, 53.0), "offline": (76.0, 44.0, 60.0), "mib": (20.0, 20.0, 20.0)}),
    ]
    seeded = across_seeds(runs)
    assert seeded["seeds"] == [0, 1, 2]
    c = seeded["summary"]["2-1"]["cinuseg"]
    assert c["per_class"]["A"]["mean"] == pytest.approx(60.0) and c["per_class"]["A"]["sd"] == pytest.approx(2.0)
    assert c["new"]["mean"] == pytest.approx(50.0) and c["new"]["sd"] == pytest.approx(3.0)
    assert c["mean"]["n"] == 3
    # the ratio is taken per seed, then averaged: 50/60, 51/60, 51/60
    assert c["offline_ratio"]["mean"] == pytest.approx((50 + 51 + 51) / 3 / 60)
    mib = seeded["summary"]["2-1"]["mib"]
    assert mib["seeds"] == [0, 2] and mib["mean"]["mean"] == pytest.approx(15.0) and mib["mean"]["n"] == 2

    write_seed_table(seeded, tmp_path / "t.md")
    table = (tmp_path / "t.md").read_text()
    # Old per seed 50, 53, 50; Mean 50, 51, 51
    assert "| cinuseg | 51.00 ± 1.73 | 50.00 ± 3.00 | 50.67 ± 0.58 | 60.00 ± 2.00 |" in table
    assert "| mib | 15.00 ± 7.07 |" in table and "| 0, 2 |" in table
    assert table.index("| cinuseg |") < table.index("| mib |") < table.index("| offline |")
    assert "CiNuSeg's Mean / offline's: 0.844 ± 0.010 (the paper's: 0.994)" in table

    with pytest.raises(ValueError, match="same seed"):
        across_seeds([runs[0], runs[0]])
    with pytest.raises(ValueError, match="other settings"):
        across_seeds([runs[0], _seed_run(1, {"cinuseg": (1.0, 1.0, 1.0)}, settings={"tau": 0.5})])
    other_split = _seed_run(1, {"cinuseg": (1.0, 1.0, 1.0)})
    other_split["config"]["test_image_names"] = ["y_000"]
    with pytest.raises(ValueError, match="test_image_names"):
        across_seeds([runs[0], other_split])


def test_snapshot_takes_the_offline_row_from_a_run_with_the_same_offline_model():
    script = _load_snapshot_script()
    one_one = _part(["cinuseg"], {"cinuseg": {"A": 60.0, "B": 40.0, "C": 30.0}})
    one_one["config"]["protocols"] = {"2-1": [["A"], ["B"], ["C"]]}  # 1-1's steps, the same three classes
    one_one["evaluations"]["2-1/base/step0"] = {"dice": {"A": 70.0}}
    two_one = _part(["offline"], {})
    two_one["evaluations"]["2-1/offline/step0"] = {"dice": {"A": 80.0, "B": 60.0, "C": 40.0}}
    two_one["train_seconds"]["models/seed0/offline-a_b_c.cinuseg.pt"] = 99.0
    with_offline = script.offline_from(script.snapshot(one_one), two_one)
    row = with_offline["summary"]["2-1"]["offline"]
    assert row["old"] == pytest.approx(80.0) and row["new"] == pytest.approx(50.0)  # scored as 1-1: Old is A alone
    assert row["mean"] == pytest.approx(60.0)
    assert with_offline["curves"]["2-1"]["offline"] == pytest.approx([60.0] * 3)
    assert with_offline["train_seconds"]["models/seed0/offline-a_b_c.cinuseg.pt"] == 99.0
    assert "offline" in with_offline["config"]["methods"] and "offline" not in one_one["summary"]["2-1"]

    other_seed = dict(two_one, config={**two_one["config"], "settings": {"tau": 0.7, "seed": 1}})
    with pytest.raises(SystemExit, match="other settings"):
        script.offline_from(script.snapshot(one_one), other_seed)
    other_split = dict(two_one, config={**two_one["config"], "test": "another split"})
    with pytest.raises(SystemExit, match="'test'"):
        script.offline_from(script.snapshot(one_one), other_split)
    fewer = dict(two_one, config={**two_one["config"], "protocols": {"2-1": [["A"], ["B"]]}})
    with pytest.raises(SystemExit, match="no offline model of A, B, C"):
        script.offline_from(script.snapshot(one_one), fewer)
