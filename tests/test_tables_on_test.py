"""benchmarks/tables_on_test.py: the test-split matrix it runs, and its refusal of other splits."""

import importlib.util
import json
from pathlib import Path

import pytest

from napari_cinuseg.cli.parser import build_parser


def _script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tables_on_test.py"
    spec = importlib.util.spec_from_file_location("tables_on_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_matrix_is_three_seeds_of_every_method_on_the_test_split(tmp_path):
    script = _script()
    runs = script.commands(tmp_path, [0, 1, 2])
    assert len(runs) == 12  # CoNSeP (2-1 and 1-1 together) and MoNuSAC, 3 seeds, main run + the paper's CiNuSeg
    parsed = [(build_parser(["benchmark"]).parse_args(["benchmark", *argv]), bases) for argv, bases in runs]
    for args, bases in parsed:
        assert args.split == "test" and args.base_iterations == 2400 and args.preset == "cpu"
        if bases is None:
            assert args.methods.split(",") == ["offline", "cinuseg", "mib", "nest", "ewf", "conuseg", "finetune"]
            assert args.sigma is None  # CiNuSeg's defaults
        else:
            assert args.methods == "cinuseg" and args.sigma == 0.7 and args.pkd_on_new and args.pkd_scores == "softmax"
            assert Path(args.out).name == Path(bases).name.replace("-seed", "-paper-seed")
    assert sorted((a.dataset, a.protocol, a.seed) for a, b in parsed if b is None) == [
        (d, p, s) for d, p in (("consep", "2-1,1-1"), ("monusac", "1-1")) for s in (0, 1, 2)
    ]


def test_the_report_refuses_runs_not_scored_on_the_test_split(tmp_path):
    script = _script()
    for dataset in ("consep", "monusac"):
        for paper in (False, True):
            run = script.folder(tmp_path, dataset, 0, paper)
            run.mkdir()
            (run / "results.json").write_text(json.dumps({"config": {"split": {"name": "val"}}}))
    with pytest.raises(SystemExit, match="not scored on the test split"):
        script.main(["report", "--out", str(tmp_path), "--seeds", "0"])


def _fake_run(script, dataset: str, seed: int, methods, shift: dict[str, float], images: int = 6) -> dict:
    """A results.json of one run as the benchmark writes it, with per-image counts whose Dice
    is higher by ``shift[method]`` (a share of the true positives) for each method."""
    protocols = {
        "2-1": [["Epithelial", "Spindle-shaped"], ["Other"]],
        "1-1": [["Epithelial"], ["Spindle-shaped"], ["Other"]],
    }
    if dataset == "monusac":
        protocols = {"1-1": [["Epithelial"], ["Lymphocyte"], ["Neutrophil"], ["Macrophage"]]}
    classes = [c for s in next(iter(protocols.values())) for c in s]
    rng = __import__("numpy").random.default_rng(seed)
    evaluations, summary = {}, {}
    for protocol, steps in protocols.items():
        summary[protocol] = {}
        for m in methods:
            per_image, tp_all, truth_all = {}, dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
            for i in range(images):
                counts = {}
                for c in classes:
                    truth = int(rng.integers(500, 1000))
                    tp = int(truth * min(0.95, 0.5 + shift[m] + rng.uniform(-0.05, 0.05)))
                    counts[c] = [tp, truth, truth]
                    tp_all[c] += tp
                    truth_all[c] += truth
                per_image[f"img{i}"] = counts
            dice = {c: 100 * tp_all[c] / truth_all[c] for c in classes}
            step = 0 if m == "offline" else len(steps) - 1
            evaluations[f"{protocol}/{m}/step{step}"] = {"dice": dice, "per_image": per_image}
            summary[protocol][m] = {"old": 0.0, "new": 0.0, "mean": sum(dice.values()) / len(dice), "per_class": dice}
    split = {
        "name": "test",
        "seed": 0,
        "sources": {"train": ["a", "b"], "tune": ["c"], "test": ["d", "e"]},
        "class_pixels": {"test": dict.fromkeys(classes, 1000)},
    }
    settings = {
        "seed": seed, "iterations": None, "epochs": 25, "min_iterations": 400, "encoder": "resnet18",
        "encoder_weights": None, "crop_size": 128, "batch_size": 8, "lr_base": 0.01, "lr_step": 0.001, "grad_clip": 1.0,
    }  # fmt: skip
    config = {"dataset": dataset, "protocols": protocols, "split": split, "settings": settings, "base_iterations": 2400}
    return {
        "config": {**config, "test": "test split", "methods": list(methods)},
        "evaluations": evaluations,
        "summary": summary,
    }


def test_an_interim_report_tells_which_seeds_it_stands_on_and_what_the_data_tells_apart(tmp_path):
    script = _script()
    shift = {"offline": 0.3, "cinuseg": 0.1, "mib": 0.2, "nest": 0.1, "ewf": 0.0, "conuseg": 0.1, "finetune": -0.3}
    for dataset in ("consep", "monusac"):
        for seed in (0, 1):
            for paper in (False, True):
                methods = ["cinuseg"] if paper else list(script.METHODS)
                run = _fake_run(script, dataset, seed, methods, {**shift, "cinuseg": 0.05 if paper else 0.1})
                if seed == 1 and not paper:  # at seed 1 mib has not finished MoNuSAC, finetune CoNSeP 1-1
                    del run["evaluations"]["1-1/mib/step3" if dataset == "monusac" else "1-1/finetune/step2"]
                folder = script.folder(tmp_path, dataset, seed, paper)
                folder.mkdir()
                (folder / "results.json").write_text(json.dumps(run))
    result = script.main(["report", "--out", str(tmp_path), "--finished", "--resamples", "200"])
    assert result["protocols"]["CoNSeP 2-1"]["seeds"] == [0, 1]  # each protocol on its own
    assert result["protocols"]["CoNSeP 1-1"]["seeds"] == [0]
    assert result["protocols"]["MoNuSAC 1-1"]["seeds"] == [0]  # seed 1 unfinished: left out
    text = (tmp_path / "report.md").read_text()
    assert "interim: 2 of the 3 seeds" in text and "interim: 1 of the 3 seeds" in text
    assert not (tmp_path / "consep-seeds.md").exists()  # a table of every seed only once every seed is done
    rows = result["protocols"]["CoNSeP 1-1"]["methods"]
    assert rows["mib"]["difference"] > 5 and rows["mib"]["difference_low"] > 0  # told apart
    assert rows["finetune"]["difference"] < -20 and rows["finetune"]["difference_high"] < 0
    assert "≥ every incremental method: **no**; above it: mib +" in text and "(told apart)" in text
    assert "/ offline = " in text and "below 0.9" in text
    assert "| CiNuSeg (the paper's settings) |" in text
    with pytest.raises(
        ValueError, match="no evaluation 1-1/finetune/step2"
    ):  # without --finished: every seed asked for
        script.main(["report", "--out", str(tmp_path), "--seeds", "0,1", "--resamples", "50"])
