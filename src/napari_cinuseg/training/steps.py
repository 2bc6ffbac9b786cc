"""The training engine: a base step (step 0) and an incremental step against a frozen prior.

Both are generators that yield typed events (:mod:`napari_cinuseg.runtime.events`) and return the new
model (``None`` when cancelled). Cancellation is checked between iterations: set the ``cancel``
event (or make the callable return True), or simply close the generator. A cancelled or failed
step writes no file and leaves the prior model as it was.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import replace

from ..datasets.labelled import TrainingPair, as_pairs, check_pairs
from ..methods import get_method
from ..methods.offline import Offline
from ..model.file import check_new_model_path, load_model
from ..model.segmenter import CiNuSegModel
from ..runtime.events import CancelFlag, Event
from ..runtime.names import IGNORE, NUCLEUS
from .gear import seed_everything
from .loop import StepLoop
from .resampling import pairs_at_pixel_size
from .settings import TrainSettings


def train_base(
    pairs: Sequence[TrainingPair | tuple],
    class_names: Sequence[str],
    settings: TrainSettings | None = None,
    *,
    colours: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    cancel: CancelFlag = None,
    pixel_size: float | None = None,
    init: CiNuSegModel | None = None,
) -> Generator[Event, None, CiNuSegModel | None]:
    """Step 0: a new model learns ``class_names`` with BCE on one-hot labels (255 ignored).

    ``pairs`` hold targets 0 background, i the i-th of ``class_names``, 255 unlabelled, and for
    mixed supervision 254 (``NUCLEUS``): a nucleus of unknown class (docs/method.md).
    ``pixel_size``: µm per pixel of the images (recorded; segmentation resamples to it).
    ``init``: a base model of the same classes, network and input to go on training from (its
    weights; otherwise the network starts as the settings say). Where the settings ask for a
    separation head that ``init`` lacks, the head starts fresh and everything else is ``init``'s.
    Pairs with instance maps (``TrainingPair.instances``) teach the separation head.
    """
    settings = settings or TrainSettings()
    pairs = as_pairs(pairs)
    seed_everything(settings.seed)  # the initial weights depend on the seed too
    model = CiNuSegModel.new(
        list(class_names),
        settings.architecture(),
        list(colours) if colours else None,
        settings.encoder_weights,
        settings.input,
    )
    model.pixel_size = float(pixel_size) if pixel_size else None
    if init is not None:  # go on training a base model: its weights, its classes and network
        grows_head = init.arch.separation == "none" and model.arch.separation != "none"
        same_net = init.arch == model.arch or (
            grows_head and replace(init.arch, separation="none") == replace(model.arch, separation="none")
        )
        if list(init.class_names) != list(class_names) or not same_net or init.input != model.input:
            raise ValueError(
                f"init: the model to go on from has classes {init.class_names}, network {init.arch} and input "
                f"{init.input}; the settings ask for {list(class_names)}, {model.arch}, {model.input}"
            )
        state = {k: v.float() if v.is_floating_point() else v for k, v in init.network.state_dict().items()}
        missing, unexpected = model.network.load_state_dict(state, strict=not grows_head)
        if grows_head and (unexpected or any(not k.startswith("separation.") for k in missing)):
            raise ValueError(f"init: its weights do not fit the network ({missing[:3]}, {unexpected[:3]})")
        model.mean, model.std, model.pixel_size = init.mean, init.std, model.pixel_size or init.pixel_size
    check_pairs(pairs, len(model.classes), allow_nucleus=True)
    check_new_model_path(out, None)
    # mixed supervision: pixels that say only "nucleus" (NUCLEUS) get losses.mixed_base_bce's term
    mixed = any((p.target == NUCLEUS).any() for p in pairs)

    joint = Offline(nucleus_targets=mixed)  # the base step's loss is offline's (fine-tuning's BCE)
    channels = list(range(len(model.classes) + 1))
    if mixed:  # the target value NUCLEUS passes through to the loss as itself
        channels += [IGNORE] * (NUCLEUS - len(channels)) + [NUCLEUS]
    loop = StepLoop(
        model=model,
        pairs=pairs,
        channel_of_target=channels,
        method=joint,
        prior=None,
        settings=settings,
        lr=settings.lr_base,
        step=0,
        record_as="base",
    )
    return loop.run(cancel, out)


def train_step(
    prior: CiNuSegModel | str | os.PathLike,
    pairs: Sequence[TrainingPair | tuple],
    new_class_names: Sequence[str],
    settings: TrainSettings | None = None,
    *,
    method: str = "cinuseg",
    colours: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    cancel: CancelFlag = None,
    pixel_size: float | None = None,
) -> Generator[Event, None, CiNuSegModel | None]:
    """One incremental step: a copy of ``prior`` grows by ``new_class_names`` and learns them with
    ``method`` against the frozen prior. The prior (object and file) is never changed.

    ``pairs`` hold targets 0 background, i the i-th of ``new_class_names``, 255 unlabelled. The
    network of the prior is kept, and the settings must name it (:meth:`TrainSettings.for_network`).

    A name the prior already has (any case) is not added again: its paint teaches that class
    (more paint of a kept class, or a correction of what the prior calls it). A step of such
    names only is a refining step, which adds no class; it needs a method that ``refines``
    (CiNuSeg: docs/method.md, "Refining steps").
    ``pixel_size``: µm per pixel of the pairs' images. They are resampled to the prior's pixel
    size (training/resampling.py), as segmentation resamples an image, so the step learns its
    nuclei at the size the network will see them; unknown (None): the prior's is assumed. The
    crops of the step's events are then in the resampled images' pixels.
    """
    settings = settings or TrainSettings()
    pairs = as_pairs(pairs)
    if not isinstance(prior, CiNuSegModel):
        prior = load_model(prior)
    want = (settings.encoder, settings.decoder, tuple(settings.decoder_channels))
    have = (prior.arch.encoder, prior.arch.decoder, tuple(prior.arch.decoder_channels))
    if want != have:
        raise ValueError(
            f"the prior model's network is {have[0]} + {have[1]} {list(have[2])}, but the settings ask "
            f"for {want[0]} + {want[1]} {list(want[2])}; a step keeps its prior's network: use "
            "settings.for_network(prior.arch), or choose a prior with that network"
        )
    m = get_method(method, **settings.method_settings)  # its own settings: the user's changes
    names = [str(n).strip() for n in new_class_names]
    if not names:
        raise ValueError("a step needs at least one class to learn: name it")
    known = {n.lower(): prior.channel_of(n) for n in prior.class_names}
    refined = [n for n in names if n.lower() in known]
    if refined and not m.refines:
        raise ValueError(
            f"{m.name} learns new classes only, and the prior already has {', '.join(refined)}; name a new "
            "class, or train with the cinuseg method, which takes paint of the classes a model has"
        )
    new_names = [n for n in names if n.lower() not in known]
    colours = list(colours) if colours else None
    if colours is not None and len(colours) == len(names):  # the colours of the new ones
        colours = [c for n, c in zip(names, colours) if n.lower() not in known]
    model = prior.child(new_names, colours or None, m.scores, refining=True)
    check_pairs(pairs, len(names))
    check_new_model_path(out, prior)
    pairs, _ = pairs_at_pixel_size(pairs, pixel_size, prior.pixel_size)
    k_old = prior.num_channels
    new_classes = list(range(k_old, model.num_channels))
    grown = iter(new_classes)
    channels = [known[n.lower()] if n.lower() in known else next(grown) for n in names]

    loop = StepLoop(
        model=model,
        pairs=pairs,
        channel_of_target=[0] + channels,
        method=m,
        prior=prior if m.uses_prior else None,
        settings=settings,
        lr=settings.lr_step,
        step=model.next_step,
        new_classes=tuple(new_classes),
        freeze_bn=settings.freeze_bn,
        report_prior=prior,
        # nucleus separation knows no classes: the step keeps the prior's (losses/separation.py)
        separation_prior=prior if prior.network.has_separation and settings.separation_weight > 0 else None,
    )
    return loop.run(cancel, out)
