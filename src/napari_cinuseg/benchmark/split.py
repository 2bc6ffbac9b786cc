"""Which images a benchmark trains on and which it scores: a split of one data set by source
(image or slide), or a separate test set; what each part holds, per class; and the record of
it that every result file of the benchmark carries.

- ``val``: train on every source but the balanced validation split, score that split. The
  defaults, budgets and rules of this project were chosen on it.
- ``tune``: the same validation sources scored, trained only on ``train`` of
  :func:`~napari_cinuseg.datasets.splits.split_tune_test`; where a choice is measured.
- ``test``: trained on the same ``train``, scored on sources no choice has looked at (held out
  of everything but the validation split's complement); the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..datasets.labelled import LabelledSet
from ..datasets.splits import class_pixels, split_by_source, split_tune_test
from ..runtime.names import BENCHMARK_SPLITS

#: the name of the split when a separate test set is scored
TEST_DATA = "test-data"


@dataclass(frozen=True)
class BenchmarkSplit:
    """The images a benchmark trains on (``train``) and scores (``scored``), the name of the
    split, and every part of the data set by name (``train``, then ``val`` or ``tune`` and
    ``test``), the parts neither trained on nor scored included."""

    name: str
    train: LabelledSet
    scored: LabelledSet
    parts: dict[str, LabelledSet]
    seed: int
    fractions: dict[str, float]

    @property
    def description(self) -> str:
        """One line: what is scored, for tables and results."""
        if self.name == TEST_DATA:
            return "separate test set"
        n_all = sum(len(p.sources) for p in self.parts.values())
        held = f"{len(self.scored.sources)} of {n_all} sources held out, balanced by class (seed {self.seed})"
        if self.name == "val":  # as results before the three-way split said it
            return f"validation split: {held}: {', '.join(self.scored.sources)}"
        what = "tune split" if self.name == "tune" else "test split (no choice was measured on it)"
        return f"{what}: {held}, trained on {len(self.train.sources)}: {', '.join(self.scored.sources)}"

    def record(self) -> dict:
        """What a result file keeps of the split: its name, seed, shares, and each part's sources
        and pixels of each class."""
        return {
            "name": self.name,
            "seed": self.seed,
            "fractions": self.fractions,
            "sources": {k: p.sources for k, p in self.parts.items()},
            "class_pixels": self.class_pixels(),
        }

    def class_pixels(self) -> dict[str, dict[str, int]]:
        """Per part, the pixel count of each class."""
        return {k: class_pixels(p) for k, p in self.parts.items()}

    def describe(self) -> str:
        """Each part's sources, images and pixels of each class, as lines of text."""
        lines = [f"split {self.name}: {self.description}"]
        for k, p in self.parts.items():
            role = "scored" if p is self.scored else "trained on" if p is self.train else "not used"
            pixels = ", ".join(f"{c} {n:,}" for c, n in class_pixels(p).items())
            lines.append(f"{k} ({role}): {len(p.sources)} sources, {len(p.items)} images; pixels: {pixels}")
            lines.append(f"  sources: {', '.join(p.sources)}")
        return "\n".join(lines)


def benchmark_split(
    data: LabelledSet,
    split: str | None = None,
    test_data: LabelledSet | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 1 / 3,
    seed: int = 0,
) -> BenchmarkSplit:
    """The benchmark's split of ``data`` (see the module's docstring; None: ``val``), or
    ``test_data`` scored and all of ``data`` trained on."""
    if test_data is not None:
        if split is not None:
            raise ValueError(
                f"a separate test set is scored as a whole, so --split {split} has no meaning with it: give "
                "--test-data or --split, not both"
            )
        return BenchmarkSplit(TEST_DATA, data, test_data, {"train": data, "test": test_data}, seed, {})
    split = split or "val"
    if split not in BENCHMARK_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(BENCHMARK_SPLITS)}")
    if split == "val":
        train, val = split_by_source(data, val_fraction, seed, balanced=True)
        return BenchmarkSplit(split, train, val, {"train": train, "val": val}, seed, {"val": val_fraction})
    train, tune, test = split_tune_test(data, val_fraction, test_fraction, seed)
    parts = {"train": train, "tune": tune, "test": test}
    fractions = {"tune": val_fraction, "test": test_fraction}
    return BenchmarkSplit(split, train, parts[split], parts, seed, fractions)
