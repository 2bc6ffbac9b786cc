"""The package's imports run down its floors, with no cycle (scripts/check_layers.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
check_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_layers)


def test_the_package_imports_run_down_its_floors_without_a_cycle():
    assert check_layers.check(ROOT / "src") == []


def test_an_upward_import_and_a_cycle_are_found(tmp_path):
    pkg = tmp_path / "napari_cinuseg"
    for folder in ("io", "training"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "io" / "images.py").write_text("from ..training.loop import run\n")
    (pkg / "training" / "loop.py").write_text("def run(): pass\n")
    (pkg / "training" / "a.py").write_text("from . import b\n")
    (pkg / "training" / "b.py").write_text("def f():\n    from .a import x\n")
    problems = check_layers.check(tmp_path)
    assert problems[0].startswith("io/images.py:1: io imports napari_cinuseg.training.loop, a floor above it")
    assert (
        problems[1]
        == "import cycle: napari_cinuseg.training.a -> napari_cinuseg.training.b -> napari_cinuseg.training.a"
    )
    assert len(problems) == 2
