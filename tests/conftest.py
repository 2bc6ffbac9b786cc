import ast
import functools
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
# A test is slow when it trains a model, opens a napari viewer or runs a separate process (each
# costs seconds to minutes on two cores), or is marked so (a whole slide segmented). It is found by
# what the test reaches, not by its text alone: the fixtures it uses (pytest's closure of them),
# and the calls made by its body, by the helper functions and fixtures of its module it calls, and
# by theirs, transitively. Everything else is the quick subset.

#: entry points that train, run a benchmark, start a process, segment a whole slide or open a viewer
SLOW_CALLS = {
    "train_base",
    "train_step",
    "learn_class",
    "run_benchmark",
    "run_in_process",
    "torchrun",
    "Popen",
    "run",
    "check_output",
    "check_call",
    "segment_slide",
    "make_napari_viewer",
    "Viewer",
    "CiNuSegWidget",
}
#: conftest's and plugins' fixtures that do one of those
SLOW_FIXTURES = {"make_napari_viewer", "widget", "qtbot", "base_file", "prior_file", "bundled", "viewer"}
#: the command line's subcommands that train or benchmark, run through cli.main([...])
SLOW_COMMANDS = {"train-base", "step", "benchmark"}
SLOW_COMMAND = "<a command that trains>"
SLOW_CALLS.add(SLOW_COMMAND)


def _called_names(node) -> set[str]:
    """The names a function calls (``f(…)`` and ``x.f(…)``), and the subcommands it passes as
    string constants to the command line."""
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
        elif isinstance(sub, ast.Constant) and sub.value in SLOW_COMMANDS:
            names.add(SLOW_COMMAND)
    return names


@functools.cache
def _slow_functions(path: str) -> frozenset[str]:
    """The module-level functions (tests, helpers and fixtures) of one test module that reach a
    slow call, directly or through each other, or that take a slow fixture as an argument."""
    tree = ast.parse(Path(path).read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    calls = {name: _called_names(node) for name, node in funcs.items()}
    args = {name: {a.arg for a in node.args.args} for name, node in funcs.items()}
    slow = {name for name in funcs if calls[name] & SLOW_CALLS or args[name] & SLOW_FIXTURES}
    grew = True
    while grew:
        more = {name for name in funcs if name not in slow and (calls[name] | args[name]) & slow}
        slow |= more
        grew = bool(more)
    return frozenset(slow)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        slow = _slow_functions(str(item.path))
        used = set(getattr(item, "fixturenames", ()))
        if item.originalname in slow or used & (SLOW_FIXTURES | slow):
            item.add_marker(pytest.mark.slow)
