"""MiB, a baseline: Cermelli et al., "Modeling the Background for Incremental Learning in Semantic
Segmentation", CVPR 2020 (authors' code: fcdl94/MiB, ``utils/loss.py`` and ``train.py``).

MiB's three parts, against this engine:

- Sec. 3 "Unbiased cross-entropy" (q̃): the model being trained may call an old class
  "background", because the step's labels call every old-class pixel background. The probability
  of the background label is therefore the sum of the probabilities of background and of all old
  classes: log q̃_0 = logsumexp(z_0, z_1..z_{K_old−1}) − logsumexp(z), and a new class c keeps
  log q̃_c = z_c − logsumexp(z). :func:`unbiased_cross_entropy`.
- Sec. 3 "Unbiased knowledge distillation" (q̂): the frozen model never saw the new classes, so
  for it they are background. The new model's background is the sum over background and the new
  classes, log q̂_0 = logsumexp(z_0, z_{C^t}) − logsumexp(z), and an old class keeps its
  probability. The loss is the cross-entropy of q̂ against the old model's softmax.
  :func:`unbiased_distillation`.
- Sec. 3 "Initializing the classifier's parameters": new classes copy the background's weights,
  and both the new biases and the background bias become b_0 − log(|C^t| + 1). That is exactly
  what :meth:`napari_cinuseg.model.network.NucleiSegNet.add_classes` does when a model grows
  with ``init="softmax"`` (``MiB.scores``), so this module adds nothing for it.

The objective is ℓ_UCE + λ·ℓ_UKD. Defaults, as read in the authors' code:

- ``lambda_kd = 10``: ``argparser.py`` sets ``opts.loss_kd = 10`` for ``--method MiB`` (the same
  value for VOC and ADE).
- ``alpha = 1``: MiB's ``--alpha`` (multiplies the old logits before their softmax), default 1.
- The cross-entropy of the training loop is mean-reduced over *all* pixels, unlabelled ones
  counting as 0: ``Trainer`` builds ``UnbiasedCrossEntropy(reduction='none')`` and then takes
  ``loss.mean()``. The method does the same; the public function's default ``reduction="mean"``
  is the class's own default (the mean over labelled pixels only).
- The distillation is the mean over all pixels of the per-pixel sum divided by K_old (the
  number of old channels, background included), as ``UnbiasedKnowledgeDistillationLoss`` does.

Labels are channel ids: 0 background, the new classes' channels (K_old..K−1), 255 unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import IGNORE, LossOutput
from . import Method, StepBatch, register

__all__ = ["MiB", "unbiased_cross_entropy", "unbiased_distillation"]


def unbiased_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    old_classes: int,
    ignore_index: int = IGNORE,
    reduction: str = "mean",
) -> torch.Tensor:
    """MiB's unbiased cross-entropy (Sec. 3, q̃).

    ``logits`` (B, K, H, W); ``labels`` (B, H, W); ``old_classes`` = K_old, the number of old
    channels *including* background. Labels below ``old_classes`` count as background (0); the
    background's log-probability is logsumexp over channels 0..K_old−1 minus logsumexp over all
    channels. ``reduction``: ``"mean"`` over the pixels that are not ``ignore_index`` (0 if there
    are none), or ``"none"`` for the (B, H, W) map with 0 at ignored pixels.
    """
    k = logits.shape[1]
    if not 1 <= old_classes <= k:
        raise ValueError(f"old_classes must be in 1..{k} (the logits' channels), got {old_classes}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    logits = logits.float()
    log_den = torch.logsumexp(logits, dim=1)
    log_bg = torch.logsumexp(logits[:, :old_classes], dim=1) - log_den
    target = torch.where(labels < old_classes, torch.zeros_like(labels), labels)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    log_p = logits.gather(1, safe[:, None])[:, 0] - log_den
    log_p = torch.where(safe == 0, log_bg, log_p)
    per_pixel = torch.where(valid, -log_p, torch.zeros_like(log_p))
    if reduction == "none":
        return per_pixel
    return per_pixel.sum() / valid.sum().clamp_min(1)


def unbiased_distillation(
    logits: torch.Tensor, old_logits: torch.Tensor, alpha: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """MiB's unbiased knowledge distillation (Sec. 3, q̂).

    ``logits`` (B, K, H, W) of the model being trained, ``old_logits`` (B, K_old, H, W) of the
    frozen one, the new channels being K_old..K−1. Per pixel:

        −(1/K_old) · [ q_0 · log q̂_0 + Σ_{c=1}^{K_old−1} q_c · log q̂_c ]

    with q = softmax(α · old_logits), log q̂_0 = logsumexp(z_0, z_{K_old..K−1}) − logsumexp(z) and
    log q̂_c = z_c − logsumexp(z). ``reduction``: ``"mean"`` over all pixels, or ``"none"`` for the
    (B, H, W) map. No gradient flows into ``old_logits``.
    """
    k, k_old = logits.shape[1], old_logits.shape[1]
    if k <= k_old:
        raise ValueError(f"the new model needs more channels ({k}) than the old one ({k_old})")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    logits = logits.float()
    log_den = torch.logsumexp(logits, dim=1)
    bg_idx = torch.tensor([0, *range(k_old, k)], device=logits.device)
    log_bg = torch.logsumexp(logits.index_select(1, bg_idx), dim=1) - log_den
    log_old = logits[:, 1:k_old] - log_den[:, None]
    q = torch.softmax(old_logits.detach().float() * alpha, dim=1)
    per_pixel = -(q[:, 0] * log_bg + (q[:, 1:] * log_old).sum(dim=1)) / k_old
    return per_pixel if reduction == "none" else per_pixel.mean()


@dataclass
class MiB(Method):
    """ℓ_UCE + λ·ℓ_UKD (MiB's objective), with MiB's defaults (see the module's docstring)."""

    name: str = "mib"
    lambda_kd: float = 10.0
    alpha: float = 1.0
    uses_prior: bool = True
    scores: str = "softmax"  # softmax scores: MiB's classifier initialisation

    def loss(self, b: StepBatch) -> LossOutput:
        k_old = b.old_logits.shape[1]
        # MiB's Trainer: per-pixel loss, then the mean over every pixel of the batch.
        uce = unbiased_cross_entropy(b.logits, b.labels, k_old, reduction="none").mean()
        ukd = unbiased_distillation(b.logits, b.old_logits, self.alpha)
        return LossOutput(
            loss=uce + self.lambda_kd * ukd,
            terms={"uce": float(uce.detach()), "ukd": float(ukd.detach())},
        )


register("mib")(MiB)
