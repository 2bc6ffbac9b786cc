"""The paper's experiments in one job: protocols × methods, per-step evaluation; the table and
curves it writes are benchmark_report.py's.

A generator like every long job: it yields the training events of each step it runs plus its own
events, and returns the results. Every step model is cached under ``out/models/`` and every
evaluation in ``out/results.json`` (both written atomically), so an interrupted benchmark resumes
where it stopped without redoing finished work.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Sequence

import torch

from .. import __version__
from ..io.atomic import atomic_json
from ..datasets.labelled import LabelledSet, split_by_source, step_pairs
from ..runtime.devices import describe, resolve_device
from ..analysis.evaluation import evaluate
from .report import seen_mean, summarize, write_curves, write_table
from ..analysis.forgetting import confident_share
from ..methods import get_method
from ..model.segmenter import CiNuSegModel, StepRecord
from ..model.file import load_model
from ..datasets.protocols import CLASS_ORDERS, make_protocol
from ..training.settings import TrainSettings
from ..training.steps import train_base, train_step

# Settings that change how a step runs but not what it learns: a cached model trained with other
# values of these is still valid.
_RUN_ONLY = {"device", "num_workers", "log_every", "amp"}


@dataclass(frozen=True)
class BenchmarkStarted:
    protocols: tuple[str, ...]
    methods: tuple[str, ...]
    train_images: int
    test_images: int
    device: str


@dataclass(frozen=True)
class StepPlanned:
    """A step model is about to be trained (``cached=False``) or was found on disk."""

    protocol: str
    method: str
    step: int
    classes: tuple[str, ...]
    cached: bool


@dataclass(frozen=True)
class StepEvaluated:
    protocol: str
    method: str
    step: int
    dice: dict[str, float]
    cached: bool


@dataclass
class BenchmarkConfig:
    dataset: str
    train: LabelledSet
    test: LabelledSet
    protocols: Sequence[str]
    methods: Sequence[str]
    settings: TrainSettings
    out: Path
    class_order: Sequence[str] | None = None
    steps_only: bool = False
    test_description: str = ""
    command: str = ""
    extra: dict = field(default_factory=dict)


def split_data(data: LabelledSet, test: LabelledSet | None, val_fraction: float = 0.2, split_seed: int = 0):
    """(train, test, description): the given test set, else a validation split by source."""
    if test is not None:
        return data, test, "separate test set"
    train, val = split_by_source(data, val_fraction, split_seed)
    return train, val, f"validation split: {len(val.sources)} of {len(data.sources)} sources held out (seed {split_seed})"


def _learning_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in _RUN_ONLY}


def _same_learning_settings(cached: StepRecord, settings: TrainSettings) -> bool:
    """Settings equal, where a setting that an older record lacks counts as equal when it could
    not have changed that step: a setting added later trains as before at its default (the
    augmentation strengths off, PKD on softmax, one τ, the RGB input), so a record without it
    matches that default; ``min_iterations`` only raises the iteration count, so a record without
    it matches if its step ran at least that many iterations."""
    old, new = _learning_settings(cached.settings), _learning_settings(settings.to_dict())
    defaults = TrainSettings().to_dict()
    for key in set(new) - set(old) - {"min_iterations"}:
        if new[key] == defaults.get(key):
            new.pop(key)
    if "min_iterations" not in old and "min_iterations" in new:
        ran = (cached.results or {}).get("iterations", 0)
        if ran < new.pop("min_iterations"):
            return False
    return old == new


def _check_cached(
    model: CiNuSegModel, path: Path, classes: Sequence[str], method: str, settings: TrainSettings, images: list[str], prior: CiNuSegModel | None
) -> None:
    """A cached step model is reused only if it is what this run would train: same classes,
    method, settings and training images, and trained from this run's prior."""
    last = model.steps[-1] if model.steps else None
    same = (
        last is not None
        and [c.lower() for c in model.class_names] == [c.lower() for c in classes]
        and last.method == method
        and _same_learning_settings(last, settings)
        and last.data.get("images") == images
        and (prior is None or (model.lineage and model.lineage[-1] == prior.id))
    )
    if not same:
        raise ValueError(
            f"{path} was made by another configuration (classes, method, settings, data or prior model "
            "differ); give another --out folder, or delete that model and the ones trained after it"
        )


