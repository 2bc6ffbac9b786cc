"""What the prior claims: eq. 1's pseudo-labels, a per-class τ for an under-confident prior, and
eq. 11's hard negatives (the notation is in the package's docstring)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..runtime.names import IGNORE
from .pixels import is_in


def above(score: torch.Tensor, cls: torch.Tensor, tau) -> torch.Tensor:
    """score > τ, where τ is one number or one per old class ((K_old − 1,), indexed by cls − 1)."""
    if torch.is_tensor(tau) and tau.ndim == 1:
        return score > tau.to(score.device)[(cls - 1).clamp_min(0)]
    return score > tau


def old_claim(old_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """max and argmax over the old foreground classes of S^{t-1} = sigmoid(old_logits)."""
    b, k_old, h, w = old_logits.shape
    if k_old < 2:
        zeros = old_logits.new_zeros((b, h, w))
        return zeros, torch.zeros((b, h, w), dtype=torch.long, device=old_logits.device)
    score, idx = torch.sigmoid(old_logits[:, 1:].float()).max(dim=1)
    return score, idx + 1


#: what eq. 1 makes of a labelled background pixel the prior calls old below τ (pseudo_labels)
UNCERTAIN_OLD = ("background", "ignore", "prior")


@torch.no_grad()
def pseudo_labels(
    labels: torch.Tensor,
    old_logits: torch.Tensor,
    new_classes: Sequence[int],
    tau: float = 0.7,
    ignore_index: int = IGNORE,
    unpainted: str = "tau",
    background: float = 1.0,
    uncertain_old: str = "background",
) -> torch.Tensor:
    """Eq. 1: the pseudo-label ỹ of every pixel.

    ỹ_i = y_i where y_i ∈ C^t; otherwise argmax_{c∈C^{1:t-1}} S^{t-1}_{c,i} where that maximum
    exceeds τ; otherwise 0, except that an unlabelled pixel that no old class claims stays
    ``ignore_index``. A pixel labelled with an old class (not in the paper, whose step labels only
    C^t: a user's correction of the prior, or more paint of a class it has) keeps its label too.
    ``tau`` is one threshold, or one per old class (a (K_old − 1,) tensor: :func:`class_thresholds`).

    ``unpainted`` (not in the paper, whose every pixel is labelled): ``"tau"`` reads eq. 1 as
    written on unlabelled pixels too; ``"prior"`` gives an unlabelled pixel the prior's own
    prediction wherever that is an old class (the argmax over background and old classes, at any
    score), so that an under-confident prior still keeps, and still teaches the new class, every
    old nucleus the user did not paint (docs/method.md, "Sparse annotations").

    ``background`` (not in the paper; with ``unpainted="prior"``): an unlabelled pixel that no
    old class claims and whose prior background score S^{t-1}_0 exceeds it is background (0)
    instead of unlabelled, so the prior's background, too, is kept where the user did not paint.
    1 (the default) leaves such pixels unlabelled: no score exceeds it.

    ``uncertain_old`` (not in the paper): a pixel labelled background (not a new class) whose
    prior's argmax over background and old classes is an old class, but at a score ≤ τ, is
    background (``"background"``: eq. 1 as written), unlabelled (``"ignore"``: PLOP's reading of
    an uncertain pseudo-label) or that old class (``"prior"``).
    """
    if unpainted not in ("tau", "prior"):
        raise ValueError(f"unpainted must be 'tau' or 'prior', got {unpainted!r}")
    if uncertain_old not in UNCERTAIN_OLD:
        raise ValueError(f"uncertain_old must be one of {', '.join(UNCERTAIN_OLD)}, got {uncertain_old!r}")
    score, cls = old_claim(old_logits)
    unlabelled = labels == ignore_index
    painted = ~unlabelled & (labels != 0)  # a new class, or an old one painted by the user
    claimed = above(score, cls, tau)
    old_argmax = old_logits.argmax(dim=1) > 0
    if unpainted == "prior":
        claimed = claimed | (unlabelled & old_argmax)
    unsure = None  # labelled background the prior calls old below τ (eq. 1 as written: background)
    if uncertain_old != "background":
        unsure = ~unlabelled & ~painted & ~claimed & old_argmax
    if uncertain_old == "prior":
        claimed = claimed | unsure
    out = torch.where(unlabelled, torch.full_like(labels, ignore_index), torch.zeros_like(labels))
    if uncertain_old == "ignore":
        out = torch.where(unsure, torch.full_like(out, ignore_index), out)
    if unpainted == "prior" and background < 1:
        quiet = unlabelled & ~claimed & (torch.sigmoid(old_logits[:, 0].float()) > background)
        out = torch.where(quiet, torch.zeros_like(out), out)
    out = torch.where(claimed, cls, out)
    return torch.where(painted, labels, out)


@torch.no_grad()
def class_thresholds(old_logits_batches, tau: float = 0.7, quantile: float = 0.5) -> torch.Tensor:
    """τ_c = min(τ, the ``quantile`` of the prior's score S^{t-1}_c over the pixels it predicts
    as c), per old class c, over an iterable of the prior's logits (B, K_old, H, W).

    Not in the paper, which is silent on an under-confident prior: where the prior predicts its
    own class c with scores mostly at or below τ, eq. 1 would hand most of its pixels to the
    background, and each step would keep less of c. A class the prior never predicts keeps τ.
    """
    hist = None
    bins = 100
    for old in old_logits_batches:
        k_old = old.shape[1]
        if hist is None:
            hist = torch.zeros(k_old, bins, dtype=torch.float64)
        pred = old.argmax(dim=1)
        score = torch.sigmoid(old.float())
        for c in range(1, k_old):
            s = score[:, c][pred == c]
            if s.numel():
                hist[c] += torch.histc(s.double().cpu(), bins=bins, min=0.0, max=1.0)
    if hist is None:
        raise ValueError("no images to measure the prior's confidence on")
    out = torch.full((hist.shape[0] - 1,), float(tau))
    for c in range(1, hist.shape[0]):
        total = hist[c].sum()
        if total > 0:
            idx = int(torch.searchsorted(hist[c].cumsum(0), total * quantile))
            out[c - 1] = min(float(tau), (idx + 0.5) / bins)
    return out


@torch.no_grad()
def negative_sample_mask(
    labels: torch.Tensor, old_logits: torch.Tensor, new_classes: Sequence[int], tau: float = 0.7
) -> torch.Tensor:
    """Eq. 11: O_i = 1 for a new-class pixel that the old model calls old (max_c S^{t-1}_c > τ)."""
    score, cls = old_claim(old_logits)
    return is_in(labels, new_classes) & above(score, cls, tau)
