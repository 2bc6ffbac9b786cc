"""The ``cinuseg`` command end to end on real CoNSeP patches (a few iterations)."""

import json

from napari_cinuseg.cli import main


def test_train_base_step_info_evaluate(shared_data, tmp_path, capsys):
    data = str(shared_data / "consep")
    common = ["--data", data, "--iterations", "2", "--batch-size", "2", "--crop-size", "64", "--device", "cpu"]
    base, step = tmp_path / "base.cinuseg.pt", tmp_path / "step1.cinuseg.pt"
    assert main(["train-base", *common, "--classes", "Epithelial,Spindle-shaped", "--out", str(base)]) == 0
    assert main(["step", *common, "--prior", str(base), "--new-class", "Other", "--out", str(step)]) == 0
    assert main(["info", str(step), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in record["classes"]] == ["Epithelial", "Spindle-shaped", "Other"]
    assert [s["method"] for s in record["steps"]] == ["base", "cinuseg"]
    assert main(["evaluate", "--model", str(step), "--data", data, "--json", "--val-fraction", "0.05"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["dice"]) == {"Epithelial", "Spindle-shaped", "Other"}
    assert result["images"] > 0


def test_errors_are_messages_not_tracebacks(shared_data, tmp_path, capsys):
    missing = tmp_path / "nope.cinuseg.pt"
    assert main(["info", str(missing)]) == 2
    assert "no model file" in capsys.readouterr().err
    assert main(["train-base", "--data", str(tmp_path), "--out", str(tmp_path / "m.cinuseg.pt")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["train-base", "--data", str(shared_data / "consep"), "--classes", "Neutrophil", "--out", str(tmp_path / "m.pt")]) == 2
    assert "unknown class 'Neutrophil'" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
