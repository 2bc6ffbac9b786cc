"""CiNuSeg's losses, eqs. 2-17 and their sum (eqs. 1 and 11, what the prior claims, are in
:mod:`.pseudo`; the notation is in the package's docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..runtime.names import IGNORE
from .pixels import as_index, is_in, per_image_mean
from .pseudo import above, class_thresholds, negative_sample_mask, old_claim, pseudo_labels

__all__ = [
    "IGNORE",
    "LossOutput",
    "adaptive_temperatures",
    "background_suppression",
    "cinuseg_loss",
    "class_anchor_consolidation",
    "class_anchors",
    "class_thresholds",
    "foreground_guidance",
    "given_negatives",
    "negative_sample_bce",
    "negative_sample_mask",
    "prediction_distillation",
    "pseudo_labels",
]


def class_anchors(
    features: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: per image, the mean feature under each class's mask.

    ``features`` (B, D, h, w); ``labels`` (B, H, W) are resized to (h, w) by nearest neighbour.
    Returns ``anchors`` (B, len(classes), D) and ``present`` (B, len(classes)) bool; the anchor of a
    class absent from an image is zero and not present.
    """
    b, d, h, w = features.shape
    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    idx = as_index(classes, labels.device)
    masks = (small[:, None] == idx[None, :, None, None]).to(features.dtype)  # (B, C, h, w)
    counts = masks.flatten(2).sum(2)  # (B, C)
    sums = torch.einsum("bchw,bdhw->bcd", masks, features)
    anchors = sums / counts.clamp_min(1)[..., None]
    return anchors, counts > 0


def class_anchor_consolidation(
    features: Sequence[torch.Tensor],
    old_features: Sequence[torch.Tensor],
    pseudo: torch.Tensor,
    old_classes: Sequence[int],
) -> torch.Tensor:
    """Eq. 3 (CAC): (1/L) Σ_l Σ_{c∈C^{1:t-1} present} (1 − cos(A^l_c, Â^l_c)), per image.

    A^l_c are the new model's anchors at encoder layer l, Â^l_c the frozen model's, both taken
    under the pseudo-label mask of class c.
    """
    if len(features) != len(old_features) or not features:
        raise ValueError("give the same, non-zero number of feature maps for both models")
    per_layer = []
    for feat, old_feat in zip(features, old_features):
        anchors, present = class_anchors(feat.float(), pseudo, old_classes)
        old_anchors, _ = class_anchors(old_feat.detach().float(), pseudo, old_classes)
        cos = F.cosine_similarity(anchors, old_anchors, dim=-1, eps=1e-8)
        per_layer.append(((1 - cos) * present).sum(dim=1))
    return torch.stack(per_layer).mean(dim=0)


