"""The base step's losses: Σ_c BCE on fully labelled pixels (step 0 and fine-tuning), and the
same with nucleus-only pixels of unknown class (mixed supervision, docs/method.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime.names import IGNORE, NUCLEUS
from .cinuseg import negative_sample_bce
from .pixels import per_image_mean

__all__ = ["base_bce", "mixed_base_bce", "nucleus_only_bce"]


def base_bce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Step 0 (and fine-tuning): Σ_c BCE(one-hot(y)_c, S_c) averaged over the labelled pixels."""
    return negative_sample_bce(logits, labels, torch.zeros_like(labels, dtype=torch.bool), 0.0, ignore_index)


def nucleus_only_bce(logits: torch.Tensor, nucleus_mask: torch.Tensor) -> torch.Tensor:
    """Mixed supervision, the term of a pixel known to be a nucleus of unknown class (docs/method.md,
    "Mixed supervision"): BCE(1, σ(ν)) with the nucleus logit ν = mean_{c≥1} z_c − z_0, per pixel
    (B, H, W), 0 where ``nucleus_mask`` is False.

    ν > 0 makes the pixel foreground under the class map's argmax (max_c z_c ≥ mean_c z_c > z_0).
    The gradient on every class logit z_c (c ≥ 1) is the same, −σ(−ν)/K: the term raises all class
    scores together and lowers the background's, and never moves one class's score relative to
    another's (z_c − z_d is unchanged); no class target is implied."""
    logits = logits.float()
    nu = logits[:, 1:].mean(dim=1) - logits[:, 0]
    return F.softplus(-nu) * nucleus_mask.to(logits.dtype)


def mixed_base_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    nucleus: int = NUCLEUS,
    nucleus_weight: float = 1.0,
    ignore_index: int = IGNORE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A base step on mixed supervision: labels 0 background, 1..K a class, ``nucleus`` a nucleus
    of unknown class, ``ignore_index`` unlabelled. Per image the mean over its labelled pixels of

    - class and background pixels: Σ_c BCE(one-hot(y)_c, S_c), as :func:`base_bce` (a background
      pixel lowers every class score and raises the background's);
    - nucleus-only pixels: ``nucleus_weight`` · :func:`nucleus_only_bce`.

    Returns (per-image loss, per-image class term, per-image nucleus term), each (B,); with no
    nucleus-only pixel it equals :func:`base_bce`."""
    logits = logits.float()
    is_nuc = labels == nucleus
    valid = (labels != ignore_index) & ~is_nuc
    target = (
        F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), logits.shape[1])
        .permute(0, 3, 1, 2)
        .to(logits.dtype)
    )
    cls = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1) * valid.to(logits.dtype)
    nuc = nucleus_weight * nucleus_only_bce(logits, is_nuc)
    counted = valid | is_nuc
    class_term = per_image_mean(cls, counted)
    nucleus_term = per_image_mean(nuc, counted)
    return class_term + nucleus_term, class_term, nucleus_term