def run_benchmark(cfg: BenchmarkConfig) -> Generator[object, None, dict]:
    out = Path(cfg.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    evaluations: dict = results.setdefault("evaluations", {})
    timings: dict = results.setdefault("train_seconds", {})
    settings = cfg.settings
    order = list(cfg.class_order or CLASS_ORDERS.get(cfg.dataset, cfg.train.class_names))
    protocols = [make_protocol(p, order, cfg.train.class_names) for p in cfg.protocols]
    methods = [get_method(m) for m in cfg.methods]
    device = resolve_device(settings.device)
    results["config"] = {
        "dataset": cfg.dataset,
        "protocols": {p.name: [list(s) for s in p.steps] for p in protocols},
        "methods": [m.name for m in methods],
        "settings": settings.to_dict(),
        "train_images": len(cfg.train.items),
        "train_sources": len(cfg.train.sources),
        "test_images": len(cfg.test.items),
        "test_sources": len(cfg.test.sources),
        "test": cfg.test_description,
        "command": cfg.command,
        **cfg.extra,
    }
    results["machine"] = {
        "device": describe(device),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "napari_cinuseg": __version__,
    }
    yield BenchmarkStarted(tuple(p.name for p in protocols), tuple(m.name for m in methods), len(cfg.train.items), len(cfg.test.items), describe(device))
    t_start = time.perf_counter()

    def model_at(path: Path, classes, method_name, pairs, job_factory, protocol, method, step, prior=None):
        """Load a cached step model, or train it (yielding the training's events)."""
        images = [p.name for p in pairs]
        if path.exists():
            model = load_model(path)
            _check_cached(model, path, classes, method_name, settings, images, prior)
            yield StepPlanned(protocol, method, step, tuple(classes), True)
            return model
        yield StepPlanned(protocol, method, step, tuple(classes), False)
        path.parent.mkdir(parents=True, exist_ok=True)
        model = yield from job_factory(path)
        if model is None:  # cancelled: nothing was saved
            return None
        timings[str(path.relative_to(out))] = model.steps[-1].results.get("seconds")
        atomic_json(results_path, results)
        return model

    test_set = hashlib.sha256("\n".join(sorted(it.name for it in cfg.test.items)).encode()).hexdigest()[:16]

    def evaluated(model, protocol, method, step):
        key = f"{protocol}/{method}/step{step}"
        cached = evaluations.get(key)
        if cached and cached.get("model_id") == model.id and cached.get("test_set") == test_set:
            yield StepEvaluated(protocol, method, step, cached["dice"], True)
            return cached["dice"]
        # classes not learned yet are ignored on purpose (Fig. 5): no warning for them
        dice = evaluate(model, cfg.test, settings.device, say_unscored=False)
        # Issue 12's diagnostic: the share of each known class's test pixels the model scores
        # above τ (what eq. 1 would pseudo-label with that class at the next step).
        known = [c for c in model.class_names if c in cfg.test.class_names]
        confident = confident_share(model, cfg.test, known, settings.tau, device)
        evaluations[key] = {"model_id": model.id, "test_set": test_set, "dice": dice, "classes": model.class_names, "confident": confident}
        atomic_json(results_path, results)
        yield StepEvaluated(protocol, method, step, dice, False)
        return dice

    summary: dict = results.setdefault("summary", {})
    curves: dict = results.setdefault("curves", {})
    for protocol in protocols:
        pdir = out / "models" / f"seed{settings.seed}" / protocol.name
        base = None
        for method in methods:
            if getattr(method, "joint", False):
                classes = list(protocol.all_classes)
                path = out / "models" / f"seed{settings.seed}" / f"offline-{'_'.join(c.lower() for c in sorted(classes))}.cinuseg.pt"
                pairs = step_pairs(cfg.train, classes)
                model = yield from model_at(
                    path,
                    classes,
                    "base",
                    pairs,
                    lambda p, c=classes, pairs=pairs: train_base(pairs, c, settings, out=p, pixel_size=cfg.train.pixel_size),
                    protocol.name,
                    method.name,
                    0,
                )
                if model is None:
                    return results
                if not cfg.steps_only:
                    dice = yield from evaluated(model, protocol.name, method.name, 0)
                    joint = summary.setdefault(protocol.name, {})[method.name] = summarize(protocol, dice)
                    curves.setdefault(protocol.name, {})[method.name] = [joint["mean"]] * len(protocol.steps)
                continue
            if base is None:
                classes = list(protocol.base_classes)
                pairs = step_pairs(cfg.train, classes)
                base = yield from model_at(
                    pdir / "base.cinuseg.pt",
                    classes,
                    "base",
                    pairs,
                    lambda p, c=classes, pairs=pairs: train_base(pairs, c, settings, out=p, pixel_size=cfg.train.pixel_size),
                    protocol.name,
                    "base",
                    0,
                )
                if base is None:
                    return results
            model, curve = base, []
            if not cfg.steps_only:
                dice = yield from evaluated(base, protocol.name, "base", 0)
                curve.append(seen_mean(dice))
            for t in range(1, len(protocol.steps)):
                new = list(protocol.steps[t])
                prior = model
                pairs = step_pairs(cfg.train, new)
                model = yield from model_at(
                    pdir / method.name / f"step{t}.cinuseg.pt",
                    list(protocol.seen_after(t)),
                    method.name,
                    pairs,
                    lambda p, prior=prior, new=new, pairs=pairs: train_step(prior, pairs, new, settings, method=method.name, out=p),
                    protocol.name,
                    method.name,
                    t,
                    prior=prior,
                )
                if model is None:
                    return results
                if not cfg.steps_only:
                    dice = yield from evaluated(model, protocol.name, method.name, t)
                    curve.append(seen_mean(dice))
            if not cfg.steps_only:
                summary.setdefault(protocol.name, {})[method.name] = summarize(protocol, dice)
                summary[protocol.name][method.name]["per_class"] = dice
                curves.setdefault(protocol.name, {})[method.name] = curve
    results["wall_seconds_this_run"] = round(time.perf_counter() - t_start, 1)
    atomic_json(results_path, results)
    if not cfg.steps_only:
        write_table(results, out / "table.md")
        write_curves(results, out)
    return results
