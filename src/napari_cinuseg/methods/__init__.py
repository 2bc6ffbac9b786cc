"""Incremental-step methods behind one registry: each is one small module with one loss.

A method turns the model's output on a batch (and, if it uses one, the frozen prior's) into a
:class:`~napari_cinuseg.losses.LossOutput`. The training engine knows nothing else about it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..losses import LossOutput
from ..runtime.setting import Setting, declared, setting
from ..runtime.setting import values as setting_values


@dataclass
class StepBatch:
    """What a method sees of one iteration of an incremental step (the loop builds it)."""

    logits: torch.Tensor  # (B, K, H, W) of the model being trained
    features: Sequence[torch.Tensor]  # its layer1..layer4 outputs
    labels: torch.Tensor  # (B, H, W) channel ids: 0, the new classes' channels, 255
    new_classes: list[int]  # channel ids of C^t
    old_logits: torch.Tensor | None = None  # (B, K_old, H, W) of the frozen prior, if the method uses it
    old_features: Sequence[torch.Tensor] | None = None
    embedding: torch.Tensor | None = None  # (B, D, h, w) decoder output (the classifier's input);
    # h, w = H/2, W/2 for the U-Net decoder, H/8 for ASPP
    old_embedding: torch.Tensor | None = None  # the frozen prior's, if the method uses it


@dataclass
class StepContext:
    """What a method's hooks see of the whole step."""

    prior: object  # CiNuSegModel, frozen
    model: object  # CiNuSegModel being trained (already grown by the new classes)
    new_classes: list[int]
    settings: Any  # the step's training.settings.TrainSettings
    device: torch.device
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    """One pass over the step's whole images, one at a time, without augmentation: (normalised
    image (1, 3, H, W), channel-id labels (1, H, W)) on the device, for statistics a method
    needs before training (e.g. PLOP's thresholds)."""
    labelled_share: float | None = None
    """The share of the step's pixels that carry a label (not ``IGNORE``): about 1 where the images
    are labelled in full, a few per cent where a user painted some nuclei."""


class Method:
    """One incremental method: a dataclass that subclasses this, with its hyper-parameters as
    fields (those a user may change declared with :func:`setting`) and its :meth:`loss`. The
    hooks do nothing here; a method overrides those it needs. The training loop calls, in order,
    :meth:`prepare`, :meth:`extra_parameters`, :meth:`loss` at every iteration, and :meth:`finish`.
    """

    name: str = "method"
    #: False: the prior's forward pass is skipped
    uses_prior: bool = True
    #: how the classifier grows for this method's step (NucleiSegNet.add_classes): "sigmoid" for
    #: methods that score each class with its own sigmoid, "softmax" (MiB's initialisation) for
    #: those that compare classes through a softmax
    scores: str = "sigmoid"
    #: whether its loss takes pixels painted with an old class (a user's corrections of the prior,
    #: or more paint of a class it has): a refining step
    refines: bool = False

    def prepare(self, ctx: StepContext) -> None:
        """Before the first iteration (e.g. thresholds measured on the step's images)."""

    def extra_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Called after :meth:`prepare`: trainable parameters of the method's own training-only
        modules (e.g. a projection head built in ``prepare`` on ``ctx.device``), optimised with
        the model's (same SGD, lr schedule and weight decay) and never saved in the model file."""
        return ()

    def finish(self, ctx: StepContext) -> None:
        """After the last iteration, before the model is saved (e.g. a weight fusion of prior and
        new model)."""

    def loss(self, batch: StepBatch) -> LossOutput:
        raise NotImplementedError(f"{type(self).__name__} has no loss")


_REGISTRY: dict[str, Callable[[], Method]] = {}


def register(name: str) -> Callable:
    def deco(factory: Callable[[], Method]) -> Callable[[], Method]:
        _REGISTRY[name] = factory
        return factory

    return deco


def method_settings(method: Method | str) -> dict[str, Setting]:
    """The settings a user may change of one method (an instance, or its name): the fields its
    dataclass declares with :func:`setting`."""
    if isinstance(method, str):
        method = get_method(method)
    return declared(method)


def all_method_settings() -> dict[str, Setting]:
    """Every registered method's user settings by name (methods that share a name, e.g. the
    CiNuSeg ablations' τ, share its meaning)."""
    found: dict[str, Setting] = {}
    for name in available():
        for key, spec in method_settings(name).items():
            found.setdefault(key, spec)
    return found


def configure(method: Method, **values) -> Method:
    """``method`` with some of its settings changed, each checked against its declaration."""
    known = method_settings(method)
    unknown = set(values) - set(known)
    if unknown:
        has = ", ".join(known) or "none"
        raise ValueError(f"{method.name} has no setting {', '.join(sorted(unknown))} (its settings: {has})")
    for key, value in values.items():
        known[key].check(value)
    return dataclasses.replace(method, **values) if values else method


def get_method(name: str, **settings) -> Method:
    """A fresh instance of the method ``name``, with ``settings`` (its own) changed."""
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(available())}") from None
    return configure(factory(), **settings)


def settings_of(method: Method) -> dict[str, Any]:
    """The values of a method's user settings, for a step's record."""
    return setting_values(method)


#: the methods a wrapper method (EWF, NeST) may train its step with
BASE_METHODS = ("mib", "plop")


def base_method(name: str) -> Method:
    """The base CISS method that a wrapper method (EWF, NeST) trains its step with."""
    if name not in BASE_METHODS:
        raise ValueError(f"unknown base method {name!r}: choose one of {', '.join(BASE_METHODS)}")
    return get_method(name)


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    """Import every module of this package once: each registers its method(s) on import, so a
    new method is one new module and nothing else."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = [
    "BASE_METHODS",
    "Method",
    "Setting",
    "StepBatch",
    "StepContext",
    "all_method_settings",
    "available",
    "base_method",
    "configure",
    "get_method",
    "method_settings",
    "register",
    "setting",
    "settings_of",
]
