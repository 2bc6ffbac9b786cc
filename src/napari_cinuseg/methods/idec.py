"""IDEC, a baseline: Zhao, Yuan, Shi, "Inherit With Distillation and Evolve With Contrast: Exploring
Class Incremental Semantic Segmentation Without Exemplar Memory", IEEE TPAMI 2023,
doi:10.1109/TPAMI.2023.3273574 (authors' code: YBIO/IDEC, ``main.py``, ``run.sh``, ``utils/loss.py``,
``utils/contrastive_learning.py``, ``network/_deeplab.py``).

The paper's text was not available to us, only its abstract; the public code is an SSUL-based
DeepLabV3 pipeline in which parts of IDEC appear (the layer-weighted feature distillation, the
pseudo-labels, a region-wise triplet loss). What follows combines the two; where they are silent
the choice is ours and named below. IDEC's parts, against this engine:

- Pseudo-labels and the classification loss. A pixel the step's labels call background takes the
  old model's argmax class where that class is a foreground one and its sigmoid score is ≥ 0.7
  (``main.py``: ``(labels <= fg_idx) & (pred_labels > fg_idx) & (pred_scores >= pseudo_thresh)``,
  sigmoid because ``--loss_type bce_loss``); the model is trained with the one-hot BCE summed over
  channels and averaged over the labelled pixels of the batch
  (``BCEWithLogitsLossWithIgnoreIndex``). :func:`threshold_pseudo_labels`, :func:`bce_with_ignore`.
- DADA, dense knowledge distillation on all aspects: every distilled map goes through
  ``KnowledgeDistillationLoss(alpha=2.0)`` (``--KD_loss_type KD_loss``), per pixel
  −(1/C) Σ_c softmax(α·old)_c · log softmax(new)_c over the map's channels (the new map narrowed to
  the old one's channels), averaged over the pixels; the intermediate maps are weighted
  ``KD_layer_weight = {l1: 0.5, l2: 1.0, l3: 2.0, out: 1.0}`` (``--use_KD_layer_weight``), and the
  abstract adds the output logits ("distils intermediate-layer features and output-logits
  collaboratively"). :func:`channel_distillation`, :func:`dense_distillation`.
- ARCL, asymmetric region-wise contrastive learning: in ``class_contrastive_learning`` a class
  region of an image is taken, the *old* model's feature of the region is the anchor, the new
  model's feature of the same region the positive and the new model's feature of the rest of the
  image the negative, in a triplet margin loss (``nn.TripletMarginLoss(margin=1.0, p=2)``), averaged
  over the regions. The anchor comes from the frozen model only: that is the asymmetry.
  :func:`region_embeddings`, :func:`asymmetric_region_contrast`.

The objective is ℓ_BCE + ℓ_DADA + λ_ARCL·ℓ_ARCL. Defaults, as read in the authors' code:

- ``pseudo_threshold = 0.7`` (``run.sh``: ``THRESH=0.7``; ``--pseudo_thresh`` default 0.7).
- ``kd_alpha = 2.0``: ``utils.loss.KnowledgeDistillationLoss(alpha=2.0)`` for ``KD_loss``.
- ``layer_weights = (0.5, 1.0, 2.0, 1.0)`` for l1, l2, l3, out. ``main.py`` also multiplies the l1..l3
  terms by ``lamb ** (epoch / epochs)`` with ``--lamb`` 1.0, i.e. by 1: left out.
- ``margin = 1.0`` and the Euclidean distance (with ``F.pairwise_distance``'s eps, as
  ``nn.TripletMarginLoss``); the contrastive term is added with weight 1 (``CL_loss`` is backpropagated
  as it is), so ``lambda_arcl = 1.0``.
- The features of ARCL are bilinearly upsampled to the logits' size before the regions are cut
  (``F.interpolate(feature, size=imgsize, mode='bilinear')``).

Mapping to this network and our choices, where the code is silent:

- IDEC's l1, l2, l3 are ASPP heads on ResNet layer1..layer3 and "out" the ASPP on layer4, which is
  the classifier's input. Here l1..l3 are the encoder's ``layer1``..``layer3`` and "out" is the
  decoder's output (``StepBatch.embedding``, the classifier's input).
- The logits are distilled with the same KD (old channels only), weight ``lambda_logits = 1.0``:
  the code's ``KD_outlogits`` line is commented out, so no weight can be read.
- ARCL's regions are the pseudo-label map (new classes from the labels, old classes from the
  confident old predictions, the rest background); the code cuts them from the old model's argmax
  alone, which never shows the new classes, while the abstract contrasts "known classes, current
  classes, and unknown classes". Every class present in an image is a region, its complement (the
  image's other labelled pixels) the negative.
- Region embeddings are the mean feature of the region, L2-normalised before the triplet, so that
  the margin 1.0 means the same whatever the feature scale (distances lie in [0, 2]).

Where this module departs from the code, on purpose:

- No "unknown" class: the code (SSUL's ``--unknown``, ``--w_transfer``) adds a saliency-based unknown
  channel; nothing of it is in IDEC's abstract and this engine has no saliency maps.
- No ``--freeze``: ``run.sh`` freezes all but the last classifier layers (SSUL), which would leave
  the distilled features without a gradient; IDEC's point is to distil into a learning network.
- ``class_contrastive_learning`` draws random classes, uses only the batch's first image, keeps the
  first 256 positive entries of each masked feature vector and skips a class when the three vectors'
  lengths differ; here each present class of each image is one region, with mean region features.
- The per-class "dynamic" pseudo-label thresholds the abstract mentions are not in the code; the
  code's single threshold 0.7 is used.
- The BCE averages over the labelled pixels of the batch and is 0 when there are none (the code's
  empty mean is NaN).

Labels are channel ids: 0 background, the new classes' channels (K_old..K−1), 255 unlabelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import IGNORE, LossOutput
from . import Method, StepBatch, register

__all__ = [
    "IDEC",
    "asymmetric_region_contrast",
    "bce_with_ignore",
    "channel_distillation",
    "dense_distillation",
    "region_embeddings",
    "threshold_pseudo_labels",
]

PSEUDO_THRESHOLD = 0.7  # run.sh THRESH / --pseudo_thresh
KD_ALPHA = 2.0  # KnowledgeDistillationLoss(alpha=2.0)
LAYER_WEIGHTS = (0.5, 1.0, 2.0, 1.0)  # KD_layer_weight: l1, l2, l3, out
LAMBDA_LOGITS = 1.0  # our choice: KD_outlogits is commented out in the code
LAMBDA_ARCL = 1.0  # CL_loss is backpropagated unweighted
MARGIN = 1.0  # nn.TripletMarginLoss(margin=1.0, p=2.0)


@torch.no_grad()
def threshold_pseudo_labels(
    labels: torch.Tensor, old_logits: torch.Tensor, threshold: float = PSEUDO_THRESHOLD
) -> torch.Tensor:
    """IDEC's pseudo-labels (``main.py``, ``--pseudo``): a pixel labelled 0 takes the old model's
    argmax class ĉ over all its channels when ĉ ≥ 1 and sigmoid(z_ĉ) ≥ ``threshold``; every other
    pixel (new classes, 255, unclaimed background) keeps its label."""
    score, arg = torch.sigmoid(old_logits.detach().float()).max(dim=1)
    claim = (labels == 0) & (arg > 0) & (score >= threshold)
    return torch.where(claim, arg, labels)


def bce_with_ignore(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """``BCEWithLogitsLossWithIgnoreIndex(reduction='mean')``: Σ_c BCE(one-hot(y)_c, σ(z_c)) per
    pixel, averaged over the labelled pixels of the whole batch; 0 if none is labelled."""
    logits = logits.float()
    valid = labels != ignore_index
    target = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), logits.shape[1])
    target = target.permute(0, 3, 1, 2).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
    return torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum() / valid.sum().clamp_min(1)


def channel_distillation(new: torch.Tensor, old: torch.Tensor, alpha: float = KD_ALPHA) -> torch.Tensor:
    """IDEC's ``KnowledgeDistillationLoss(alpha)`` on a map: ``new`` (B, C, h, w) narrowed to the
    C_old channels of ``old`` (B, C_old, h, w), then the mean over pixels of
    −(1/C_old) Σ_c softmax(α·old)_c log softmax(new)_c (softmax over channels). No gradient flows
    into ``old``."""
    c_old = old.shape[1]
    if new.shape[1] < c_old or new.shape[-2:] != old.shape[-2:]:
        raise ValueError(f"maps do not match: {tuple(new.shape)} and {tuple(old.shape)}")
    log_p = torch.log_softmax(new.float()[:, :c_old], dim=1)
    q = torch.softmax(old.detach().float() * alpha, dim=1)
    return -(q * log_p).mean(dim=1).mean()


def dense_distillation(
    maps: Sequence[torch.Tensor],
    old_maps: Sequence[torch.Tensor],
    weights: Sequence[float] = LAYER_WEIGHTS,
    alpha: float = KD_ALPHA,
) -> torch.Tensor:
    """DADA's feature part: Σ_l w_l · :func:`channel_distillation` (f_l, f̂_l)."""
    if not len(maps) == len(old_maps) == len(weights) or not maps:
        raise ValueError("give one old map and one weight per map")
    total = None
    for new, old, w in zip(maps, old_maps, weights):
        term = w * channel_distillation(new, old, alpha)
        total = term if total is None else total + term
    return total


