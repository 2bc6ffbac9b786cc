"""The paper's experiments in one job: protocols × methods, per-step evaluation; the table and
curves it writes are report.py's.

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
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..analysis.evaluation import evaluate, score
from ..analysis.forgetting import confident_share
from ..analysis.held_out import trained_images, trained_on, trained_on_warning
from ..datasets.labelled import LabelledSet, step_pairs
from ..datasets.protocols import CLASS_ORDERS, make_protocol
from ..io.atomic import atomic_json
from ..methods import get_method, method_settings, settings_of
from ..model.file import load_model
from ..model.segmenter import CiNuSegModel, StepRecord
from ..runtime.devices import describe, resolve_device
from ..runtime.events import (
    BenchmarkStarted,
    CurvePoint,
    PriorUnconfident,
    Progress,
    StepEvaluated,
    StepPlanned,
    StepStarted,
    tap,
)
from ..training.settings import TrainSettings
from ..training.steps import train_base, train_step
from .report import SCORING, seen_mean, summarize, write_curves, write_table, write_training_curves

# Settings that change how a step runs but not what it learns: a cached model trained with other
# values of these is still valid.
_RUN_ONLY = {"device", "num_workers", "log_every", "amp"}
#: below this share of an old class's test pixels above τ, a step's prior is said to be unconfident
CONFIDENT_FLOOR = 0.25


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
    base_iterations: int | None = None  # the base and offline models' budget (None: as the steps')
    curve_every: int = 0  # score the base and offline models every N iterations while they train
    test_description: str = ""
    split: dict = field(default_factory=dict)  # split.BenchmarkSplit.record(): name, seed and parts
    command: str = ""
    extra: dict = field(default_factory=dict)


def _learning_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in _RUN_ONLY}


def _same_learning_settings(cached: StepRecord, settings: TrainSettings) -> bool:
    """Whether a cached step learned with these settings (those that change what it learns; a
    record made before a setting existed differs, and its step is trained again)."""
    return _learning_settings(cached.settings) == _learning_settings(settings.to_dict())


def _check_cached(
    model: CiNuSegModel,
    path: Path,
    classes: Sequence[str],
    method: str,
    settings: TrainSettings,
    images: list[str],
    prior: CiNuSegModel | None,
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


def _configured_methods(names: Sequence[str], values: dict) -> list:
    """The benchmark's methods, each with those of ``values`` that are its own settings (τ for
    CiNuSeg and its ablations, not for MiB); a setting no method has is an error."""
    methods = [get_method(n) for n in names]
    unused = set(values) - {k for m in methods for k in method_settings(m)}
    if unused:
        raise ValueError(
            f"no method of this benchmark ({', '.join(names)}) has the setting(s) {', '.join(sorted(unused))}"
        )
    return [get_method(m.name, **{k: v for k, v in values.items() if k in method_settings(m)}) for m in methods]


def run_benchmark(cfg: BenchmarkConfig) -> Generator[object, None, dict]:
    """Train and score every protocol × method (see the module's docstring); returns the results."""
    return (yield from _BenchmarkRun(cfg).run())


class _BenchmarkRun:
    """One benchmark job: its results file, cache of models and evaluations, and the steps."""

    def __init__(self, cfg: BenchmarkConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        (self.out / "models").mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        self.evaluations: dict = self.results.setdefault("evaluations", {})
        self.timings: dict = self.results.setdefault("train_seconds", {})
        self.summary: dict = self.results.setdefault("summary", {})
        self.curves: dict = self.results.setdefault("curves", {})
        self.settings = cfg.settings
        order = list(cfg.class_order or CLASS_ORDERS.get(cfg.dataset, cfg.train.class_names))
        self.protocols = [make_protocol(p, order, cfg.train.class_names) for p in cfg.protocols]
        self.methods = _configured_methods(cfg.methods, self.settings.method_settings)
        # each step trains with its method's own settings in full (its record holds the same), a
        # base or offline model with none
        self.step_settings = {m.name: self.settings.replace(method_settings=settings_of(m)) for m in self.methods}
        self.base_settings = self.settings.replace(method_settings={})
        if cfg.base_iterations is not None:
            self.base_settings = self.base_settings.replace(iterations=cfg.base_iterations)
        self.training_curves: dict = self.results.setdefault("training_curves", {})
        # eq. 1's τ: the prior's share of confident pixels at the next step (CiNuSeg's, by default)
        self.tau = next((m.tau for m in self.methods if "tau" in method_settings(m)), get_method("cinuseg").tau)
        self.device = resolve_device(self.settings.device)
        self.test_set = hashlib.sha256("\n".join(sorted(it.name for it in cfg.test.items)).encode()).hexdigest()[:16]

    def run(self) -> Generator[object, None, dict]:
        self._record_config()
        yield BenchmarkStarted(
            tuple(p.name for p in self.protocols),
            tuple(m.name for m in self.methods),
            len(self.cfg.train.items),
            len(self.cfg.test.items),
            describe(self.device),
        )
        t_start = time.perf_counter()
        for protocol in self.protocols:
            base = None
            for method in self.methods:
                if getattr(method, "joint", False):
                    done = yield from self._offline(protocol, method)
                else:
                    if base is None:
                        base = yield from self._base(protocol)
                        if base is None:
                            return self.results
                    done = yield from self._incremental(protocol, method, base)
                if not done:  # cancelled: what finished is saved
                    return self.results
        self.results["wall_seconds_this_run"] = round(time.perf_counter() - t_start, 1)
        atomic_json(self.results_path, self.results)
        if not self.cfg.steps_only:
            write_table(self.results, self.out / "table.md")
            write_curves(self.results, self.out)
            write_training_curves(self.results, self.out)
        return self.results

    def _record_config(self) -> None:
        cfg = self.cfg
        self.results["config"] = {
            "dataset": cfg.dataset,
            "protocols": {p.name: [list(s) for s in p.steps] for p in self.protocols},
            "methods": [m.name for m in self.methods],
            "settings": self.settings.to_dict(),
            "train_images": len(cfg.train.items),
            "train_sources": len(cfg.train.sources),
            "test_images": len(cfg.test.items),
            "test_sources": len(cfg.test.sources),
            "test_image_names": sorted(it.name for it in cfg.test.items),
            "test": cfg.test_description,
            "split": cfg.split,
            "base_iterations": cfg.base_iterations,
            "curve_every": cfg.curve_every,
            "scoring": SCORING,
            "command": cfg.command,
            **cfg.extra,
        }
        self.results["machine"] = {
            "device": describe(self.device),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "napari_cinuseg": __version__,
        }

    def _model_at(self, path: Path, classes, method_name, pairs, job_factory, protocol, method, step, prior=None):
        """Load a cached step model, or train it (yielding the training's events)."""
        images = [p.name for p in pairs]
        if path.exists():
            model = load_model(path)
            settings = self.base_settings if method_name == "base" else self.step_settings[method_name]
            _check_cached(model, path, classes, method_name, settings, images, prior)
            yield StepPlanned(protocol, method, step, tuple(classes), True)
            return model
        yield StepPlanned(protocol, method, step, tuple(classes), False)
        path.parent.mkdir(parents=True, exist_ok=True)
        model = yield from job_factory(path)
        if model is None:  # cancelled: nothing was saved
            return None
        self.timings[str(path.relative_to(self.out))] = model.steps[-1].results.get("seconds")
        atomic_json(self.results_path, self.results)
        return model

    def _evaluated(self, model, protocol, method, step):
        """Dice per known class on the test set (cached by model and test set) with each test
        image's counts behind it, and the share of each known class's test pixels the model
        scores above τ: what eq. 1 would pseudo-label with that class at the next step."""
        key = f"{protocol}/{method}/step{step}"
        cached = self.evaluations.get(key)
        if (
            cached
            and cached.get("model_id") == model.id
            and cached.get("test_set") == self.test_set
            and cached.get("scoring") == SCORING
            and "per_image" in cached  # what bootstrap.py resamples; made before it was kept: scored again
        ):
            yield StepEvaluated(protocol, method, step, cached["dice"], True)
            return cached["dice"]
        seen = trained_on(model, [it.name for it in self.cfg.test.items])
        if seen:  # a split by source never gives this; a separate test set may share image names
            advice = "a test set must hold other images than --data (other images that only share names are fine)"
            said = trained_on_warning(seen, len(self.cfg.test.items), advice)
            warnings.warn(f"{key}: {said}", UserWarning, stacklevel=2)
        # classes not learned yet are ignored on purpose (Fig. 5): no warning for them
        scores = score(model, self.cfg.test, self.settings.device, say_unscored=False)
        dice = scores.dice
        known = [c for c in model.class_names if c in self.cfg.test.class_names]
        confident = confident_share(model, self.cfg.test, known, self.tau, self.device)
        self.evaluations[key] = {
            "model_id": model.id,
            "test_set": self.test_set,
            "scoring": SCORING,
            "dice": dice,
            "classes": model.class_names,
            "confident": confident,
            "per_image": scores.per_image,
            "trained_on": len(trained_images(seen)),  # test images of training images' names
        }
        atomic_json(self.results_path, self.results)
        yield StepEvaluated(protocol, method, step, dice, False)
        return dice

    def _train_base(self, classes, protocol, method_name, path):
        pairs = step_pairs(self.cfg.train, classes)

        def job(p):
            training = train_base(pairs, classes, self.base_settings, out=p, pixel_size=self.cfg.train.pixel_size)
            if not self.cfg.curve_every or self.cfg.steps_only:
                return training
            return self._scored_while_training(training, str(p.relative_to(self.out)), protocol.name, method_name)

        return (yield from self._model_at(path, classes, "base", pairs, job, protocol.name, method_name, 0))

    def _scored_while_training(self, job, key: str, protocol: str, method: str):
        """``job``'s events and result; every ``curve_every`` iterations (and at the last) the
        model being trained is scored on the test images, each point kept in
        ``results["training_curves"][key]`` and yielded as a :class:`CurvePoint`. Scoring leaves
        the weights and every module's train/eval mode as they were (``CiNuSegModel.predict``)
        and draws no random numbers, so the model is the one the run would train without it."""
        points = self.training_curves[key] = []
        model = None

        def after(ev):
            nonlocal model
            if isinstance(ev, StepStarted):
                model = ev.model
            elif (
                isinstance(ev, Progress)
                and model is not None
                and (ev.iteration % self.cfg.curve_every == 0 or ev.iteration == ev.total)
            ):
                dice = evaluate(model, self.cfg.test, self.device, say_unscored=False)  # modes kept (predict)
                points.append({"iteration": ev.iteration, "dice": dice, "mean": seen_mean(dice), "loss": ev.loss})
                atomic_json(self.results_path, self.results)
                return [CurvePoint(protocol, method, ev.iteration, ev.total, dice, seen_mean(dice))]
            return None

        return (yield from tap(job, after))

    def _offline(self, protocol, method):
        """Offline: one model trained on every class of the protocol at once (the upper bound)."""
        classes = list(protocol.all_classes)
        path = (
            self.out
            / "models"
            / f"seed{self.settings.seed}"
            / f"offline-{'_'.join(c.lower() for c in sorted(classes))}.cinuseg.pt"
        )
        model = yield from self._train_base(classes, protocol, method.name, path)
        if model is None:
            return False
        if not self.cfg.steps_only:
            dice = yield from self._evaluated(model, protocol.name, method.name, 0)
            joint = self.summary.setdefault(protocol.name, {})[method.name] = summarize(protocol, dice)
            joint["per_class"] = dice
            self.curves.setdefault(protocol.name, {})[method.name] = [joint["mean"]] * len(protocol.steps)
        return True

    def _base(self, protocol):
        """Step 0 of a protocol: the base model every incremental method starts from."""
        path = self.out / "models" / f"seed{self.settings.seed}" / protocol.name / "base.cinuseg.pt"
        return (yield from self._train_base(list(protocol.base_classes), protocol, "base", path))

    def _prior_check(self, prior, protocol, method, step):
        """Yield PriorUnconfident when the step's prior scores few of an old class above τ."""
        key = f"{protocol}/{'base' if step == 1 else method}/step{step - 1}"
        shares = (self.evaluations.get(key) or {}).get("confident") or {}
        low = {c: v for c, v in shares.items() if v is not None and v < CONFIDENT_FLOOR and c in prior.class_names}
        if low:
            yield PriorUnconfident(protocol, method, step, self.tau, low)

    def _incremental(self, protocol, method, base):
        """Steps 1..T of a protocol with one method, from the protocol's base model."""
        pdir = self.out / "models" / f"seed{self.settings.seed}" / protocol.name
        model, curve, dice = base, [], None
        if not self.cfg.steps_only:
            dice = yield from self._evaluated(base, protocol.name, "base", 0)
            curve.append(seen_mean(dice))
        for t in range(1, len(protocol.steps)):
            new, prior = list(protocol.steps[t]), model
            pairs = step_pairs(self.cfg.train, new)
            if not self.cfg.steps_only:
                yield from self._prior_check(prior, protocol.name, method.name, t)
            model = yield from self._model_at(
                pdir / method.name / f"step{t}.cinuseg.pt",
                list(protocol.seen_after(t)),
                method.name,
                pairs,
                lambda p, prior=prior, new=new, pairs=pairs: train_step(
                    prior, pairs, new, self.step_settings[method.name], method=method.name, out=p
                ),
                protocol.name,
                method.name,
                t,
                prior=prior,
            )
            if model is None:
                return False
            if not self.cfg.steps_only:
                dice = yield from self._evaluated(model, protocol.name, method.name, t)
                curve.append(seen_mean(dice))
        if not self.cfg.steps_only:
            self.summary.setdefault(protocol.name, {})[method.name] = summarize(protocol, dice)
            self.summary[protocol.name][method.name]["per_class"] = dice
            self.curves.setdefault(protocol.name, {})[method.name] = curve
        return True