def prediction_distillation(
    logits: torch.Tensor,
    old_logits: torch.Tensor,
    new_classes: Sequence[int],
    scores: str = "softmax",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eqs. 4-5 (PKD): the old scores distilled into the new, background-merged ones.

    ``scores="softmax"`` (MiB's reading, the default): p = softmax(logits); p̂_0 = p_0 +
    Σ_{c∈C^t} p_c and p̂_c = p_c for c ∈ C^{1:t-1}; q = softmax(old_logits);
    loss_i = −Σ_{c∈C^{0:t-1}} q_{c,i} log p̂_{c,i}, eq. 5 as written.
    ``scores="sigmoid"`` (the reading of S in eqs. 1 and 8-12): each channel is its own binary
    score, so eq. 5 becomes a binary distillation per channel, loss_i = Σ_{c∈C^{0:t-1}}
    −[q_c log p̂_c + (1 − q_c) log(1 − p̂_c)], with p = sigmoid(logits), q = sigmoid(old_logits),
    p̂_c = p_c and the merged background p̂_0 = 1 − (1 − p_0) Π_{c∈C^t} (1 − p_c) (background or
    any new class; in [0, 1] without clamping). Without the (1 − q) term the loss would push
    every old score up on every pixel. Computed in log space. The paper is silent on which S it
    means here; docs/method.md says why both exist and which a method uses.

    Averaged per image over ``mask`` (B, H, W) where given (the pixels distillation acts on:
    :func:`cinuseg_loss` leaves out those painted as a new class), else over all its pixels.
    """
    logits = logits.float()
    k_old = old_logits.shape[1]
    new_idx = as_index(new_classes, logits.device)
    if scores == "sigmoid":
        z = logits[:, :k_old]
        log_p = F.logsigmoid(z)
        log_not_p = F.logsigmoid(-z)
        log_not_bg = log_not_p[:, 0] + F.logsigmoid(-logits.index_select(1, new_idx)).sum(dim=1)
        log_bg = torch.log(-torch.expm1(log_not_bg.clamp(max=-1e-6)))  # log(1 − exp(log(1 − p̂_0)))
        log_p = torch.cat([log_bg[:, None], log_p[:, 1:]], dim=1)
        log_not_p = torch.cat([log_not_bg[:, None], log_not_p[:, 1:]], dim=1)
        q = torch.sigmoid(old_logits.detach().float())
        per_pixel = -(q * log_p + (1 - q) * log_not_p).sum(dim=1)
    elif scores == "softmax":
        log_den = torch.logsumexp(logits, dim=1)
        bg_idx = torch.cat([torch.zeros(1, dtype=torch.long, device=logits.device), new_idx])
        log_bg = torch.logsumexp(logits.index_select(1, bg_idx), dim=1) - log_den
        log_old = logits[:, 1:k_old] - log_den[:, None]
        log_p_hat = torch.cat([log_bg[:, None], log_old], dim=1)  # (B, K_old, H, W)
        q = torch.softmax(old_logits.detach().float(), dim=1)
        per_pixel = -(q * log_p_hat).sum(dim=1)
    else:
        raise ValueError(f"scores must be 'softmax' or 'sigmoid', got {scores!r}")
    if mask is None:
        return per_pixel.flatten(1).mean(dim=1)
    return per_image_mean(per_pixel, mask)


def foreground_guidance(logits: torch.Tensor, labels: torch.Tensor, new_classes: Sequence[int]) -> torch.Tensor:
    """Eqs. 7-8 (FGL): mean over the image's new-class pixels of −log S_{y_i, i}; 0 if none."""
    is_new = is_in(labels, new_classes)
    target = torch.where(is_new, labels, torch.zeros_like(labels))
    picked = logits.float().gather(1, target[:, None])[:, 0]
    return per_image_mean(-F.logsigmoid(picked), is_new)


def background_suppression(logits: torch.Tensor, labels: torch.Tensor, new_classes: Sequence[int]) -> torch.Tensor:
    """Eq. 10 (BGL): mean over the image's new-class pixels of Σ_{c∈C^{0:t-1}} S_{c,i}²; 0 if none."""
    is_new = is_in(labels, new_classes)
    new_idx = as_index(new_classes, logits.device)
    keep = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[new_idx] = False
    old_scores = torch.sigmoid(logits.float()[:, keep])
    return per_image_mean((old_scores**2).sum(dim=1), is_new)


def negative_sample_bce(
    logits: torch.Tensor,
    pseudo: torch.Tensor,
    negative_mask: torch.Tensor,
    omega: float = 0.1,
    ignore_index: int = IGNORE,
    open_new: torch.Tensor | None = None,
    new_classes: Sequence[int] = (),
    apart: torch.Tensor | None = None,
    new_weight: torch.Tensor | None = None,
    old_free: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 12 (NS): Σ_c BCE(one-hot(ỹ)_c, S_c) weighted by (1 + ω·O_i), averaged over the image's
    pixels that are not ``ignore_index``. With ω = 0 it is the plain pseudo-label BCE baseline.

    ``open_new`` (B, H, W), not in the paper: pixels where the new classes' channels are left out
    of the sum (their old pseudo-label holds the old classes, but says nothing of the new ones).
    ``new_weight`` (B, H, W), not in the paper: a factor on the new classes' channels per pixel
    (0 leaves them out, as ``open_new`` does; 1 keeps them).
    ``apart`` (B, H, W), not in the paper: pixels averaged on their own and added as one more
    mean, so that however many they are they weigh as much as all the others together.
    ``old_free`` (B, H, W), not in the paper: pixels where the old classes' channels (every
    channel but the background and ``new_classes``) are left out of the sum."""
    logits = logits.float()
    valid = pseudo != ignore_index
    target = F.one_hot(torch.where(valid, pseudo, torch.zeros_like(pseudo)), logits.shape[1])
    target = target.permute(0, 3, 1, 2).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if open_new is not None and len(new_classes):
        idx = as_index(new_classes, logits.device)
        bce[:, idx] = bce[:, idx] * (~open_new)[:, None].to(bce.dtype)
    if new_weight is not None and len(new_classes):
        idx = as_index(new_classes, logits.device)
        bce[:, idx] = bce[:, idx] * new_weight[:, None].to(bce.dtype)
    if old_free is not None:
        new = set(new_classes)
        old = [c for c in range(1, logits.shape[1]) if c not in new]
        if old:
            idx = as_index(old, logits.device)
            bce[:, idx] = bce[:, idx] * (~old_free)[:, None].to(bce.dtype)
    bce = bce.sum(dim=1)
    weight = 1 + omega * negative_mask.to(logits.dtype)
    if apart is None:
        return per_image_mean(bce * weight, valid)
    apart = apart & valid
    return per_image_mean(bce * weight, valid & ~apart) + per_image_mean(bce * weight, apart)


@torch.no_grad()
def adaptive_temperatures(
    pseudo: torch.Tensor,
    old_classes: Sequence[int],
    new_classes: Sequence[int],
    sigma: float = 0.7,
    alpha_o: float = 10.0,
    alpha_n: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 14-16 (ATT): per image the new-class dominance r and the two temperatures.

    Eq. 14: r = N_new / (N_old + N_new), counted on the pseudo-labels ỹ of eq. 1; r = 0 for an
    image with neither old nor new pixels (0/0: the paper is silent; such an image cannot be
    dominated by the new class, so ATT does not fire there).
    Eq. 15: t_n = α_n if r > σ, else 1 — the new-class group (FGL + BGL + NS) is eased.
    Eq. 16: t_o = α_o if r > σ, else 1 — the old-knowledge group (CAC + PKD) is raised.
    A step function, as the paper writes it: with α_o = 10, α_n = 0.5, σ = 0.7 an image whose
    pseudo-labelled foreground is more than 70 % new class gets t_o = 10 and t_n = 0.5, every
    other image 1 and 1. "One image" is one training crop here (docs/method.md).
    """
    n_old = is_in(pseudo, old_classes).flatten(1).sum(1).float()
    n_new = is_in(pseudo, new_classes).flatten(1).sum(1).float()
    total = n_old + n_new
    r = torch.where(total > 0, n_new / total.clamp_min(1), torch.zeros_like(total))
    fired = r > sigma
    ones = torch.ones_like(r)
    t_o = torch.where(fired, ones * alpha_o, ones)
    t_n = torch.where(fired, ones * alpha_n, ones)
    return r, t_o, t_n


#: what an unpainted pixel that may be a nucleus teaches the new classes (cinuseg_loss)
UNPAINTED_NUCLEI = ("negative", "unlabelled", "distilled")


@torch.no_grad()
def given_negatives(pseudo: torch.Tensor, old_logits: torch.Tensor, margin: int = 4) -> torch.Tensor:
    """Pixels the prior is sure are no nucleus: pseudo-labelled background (eq. 1, or the prior's
    confident background on an unpainted pixel) at least ``margin`` pixels from the prior's
    nucleus foreground (its argmax over background and old classes), whose edges a nucleus of a
    class it does not know may pass. (B, H, W) bool."""
    fg = (old_logits.argmax(dim=1) > 0).float()[:, None]
    if margin > 0:
        fg = F.max_pool2d(fg, kernel_size=2 * margin + 1, stride=1, padding=margin)
    return (pseudo == 0) & (fg[:, 0] == 0)


@dataclass
class LossOutput:
    """Eq. 17's value, each term's batch mean, and the ATT statistics per image."""

    loss: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)
    r: torch.Tensor | None = None
    t_o: torch.Tensor | None = None
    t_n: torch.Tensor | None = None


def cinuseg_loss(
    logits: torch.Tensor,
    old_logits: torch.Tensor,
    features: Sequence[torch.Tensor],
    old_features: Sequence[torch.Tensor],
    labels: torch.Tensor,
    new_classes: Sequence[int],
    *,
    tau: float = 0.7,
    omega: float = 0.1,
    sigma: float = 0.7,
    alpha_o: float = 10.0,
    alpha_n: float = 0.5,
    acl: bool = True,
    drr: bool = True,
    att: bool = True,
    pkd_scores: str = "softmax",
    ignore_index: int = IGNORE,
    unpainted: str = "tau",
    uncertain_negatives: bool = True,
    background: float = 1.0,
    background_apart: bool = False,
    uncertain_old: str = "background",
    pkd_on_new: bool = True,
    unpainted_nuclei: str = "negative",
    nucleus_margin: int = 4,
    unpainted_nucleus_weight: float = 0.0,
    ns_old_on_background: bool = True,
) -> LossOutput:
    """Eq. 17: mean over the batch of t_o·(CAC + PKD) + t_n·(FGL + BGL + NS), per image.

    Switches for the ablation of Table 3: ``acl`` (CAC + PKD), ``drr`` (FGL + BGL and the ω
    weighting of hard negatives in NS), ``att`` (t_o = t_n = 1 when off). With all three off it
    is the paper's baseline: pseudo-labels (eq. 1) + BCE.

    ``uncertain_negatives`` = False (not in the paper; with ``unpainted="prior"``): an unpainted
    pixel that only the prior's argmax gives an old class (its score ≤ τ) keeps that class in NS
    but is no negative of the new classes: the prior may be wrong there, on a new-class nucleus
    the user did not paint (docs/method.md, "Sparse annotations").

    ``pkd_on_new``: eq. 5 over every pixel, as the paper writes it; off (not in the paper), PKD
    leaves out the pixels labelled as a new class.

    ``labels`` may also hold old classes (not in the paper, whose step labels only C^t): pixels a
    user painted with a class the prior has, to correct the prior or to teach that class more
    (a refining step, whose ``new_classes`` may be empty). They keep their label in eq. 1 (so NS
    teaches it), PKD leaves them out (eq. 5 would pull them back to what the prior says), and
    FGL, BGL and eq. 11 stay the new classes' (docs/method.md, "Refining steps").

    ``unpainted_nuclei`` (not in the paper, whose every pixel is labelled): what an unpainted
    pixel that may be a nucleus teaches, a positive-unlabelled reading of a painted step. The
    new classes' negatives are what the user gave (painted background, exhaustive regions,
    nuclei painted with another class) and the unpainted pixels the prior is sure are no nucleus
    (:func:`given_negatives`: its background, above ``background``, at least ``nucleus_margin``
    pixels from its nucleus foreground). Every other unpainted pixel is unlabelled for the new
    classes: ``"unlabelled"`` leaves the new channels out of NS there, or weighs them by
    ``unpainted_nucleus_weight`` (a positive-unlabelled reading: some of those pixels are the new
    class; the old channels keep the prior's prediction), ``"distilled"`` leaves the pixel out of
    NS altogether (the old classes keep what the prior knows there through CAC and PKD alone).
    ``"negative"`` (eq. 1 read on unpainted pixels, as before): such a pixel's pseudo-label is a
    negative of the new classes.

    ``ns_old_on_background`` = False (not in the paper): where a pixel's label and its pseudo-label
    are both background, eq. 12 leaves the old classes' channels alone (distillation, eq. 5, alone
    holds them there), so that an old class the prior scores under τ is not trained toward 0 on
    its own nuclei; the new classes' channels and the background's keep eq. 12.

    ``background`` and ``background_apart`` (not in the paper): :func:`pseudo_labels`'s
    ``background``, and those unpainted background pixels as their own mean in NS
    (:func:`negative_sample_bce`'s ``apart``); ``uncertain_old``: :func:`pseudo_labels`'s.
    """
    new_classes = list(new_classes)
    k_old = old_logits.shape[1]
    old_classes = list(range(1, k_old))
    pseudo = pseudo_labels(labels, old_logits, new_classes, tau, ignore_index, unpainted, background, uncertain_old)
    apart = None
    if background_apart:  # the prior's background, unpainted (none where ``background`` is 1)
        apart = (labels == ignore_index) & (pseudo == 0)
    if unpainted_nuclei not in UNPAINTED_NUCLEI:
        raise ValueError(f"unpainted_nuclei must be one of {', '.join(UNPAINTED_NUCLEI)}, got {unpainted_nuclei!r}")
    open_new = new_weight = None
    ns_pseudo = pseudo
    if unpainted_nuclei != "negative":
        unpainted = (labels == ignore_index) & (pseudo != ignore_index)
        maybe = unpainted & ~given_negatives(pseudo, old_logits, nucleus_margin)
        if unpainted_nuclei == "distilled":
            ns_pseudo = torch.where(maybe, torch.full_like(pseudo, ignore_index), pseudo)
        elif unpainted_nucleus_weight > 0:
            new_weight = torch.where(maybe, unpainted_nucleus_weight, 1.0).float()
        else:
            open_new = maybe
    if not uncertain_negatives:
        score, cls = old_claim(old_logits)
        # only the pixels the prior's argmax hands an old class: an unpainted pixel made
        # background (``background``) stays a negative of the new classes
        uncertain = (labels == ignore_index) & is_in(pseudo, old_classes) & ~above(score, cls, tau)
        open_new = uncertain if open_new is None else open_new | uncertain
    old_free = None if ns_old_on_background else (labels == 0) & (pseudo == 0)
    zeros = logits.new_zeros(logits.shape[0], dtype=torch.float32)
    terms: dict[str, torch.Tensor] = {}

    if acl:
        terms["cac"] = class_anchor_consolidation(features, old_features, pseudo, old_classes)
        # Old knowledge is distilled on every pixel (eq. 5) with ``pkd_on_new``, else on every
        # pixel not labelled as a new class (docs/method.md, "Sparse annotations"); never on a
        # pixel painted with an old class, where the user corrects what the prior says.
        keep_out = is_in(labels, old_classes)
        if not pkd_on_new:
            keep_out = keep_out | is_in(labels, new_classes)
        mask = ~keep_out if bool(keep_out.any()) else None
        terms["pkd"] = prediction_distillation(logits, old_logits, new_classes, pkd_scores, mask=mask)
    if drr:
        terms["fgl"] = foreground_guidance(logits, labels, new_classes)
        terms["bgl"] = background_suppression(logits, labels, new_classes)
        neg = negative_sample_mask(labels, old_logits, new_classes, tau)
        terms["ns"] = negative_sample_bce(
            logits, ns_pseudo, neg, omega, ignore_index, open_new, new_classes, apart, new_weight, old_free
        )
    else:
        neg = torch.zeros_like(labels, dtype=torch.bool)
        terms["bce"] = negative_sample_bce(
            logits, ns_pseudo, neg, 0.0, ignore_index, open_new, new_classes, apart, new_weight, old_free
        )

    if att:
        r, t_o, t_n = adaptive_temperatures(pseudo, old_classes, new_classes, sigma, alpha_o, alpha_n)
    else:
        r, _, _ = adaptive_temperatures(pseudo, old_classes, new_classes, sigma, alpha_o, alpha_n)
        t_o = t_n = torch.ones_like(r)

    old_group = terms.get("cac", zeros) + terms.get("pkd", zeros)
    new_group = sum((terms[k] for k in ("fgl", "bgl", "ns", "bce") if k in terms), zeros)
    per_image = t_o * old_group + t_n * new_group
    return LossOutput(
        loss=per_image.mean(),
        terms={k: float(v.detach().mean()) for k, v in terms.items()},
        r=r,
        t_o=t_o,
        t_n=t_n,
    )
