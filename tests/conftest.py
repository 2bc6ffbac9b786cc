import os
from pathlib import Path

import pytest

from napari_cinuseg.datasets.labelled import data_dir, read_consep_patches, step_pairs
from napari_cinuseg.training.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data: $CINUSEG_DATA, else ../shared/data beside the repository."""
    path = data_dir(os.environ.get("CINUSEG_DATA") or ROOT.parent / "shared" / "data")
    if not (path / "consep").is_dir():
        msg = f"real data not found at {path}; set CINUSEG_DATA"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI always has ../shared/data: never pass by skipping
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def consep(shared_data):
    return read_consep_patches(shared_data / "consep")


@pytest.fixture(scope="session")
def few_pairs(consep):
    """A few real CoNSeP patches for a base step (Epithelial, Spindle-shaped) and a step (Other)."""
    base = [p for p in step_pairs(consep, ["Epithelial", "Spindle-shaped"]) if p.name.startswith("train_1_")][:4]
    new = [p for p in step_pairs(consep, ["Other"]) if p.name.startswith("train_2_")][:4]
    assert len(base) == 4 and len(new) == 4
    return base, new


@pytest.fixture
def tiny() -> TrainSettings:
    """A tiny CPU configuration: small crops, a narrow decoder, a handful of iterations."""
    return TrainSettings(
        encoder="resnet18",
        decoder_channels=(32, 16, 16, 8),
        crop_size=64,
        batch_size=4,
        iterations=4,
        device="cpu",
        seed=0,
    )


@pytest.fixture(scope="session")
def base_file(tmp_path_factory, few_pairs):
    """A base model file (Epithelial, Spindle-shaped) trained a little on real patches; tests
    only read it (a step's prior)."""
    from napari_cinuseg import drain, train_base

    settings = TrainSettings(decoder_channels=(32, 16, 16, 8), crop_size=64, batch_size=4, iterations=12, device="cpu")
    out = tmp_path_factory.mktemp("models") / "base.cinuseg.pt"
    assert drain(train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], settings, out=out)) is not None
    return out


# --- the quick subset: pytest -m "not slow" ------------------------------------------------------
# A test is slow when it trains a model, opens a napari viewer or runs a separate process: each
# of those costs seconds to minutes on two cores; also one marked so (a whole slide segmented).
# Everything else is the quick subset.
_SLOW_FIXTURES = {"make_napari_viewer", "widget", "qtbot", "base_file", "prior_file", "bundled"}
_SLOW_CALLS = (
    "train_base(",
    "train_step(",
    "run_benchmark(",
    "subprocess.",
    "run_in_process(",
    '"train-base"',
    '"step"',
    '"benchmark"',
    "torchrun",
)


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        if item.get_closest_marker("slow"):
            continue
        try:
            source = inspect.getsource(item.function)
        except (OSError, TypeError):
            source = ""
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or any(call in source for call in _SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
