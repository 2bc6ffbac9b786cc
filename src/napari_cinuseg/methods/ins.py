"""INS, a baseline: Wang, Wu, Qin, "Incremental Nuclei Segmentation from Histopathological Images
via Future-class Awareness and Compatibility-inspired Distillation", CVPR 2024 (authors' code:
why19991/InSeg; only its core modules are public: ``modules/fca_cid.py`` with the functions ``FCA``
and ``CID``, ``modules/unet.py``, ``models/util.py``, ``modules/residual.py``; no training loop,
no loss weights, no argument parser).

The paper's text was not available to us: what follows is read from ``modules/fca_cid.py``, and
every part the code does not show is our choice, named below. INS's two parts, against this engine:

- Future-class awareness (``FCA``). Running centroids of the step's foreground (new) classes are
  kept from the detached features of the model being trained (``strategy='running'``, a cumulative
  mean over the step). A background pixel whose feature, L2-normalised, has a mean cosine
  similarity ≥ 0.8 to the (normalised) centroids is relabelled as an extra "unknown" class ("we set
  the label of unknown class as C_t+1", i.e. the channel after the step's classes), standing for
  nuclei of classes still to come. :func:`update_centroids`, :func:`future_class_labels`.
- Compatibility-inspired distillation (``CID``). The old model's logits are made compatible with
  the new label space: at a pixel labelled with new class c the old *background* logit (plus the
  old model's unknown logits, if it has any) becomes the target logit of channel c and the target
  background logit is 0; every channel the old model does not have gets the logit 0. With
  q = softmax(target) and p = softmax(z) of the model being trained (all its channels, the unknown
  included): ℓ_CID = −mean over pixels of (1/C) Σ_c p_c log q_c, over the pixels labelled background,
  unlabelled or new (not those relabelled unknown). :func:`compatibility_targets`,
  :func:`compatibility_distillation`.

The objective is ℓ_seg + λ·ℓ_CID on the FCA labels. Defaults, as read in the authors' code:

- ``threshold = 0.8``: ``value >= 0.8`` in ``FCA``.
- Centroids: running (cumulative) means, ``strategy='running'`` (the default; the alternative is
  an EMA with momentum 0.999).
- CID: target logits 0 for the channels the old model lacks (``torch.zeros_like``), the per-pixel
  sum divided by the number of channels C, then ``−torch.mean`` over all pixels (0 at pixels
  outside both masks).

Our choices, where the code is silent (the parts it does not show):

- ℓ_seg is MiB's unbiased cross-entropy (the background's probability is the sum over background
  and the old classes; :func:`~napari_cinuseg.methods.mib.unbiased_cross_entropy`) over the model's
  channels plus the unknown one, averaged over all pixels as MiB's and CoNuSeg's trainers do (INS
  comes from the same group and code lineage as CoNuSeg).
- λ = ``lambda_cid = 1.0`` (no weight is given).
- The features are the decoder's output (the classifier's input, ``StepBatch.embedding``): in
  ``modules/unet.py`` the decoder's output feeds the classifier and the code relabels the very label
  map used for the pixel-wise loss.
- CID is given the FCA labels: its two masks ((y < K_old) ∪ (y = 255)) and (K_old ≤ y < K) cover
  every label but the unknown one, which only FCA produces.

Where this module departs from the code, on purpose:

- The unknown class never enters the saved model. Its channel is a training-only 1×1 convolution
  on the embedding (:meth:`INS.extra_parameters`), initialised as MiB initialises a new class (a
  copy of the background row of the already grown classifier), upsampled bilinearly like the
  model's logits and appended as channel K. It is dropped when the step ends, so the next step's
  prior has no unknown channel, and CID's "old unknown logits" term is empty (``old_future=None``):
  at a new-class pixel the target logit is the old background logit alone. In the paper the
  unknown channel persists and carries "future" knowledge into the next step.
- The mean similarity is over the centroids of the new classes seen so far in the step; the code
  averages over every row of its centroid table, zero rows (background, classes not seen) included,
  which makes 0.8 unreachable whenever the table has more rows than seen classes.
- The running centroid is the true cumulative mean; the code increments the count before using it
  (c ← c + Σf/n instead of (n·c + Σf)/(n + m)) and then normalises the whole table.
- The code's ``features[mask.expand(...)].view(-1, D)`` interleaves pixels and channels; here each
  pixel's D-vector is used. Labels are taken to the embedding's size by nearest neighbour for the
  centroids and the similarities; the unknown mask is brought back to the labels' size by nearest
  neighbour and applied only to pixels labelled background there.

Labels are channel ids: 0 background, the new classes' channels (K_old..K−1), 255 unlabelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import IGNORE, LossOutput
from . import Method, StepBatch, StepContext, register
from ._shared import resize_labels
from .mib import unbiased_cross_entropy

__all__ = [
    "INS",
    "compatibility_distillation",
    "compatibility_targets",
    "future_class_labels",
    "unknown_head",
    "update_centroids",
]

FCA_THRESHOLD = 0.8  # FCA: value >= 0.8
LAMBDA_CID = 1.0  # our choice: the code gives no weight
_EPS = 1e-6


# --- Future-class awareness --------------------------------------------------------------------


@torch.no_grad()
def update_centroids(
    centroids: torch.Tensor,
    counts: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
) -> None:
    """FCA's running centroids, in place: for each class of ``classes`` present in ``labels``
    (B, h, w, at the size of ``features`` (B, D, h, w)), c ← (n·c + Σ f) / (n + m), n ← n + m,
    over the raw (detached) pixel features."""
    if not len(classes):
        return
    feats = features.detach().float()
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=labels.device)
    masks = (labels[:, None] == idx[None, :, None, None]).to(feats.dtype)  # (B, C, h, w)
    m = masks.sum(dim=(0, 2, 3)).to(centroids.device, counts.dtype)
    sums = torch.einsum("bchw,bdhw->cd", masks, feats).to(centroids.device, centroids.dtype)
    idx = idx.to(centroids.device)
    n = counts[idx]
    total = n + m
    new = (centroids[idx] * n[:, None] + sums) / total.clamp_min(1)[:, None]
    seen = m > 0
    centroids[idx[seen]] = new[seen]
    counts[idx[seen]] = total[seen]


@torch.no_grad()
def future_class_labels(
    labels: torch.Tensor,
    features: torch.Tensor,
    centroids: torch.Tensor,
    counts: torch.Tensor,
    classes: Sequence[int],
    unknown: int,
    threshold: float = FCA_THRESHOLD,
) -> torch.Tensor:
    """FCA's relabelling: the pixels labelled 0 whose feature has a mean cosine similarity
    ≥ ``threshold`` to the centroids of ``classes`` (those seen so far, ``counts`` > 0) become
    ``unknown``; the others keep their label. ``labels`` (B, H, W), ``features`` (B, D, h, w); the
    similarity is computed at (h, w) and brought to (H, W) by nearest neighbour."""
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=centroids.device)
    seen = idx[counts[idx] > 0]
    if seen.numel() == 0:
        return labels
    cents = F.normalize(centroids[seen].float(), p=2, dim=1, eps=_EPS)  # (S, D)
    normed = F.normalize(features.detach().float(), p=2, dim=1, eps=_EPS)
    sim = torch.einsum("bdhw,sd->bshw", normed, cents.to(normed.device)).mean(dim=1)  # (B, h, w)
    close = (sim >= threshold).long()
    close = resize_labels(close, labels.shape[-2:]).bool()
    return torch.where(close & (labels == 0), torch.full_like(labels, unknown), labels)


def unknown_head(classifier: nn.Conv2d) -> nn.Conv2d:
    """The training-only unknown channel: a 1×1 convolution on the classifier's input, initialised
    (as MiB initialises a new class) with a copy of the background row of ``classifier``."""
    head = nn.Conv2d(classifier.in_channels, 1, 1).to(classifier.weight.device, classifier.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(classifier.weight[:1])
        head.bias.copy_(classifier.bias[:1])
    return head


# --- Compatibility-inspired distillation ------------------------------------------------------


@torch.no_grad()
def compatibility_targets(
    old_logits: torch.Tensor,
    labels: torch.Tensor,
    new_classes: Sequence[int],
    channels: int,
    old_future: torch.Tensor | None = None,
) -> torch.Tensor:
    """CID's target logits, (B, ``channels``, H, W): the old logits (and the old unknown logits
    ``old_future`` (B, F, H, W), if any) in the first K_old (+F) channels, 0 elsewhere; then for
    each new class c, channel c is old_bg (+ Σ old_future) at the pixels labelled c and 0 at the
    others, and channel 0 is 0 at the pixels labelled c."""
    old = old_logits.detach().float()
    if old_future is not None:
        old = torch.cat([old, old_future.detach().float()], dim=1)
    b, n_old, h, w = old.shape
    if channels < n_old:
        raise ValueError(f"the targets need at least the old model's {n_old} channels, got {channels}")
    target = old.new_zeros((b, channels, h, w))
    target[:, :n_old] = old
    source = old_logits.detach().float()[:, 0]
    if old_future is not None:
        source = source + old_future.detach().float().sum(dim=1)
    for c in new_classes:
        at_c = labels == c
        target[:, c] = torch.where(at_c, source, torch.zeros_like(source))
        target[:, 0] = torch.where(at_c, torch.zeros_like(source), target[:, 0])
    return target


def compatibility_distillation(
    logits: torch.Tensor,
    old_logits: torch.Tensor,
    labels: torch.Tensor,
    new_classes: Sequence[int],
    old_future: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
    reduction: str = "mean",
) -> torch.Tensor:
    """INS's CID: with q = softmax(:func:`compatibility_targets`) and p = softmax(``logits``) over
    the C channels of ``logits`` (B, C, H, W) (the unknown one included),

        −(1/C) Σ_c p_c log q_c

    at the pixels labelled < K_old, ``ignore_index`` or a new class, 0 elsewhere (the unknown label).
    ``reduction``: ``"mean"`` over all pixels (the code's ``−torch.mean``) or ``"none"`` for the
    (B, H, W) map. No gradient flows into ``old_logits``/``old_future``."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    c = logits.shape[1]
    k_old = old_logits.shape[1]
    target = compatibility_targets(old_logits, labels, new_classes, c, old_future)
    log_q = torch.log_softmax(target, dim=1)
    p = torch.softmax(logits.float(), dim=1)
    new = torch.as_tensor(list(new_classes), dtype=torch.long, device=labels.device)
    mask = (labels < k_old) | (labels == ignore_index) | torch.isin(labels, new)
    per_pixel = -(p * log_q).sum(dim=1) / c
    per_pixel = torch.where(mask, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel if reduction == "none" else per_pixel.mean()


# --- The method --------------------------------------------------------------------------------


@dataclass
class INS(Method):
    """ℓ_UCE(FCA labels) + λ·ℓ_CID, see the module's docstring. :meth:`prepare` builds the
    training-only unknown channel and the centroid table."""

    name: str = "ins"
    threshold: float = FCA_THRESHOLD
    lambda_cid: float = LAMBDA_CID
    uses_prior: bool = True
    scores: str = "softmax"  # softmax scores: MiB's classifier initialisation
    head: nn.Conv2d | None = field(default=None, repr=False)
    centroids: torch.Tensor | None = field(default=None, repr=False)
    centroid_counts: torch.Tensor | None = field(default=None, repr=False)

    def prepare(self, ctx: StepContext) -> None:
        classifier = ctx.model.network.classifier
        self.setup(classifier, ctx.device)

    def setup(self, classifier: nn.Conv2d, device: torch.device | str | None = None) -> None:
        """Build the unknown head from the (grown) ``classifier`` and an empty centroid table."""
        self.head = unknown_head(classifier)
        if device is not None:
            self.head.to(device)
        k, d = classifier.out_channels, classifier.in_channels
        dev = self.head.weight.device
        self.centroids = torch.zeros(k, d, device=dev)
        self.centroid_counts = torch.zeros(k, device=dev)

    def extra_parameters(self) -> Iterable[nn.Parameter]:
        return list(self.head.parameters()) if self.head is not None else []

    def loss(self, b: StepBatch) -> LossOutput:
        if self.head is None or self.centroids is None or self.centroid_counts is None:
            raise RuntimeError("INS needs its unknown channel: call prepare(ctx) first")
        if b.embedding is None:
            raise ValueError("INS needs the network's embedding (the classifier's input)")
        k, k_old = b.logits.shape[1], b.old_logits.shape[1]
        unk = self.head(b.embedding)
        if unk.shape[-2:] != b.logits.shape[-2:]:
            unk = F.interpolate(unk, size=b.logits.shape[-2:], mode="bilinear", align_corners=False)
        logits = torch.cat([b.logits.float(), unk.float()], dim=1)  # channel K: unknown
        with torch.no_grad():
            emb = b.embedding.detach().float()
            small = resize_labels(b.labels, emb.shape[-2:])
            update_centroids(self.centroids, self.centroid_counts, emb, small, b.new_classes)
            labels = future_class_labels(
                b.labels, emb, self.centroids, self.centroid_counts, b.new_classes, k, self.threshold
            )
        seg = unbiased_cross_entropy(logits, labels, k_old, reduction="none").mean()
        cid = compatibility_distillation(logits, b.old_logits, labels, b.new_classes)
        unknown_share = float((labels == k).float().mean())
        return LossOutput(
            loss=seg + self.lambda_cid * cid,
            terms={"uce": float(seg.detach()), "cid": float(cid.detach()), "unknown": unknown_share},
        )


register("ins")(INS)
