"""How much of the old classes a step kept, measured without old labels.

The person painting a new class has no labels for the old classes on their slide, so they
cannot score forgetting the usual way. What they can be shown: on the step's own images, how much
of each old class the new model still predicts where the prior predicted it. Per old class c,
over the pixels that were *not* painted as a new class,

    agreement_c = 2 |P_c ∩ N_c| / (|P_c| + |N_c|)

with P_c the prior's and N_c the new model's pixels predicted as c (a Dice between the two
predictions). 1 means the new model predicts class c exactly where the prior did; a class that
neither model predicts on these images is not measured (``None``).

:func:`confident_share` is the benchmark's diagnostic with labels: the share of the
ground truth's pixels of each class whose score for that class exceeds τ, i.e. the pixels that
eq. 1 would pseudo-label with that class at the next step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..datasets.labelled import IGNORE, LabelledSet, TrainingPair
from ..model.network import eval_mode
from ..model.segmenter import CiNuSegModel, image_batch

# Below this agreement the panel and the CLI warn that the step may have forgotten a class.
FORGETTING_WARN_BELOW = 0.8
# At most this many of the step's images are measured (spread evenly), each at most this big:
# the report must stay a small part of the step's time.
MAX_IMAGES = 32
MAX_SIDE = 1024


def _measured_images(pairs: Sequence[TrainingPair], max_images: int) -> list[TrainingPair]:
    if len(pairs) <= max_images:
        return list(pairs)
    idx = np.linspace(0, len(pairs) - 1, max_images).round().astype(int)
    return [pairs[i] for i in sorted(set(idx.tolist()))]


def _centre_crop(image: np.ndarray, target: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = target.shape
    y0, x0 = max((h - side) // 2, 0), max((w - side) // 2, 0)
    return image[y0 : y0 + side, x0 : x0 + side], target[y0 : y0 + side, x0 : x0 + side]


@torch.no_grad()
def old_class_agreement(
    prior: CiNuSegModel,
    model: CiNuSegModel,
    pairs: Sequence[TrainingPair],
    device: str | torch.device = "cpu",
    max_images: int = MAX_IMAGES,
    max_side: int = MAX_SIDE,
) -> dict:
    """Per old class, the agreement (0..1) of the new model's prediction with the prior's on the
    step's images, outside the pixels painted as a new class; see the module's docstring.

    ``pairs`` are the step's training pairs (targets 0 background, 1..n the new classes, 255
    unlabelled). Returns ``{"agreement": {class: value or None}, "images": n, "pixels": n}``.
    """
    k_old = prior.num_channels
    both = np.zeros(k_old, np.int64)
    sizes = np.zeros(k_old, np.int64)
    pixels = 0
    chosen = _measured_images(pairs, max_images)
    for pair in chosen:
        image, target = _centre_crop(np.asarray(pair.image), np.asarray(pair.target), max_side)
        keep = ~((target >= 1) & (target != IGNORE))  # not painted as a new class
        if not keep.any():
            continue
        before = prior.predict(image, device)[keep]
        after = model.predict(image, device)[keep]
        pixels += int(keep.sum())
        for c in range(1, k_old):
            p, n = before == c, after == c
            both[c] += int(np.count_nonzero(p & n))
            sizes[c] += int(np.count_nonzero(p)) + int(np.count_nonzero(n))
    agreement = {
        name: (round(float(2 * both[c] / sizes[c]), 4) if sizes[c] else None)
        for c, name in enumerate(prior.class_names, start=1)
    }
    return {"agreement": agreement, "images": len(chosen), "pixels": pixels}


def forgetting_warnings(report: dict, threshold: float = FORGETTING_WARN_BELOW) -> list[str]:
    """One sentence per old class whose agreement fell below ``threshold``, with what to do."""
    out = []
    for name, value in (report or {}).get("agreement", {}).items():
        if value is not None and value < threshold:
            out.append(
                f"{name}: the new model predicts it where the prior did for only {value:.0%} of its "
                f"pixels (below {threshold:.0%}), so it may have forgotten {name}. Check its masks on "
                "an image with that class; if they shrank, train the step again with fewer iterations "
                "or a lower learning rate, or paint background where the old class lies."
            )
    return out


def format_report(report: dict) -> str:
    """A short readable line: each old class and its agreement."""
    if not report or not report.get("agreement"):
        return "no old class to keep"
    parts = [f"{k} {'–' if v is None else f'{v:.2f}'}" for k, v in report["agreement"].items()]
    return "old classes kept (agreement with the prior, outside the new class): " + ", ".join(parts)


@torch.no_grad()
def confident_share(
    model: CiNuSegModel, data: LabelledSet, classes: Sequence[str], tau: float = 0.7, device: str | torch.device = "cpu"
) -> dict[str, float | None]:
    """Per class of ``classes`` (known to the model and the data), the share of the data's pixels
    of that class whose sigmoid score for it exceeds ``tau``; None where the data has none."""
    hit = {c: 0 for c in classes}
    total = {c: 0 for c in classes}
    ids = {c: (data.class_names.index(c) + 1, model.channel_of(c)) for c in classes}
    with eval_mode(model.network.to(device)) as net:
        for item in data.items:
            x = image_batch(item.image, device)
            scores = torch.sigmoid(net(model.normalize(x)).logits.float())[0].cpu().numpy()
            for c, (data_id, ch) in ids.items():
                mask = item.labels == data_id
                n = int(mask.sum())
                if n:
                    total[c] += n
                    hit[c] += int(np.count_nonzero(scores[ch][mask] > tau))
    return {c: (round(hit[c] / total[c], 4) if total[c] else None) for c in classes}
