"""The benchmark's splits on the real data: the validation split every default was chosen on,
and train / tune / test, whose test part no choice has looked at."""

import pytest

from napari_cinuseg.benchmark.split import benchmark_split
from napari_cinuseg.cli.entry import main
from napari_cinuseg.datasets.labelled import read_monusac_images
from napari_cinuseg.datasets.splits import class_pixels, split_by_source


@pytest.fixture(scope="module")
def monusac(shared_data):
    return read_monusac_images(shared_data / "monusac")


@pytest.mark.parametrize("name", ["consep", "monusac"])
def test_the_test_split_holds_every_class_and_no_source_a_choice_was_measured_on(name, consep, monusac):
    data = consep if name == "consep" else monusac
    _, val = split_by_source(data, 0.2, 0, balanced=True)  # where the defaults were chosen
    test = benchmark_split(data, "test")
    parts = {k: set(p.sources) for k, p in test.parts.items()}
    assert list(parts) == ["train", "tune", "test"]
    assert not (parts["train"] & parts["tune"] or parts["train"] & parts["test"] or parts["tune"] & parts["test"])
    assert set().union(*parts.values()) == set(data.sources)
    assert parts["tune"] == set(val.sources) and not parts["test"] & set(val.sources)
    assert test.scored is test.parts["test"] and test.train is test.parts["train"]
    for part in ("train", "test"):
        assert all(n > 0 for n in class_pixels(test.parts[part]).values()), (part, test.class_pixels())
    # tune scores the validation sources with the models of the test split (the same training sources)
    tune = benchmark_split(data, "tune")
    assert tune.scored.sources == val.sources and tune.train.sources == test.train.sources
    assert benchmark_split(data, "test").scored.sources == test.scored.sources  # the same for the same seed
    record = test.record()
    assert record["name"] == "test" and record["sources"]["test"] == test.scored.sources
    assert record["class_pixels"]["test"] == class_pixels(test.scored)


def test_the_default_split_is_the_validation_split_as_before(consep):
    train, val = split_by_source(consep, 0.2, 0, balanced=True)
    split = benchmark_split(consep)
    assert split.name == "val" and split.scored.sources == val.sources and split.train.sources == train.sources
    assert split.description == (
        f"validation split: 5 of 27 sources held out, balanced by class (seed 0): {', '.join(val.sources)}"
    )
    assert benchmark_split(consep, test_data=val).name == "test-data"


def test_splits_that_cannot_be_made_say_what_to_do(monusac):
    with pytest.raises(ValueError, match="not both"):
        benchmark_split(monusac, "test", test_data=monusac)
    with pytest.raises(ValueError, match="choose one of val, tune, test"):
        benchmark_split(monusac, "holdout")
    with pytest.raises(ValueError, match="keep their sum under 1"):
        benchmark_split(monusac, "test", val_fraction=0.5, test_fraction=0.5)


def test_cli_prints_each_part_with_its_pixels_and_trains_nothing(shared_data, tmp_path, capsys):
    data = ["--dataset", "monusac", "--data", str(shared_data / "monusac")]
    assert main(["benchmark", *data, "--split", "test", "--describe-split"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("split test: test split (no choice was measured on it): 4 of 12 sources")
    scored = next(line for line in lines if line.startswith("test (scored)"))
    assert "14 images" in scored and "Neutrophil 8,710" in scored and "Epithelial 1,058,481" in scored
    assert any(line.startswith("tune (not used): 2 sources, 9 images") for line in lines)
    assert main(["benchmark", *data]) == 2
    assert "give --out" in capsys.readouterr().err
    both = ["--split", "test", "--test-data", str(shared_data / "monusac"), "--out", str(tmp_path / "b")]
    assert main(["benchmark", *data, *both]) == 2
    assert "give one of the two" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
