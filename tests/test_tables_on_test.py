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