def region_embeddings(
    features: torch.Tensor, regions: torch.Tensor, num_classes: int, ignore_index: int = IGNORE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and class c < ``num_classes``: the mean feature over the region {y = c} and over its
    complement (the image's other pixels that are not ``ignore_index``). ``features`` (B, D, H, W) and
    ``regions`` (B, H, W) at the same size. Returns (region means (B, C, D), complement means
    (B, C, D), region counts (B, C), complement counts (B, C))."""
    feats = features.float()
    classes = torch.arange(num_classes, device=regions.device)
    masks = (regions[:, None] == classes[None, :, None, None]).to(feats.dtype)  # (B, C, H, W)
    valid = (regions != ignore_index).to(feats.dtype)
    counts = masks.sum(dim=(2, 3))
    sums = torch.einsum("bchw,bdhw->bcd", masks, feats)
    all_sum = torch.einsum("bhw,bdhw->bd", valid, feats)
    rest_counts = valid.sum(dim=(1, 2))[:, None] - counts
    rest_sums = all_sum[:, None] - sums
    return sums / counts.clamp_min(1)[..., None], rest_sums / rest_counts.clamp_min(1)[..., None], counts, rest_counts


def asymmetric_region_contrast(
    features: torch.Tensor,
    old_features: torch.Tensor,
    regions: torch.Tensor,
    num_classes: int,
    margin: float = MARGIN,
    normalize: bool = True,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """ARCL as a region-wise triplet: for every image and every class c with a non-empty region
    and complement, anchor a = the *old* model's region embedding (detached), positive p = the new
    model's embedding of the same region, negative n = the new model's embedding of the complement:

        max(‖a − p‖₂ − ‖a − n‖₂ + margin, 0)

    (``F.pairwise_distance``, as ``nn.TripletMarginLoss``), averaged over those regions; 0 if none.
    ``features``/``old_features`` (B, D, h, w) are bilinearly upsampled to ``regions``' (B, H, W)
    size first; region embeddings are L2-normalised when ``normalize``."""
    size = regions.shape[-2:]
    feats, old_feats = features.float(), old_features.detach().float()
    if feats.shape[-2:] != size:
        feats = F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        old_feats = F.interpolate(old_feats, size=size, mode="bilinear", align_corners=False)
    pos, neg, counts, rest = region_embeddings(feats, regions, num_classes, ignore_index)
    with torch.no_grad():
        anchor, _, _, _ = region_embeddings(old_feats, regions, num_classes, ignore_index)
    if normalize:
        pos, neg, anchor = (F.normalize(v, p=2, dim=-1, eps=1e-6) for v in (pos, neg, anchor))
    use = (counts > 0) & (rest > 0)
    if not bool(use.any()):
        return features.new_zeros((), dtype=torch.float32)
    a, p, n = anchor[use], pos[use], neg[use]
    losses = (F.pairwise_distance(a, p, p=2) - F.pairwise_distance(a, n, p=2) + margin).clamp_min(0)
    return losses.mean()


@dataclass
class IDEC(Method):
    """ℓ_BCE(pseudo-labels) + ℓ_DADA + λ·ℓ_ARCL, see the module's docstring."""

    name: str = "idec"
    pseudo_threshold: float = PSEUDO_THRESHOLD
    kd_alpha: float = KD_ALPHA
    layer_weights: tuple[float, ...] = LAYER_WEIGHTS  # layer1, layer2, layer3, embedding
    lambda_logits: float = LAMBDA_LOGITS
    lambda_arcl: float = LAMBDA_ARCL
    margin: float = MARGIN
    normalize_regions: bool = True
    uses_prior: bool = True
    scores: str = "sigmoid"  # per-class sigmoid scores: the new rows start low, the old scores untouched

    def loss(self, b: StepBatch) -> LossOutput:
        if b.embedding is None or b.old_embedding is None:
            raise ValueError("IDEC needs the network's embedding (the classifier's input), old and new")
        if len(self.layer_weights) != 4:
            raise ValueError("layer_weights: one weight for each of layer1, layer2, layer3 and the embedding")
        k = b.logits.shape[1]
        pseudo = threshold_pseudo_labels(b.labels, b.old_logits, self.pseudo_threshold)
        bce = bce_with_ignore(b.logits, pseudo)
        maps = [*b.features[:3], b.embedding]
        old_maps = [*b.old_features[:3], b.old_embedding]
        kd_feat = dense_distillation(maps, old_maps, self.layer_weights, self.kd_alpha)
        kd_logits = channel_distillation(b.logits, b.old_logits, self.kd_alpha)
        arcl = asymmetric_region_contrast(b.embedding, b.old_embedding, pseudo, k, self.margin, self.normalize_regions)
        loss = bce + kd_feat + self.lambda_logits * kd_logits + self.lambda_arcl * arcl
        return LossOutput(
            loss=loss,
            terms={
                "bce": float(bce.detach()),
                "kd_feat": float(kd_feat.detach()),
                "kd_logits": float(kd_logits.detach()),
                "arcl": float(arcl.detach()),
            },
        )


register("idec")(IDEC)
