"""PLOP, a baseline: Douillard et al., "PLOP: Learning without Forgetting for Continual Semantic
Segmentation", CVPR 2021 (authors' code: arthurdouillard/CVPR2021_PLOP, ``train.py`` and
``argparser.py``).

PLOP's two parts, against this engine:

- Sec. 3.1 "Local POD" (multi-scale local pooled outputs distillation): every feature map is
  squared, cut at scale s into s×s regions, and each region is pooled along its width and along
  its height; all those vectors, for s = 1, 2, 4, are concatenated (Φ), and the distance of
  Φ(old) and Φ(new) is penalised. :func:`local_pod`.
- Sec. 3.2 "Confidence-based pseudo-labelling": a background pixel of the step's labels takes the
  old model's argmax class where the old model's entropy there is below its class's median
  entropy (over the step's background pixels), and is ignored otherwise; the cross-entropy is then
  weighted, per image, by the share of background pixels that were confident (ν in the paper,
  ``classif_adaptive_factor`` in the code). :func:`class_entropy_thresholds`,
  :func:`entropy_pseudo_labels`, :func:`classif_adaptive_factor`.

The objective is that weighted softmax cross-entropy + Local POD. As read in the authors' code
(``argparser.py``, ``--method PLOP``; ``train.py``, ``features_distillation`` and ``find_median``):

- Local POD: ``pod="local"``, ``spp_scales=[1, 2, 4]``, ``pod_prepro="pow"`` (square); each
  map's embedding is L2-normalised (``features_distillation(normalize=True)``, its default), except
  the logits' (``switch.after`` sets ``normalize`` from ``norm``, default False), and no
  per-scale normalisation; the distance is the Euclidean ("frobenius") norm per image, averaged
  over the batch, weighted per map, summed, and divided by the number of maps.
- ``pod_factor = 0.01`` for the encoder maps; ``pod_logits=True`` adds the logits as the last map
  with ``pod_options.switch.after.factor = 0.0005``; its extra (new) channels are summed into the
  background channel (``extra_channels: "sum"``) so that it matches the old logits.
- The POD schedule (``use_pod_schedule``, on by default) multiplies every map's term by
  sqrt(|C^{0:t}| / |C^t|) = sqrt(K / number of new classes).
- ``pseudo="entropy"``, ``threshold=0.001``: a class's entropy threshold is its median entropy,
  floored at 0.001 (``max(median, threshold)`` in entropy mode). The median is approximated from a
  100-bin histogram per class over the old model's predictions on the step's background pixels.
- The entropy is PLOP's ``entropy``: −(1/log C_old)·mean_c p_c log(p_c + 1e-8), divided again by
  ``max_entropy`` = log K (``nb_current_classes``, the new model's channels), both when the
  thresholds are made and when they are used, as in the code.
- ``classif_adaptive_factor=True``: the per-pixel cross-entropy (``reduction='none'``, 0 at
  ignored pixels) is multiplied per image by (confident background pixels) / (background pixels),
  then averaged over all pixels of the batch (``loss.mean()``); ``classif_adaptive_min_factor``
  is 0, so it is not clamped.
- ``init_balanced=True`` (MiB's classifier initialisation) is what
  :meth:`~napari_cinuseg.model.network.NucleiSegNet.add_classes` does.

Where this module departs from the code, on purpose:

- ``StepBatch`` gives the four ResNet stages (layer1..layer4) and the logits; PLOP also distils
  its ASPP output ("pre_logits") and uses the logits before upsampling ("sem_logits_small"). Here
  the maps are the four stages + the logits at input resolution, so the sum is divided by 5.
- A scale s is skipped for a map with fewer than s pixels along a side (PLOP's slicing would make
  empty regions and a NaN); regions are cut with h//s rows and w//s columns (PLOP uses w//s for
  both, the same for its square crops); leftover rows/columns are dropped as in PLOP.
- ``find_median`` accumulates the bin *index* instead of the bin count in its running sum; the
  histogram median here uses the cumulative counts, which is what its docstring describes.
- An image without background pixels gets the factor 1 (PLOP's 0/0 would be NaN).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..losses import IGNORE, LossOutput
from . import Method, StepBatch, StepContext, register
from ._shared import histogram_medians  # shared with CoNuSeg

__all__ = [
    "PLOP",
    "class_entropy_thresholds",
    "classif_adaptive_factor",
    "entropy_histogram",
    "entropy_pseudo_labels",
    "local_pod",
    "local_pod_embedding",
    "normalized_entropy",
]

POD_SCALES = (1, 2, 4)  # spp_scales
POD_FACTOR = 0.01  # pod_factor, encoder maps
POD_LOGITS_FACTOR = 0.0005  # pod_options.switch.after.factor, the logits
ENTROPY_THRESHOLD = 0.001  # threshold: floor of the per-class median entropies
NB_BINS = 100  # find_median's bins in entropy mode


# --- Local POD (Sec. 3.1) --------------------------------------------------------------------


def local_pod_embedding(x: torch.Tensor, scales: Sequence[int] = POD_SCALES) -> torch.Tensor:
    """Φ of Local POD for a (B, C, H, W) map (already squared): per scale s and per region of the
    s×s grid, the region's mean along its width (C·h values) and along its height (C·w values),
    all concatenated into (B, D)."""
    b, _, h, w = x.shape
    parts = []
    for s in scales:
        kh, kw = h // s, w // s
        if kh < 1 or kw < 1:
            continue  # the map is smaller than the grid
        for i in range(s):
            for j in range(s):
                region = x[..., i * kh : (i + 1) * kh, j * kw : (j + 1) * kw]
                parts.append(region.mean(dim=3).flatten(1))  # pooled over the width
                parts.append(region.mean(dim=2).flatten(1))  # pooled over the height
    if not parts:
        return x.new_zeros((b, 0))
    return torch.cat(parts, dim=1)


def _merge_extra_channels(new: torch.Tensor, k_old: int) -> torch.Tensor:
    """PLOP's ``extra_channels="sum"``: channels k_old.. are added to channel 0."""
    return torch.cat([new[:, :1] + new[:, k_old:].sum(dim=1, keepdim=True), new[:, 1:k_old]], dim=1)


def local_pod(
    features: Sequence[torch.Tensor],
    old_features: Sequence[torch.Tensor],
    scales: Sequence[int] = POD_SCALES,
    factors: Sequence[float] | None = None,
    reduction: str = "mean",
    normalize: Sequence[bool] | bool = True,
) -> torch.Tensor:
    """Local POD (Sec. 3.1) over a list of maps of the model being trained and of the frozen one.

    For map l: d_l = ‖N(Φ(f_l²)) − N(Φ(f̂_l²))‖₂ per image (:func:`local_pod_embedding`), where N
    is an L2 normalisation of the whole embedding where ``normalize`` (per map, or one flag for
    all) says so: PLOP's ``features_distillation`` normalises by default (``normalize=True``)
    and its ``switch.after`` options turn it off for the logits (``norm`` defaults to False).
    Returns
    (1/L)·Σ_l factor_l·mean_batch(d_l), or with ``reduction="none"`` the (B,) per-image values
    before the batch mean. ``factors`` default to 1 per map. A new map with more channels than the
    old one (the logits) has its extra channels summed into channel 0 first. No gradient flows
    into ``old_features``.
    """
    if len(features) != len(old_features) or not features:
        raise ValueError("give the same, non-zero number of maps for both models")
    factors = [1.0] * len(features) if factors is None else list(factors)
    if len(factors) != len(features):
        raise ValueError(f"give one factor per map: {len(features)} maps, {len(factors)} factors")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    norms = [normalize] * len(features) if isinstance(normalize, bool) else list(normalize)
    total = None
    for new, old, factor, norm in zip(features, old_features, factors, norms):
        new, old = new.float(), old.detach().float()
        if new.shape[1] > old.shape[1]:
            new = _merge_extra_channels(new, old.shape[1])
        if new.shape != old.shape:
            raise ValueError(f"maps of different shapes: {tuple(new.shape)} and {tuple(old.shape)}")
        emb, old_emb = local_pod_embedding(new.pow(2), scales), local_pod_embedding(old.pow(2), scales)
        if norm:
            emb, old_emb = F.normalize(emb, dim=1, p=2), F.normalize(old_emb, dim=1, p=2)
        diff = emb - old_emb
        term = factor * torch.linalg.vector_norm(diff, dim=1)
        total = term if total is None else total + term
    per_image = total / len(features)
    return per_image if reduction == "none" else per_image.mean()


# --- Entropy-based pseudo-labels (Sec. 3.2) --------------------------------------------------


def normalized_entropy(old_logits: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """PLOP's per-pixel entropy of softmax(old_logits), (B, H, W), as its code computes it:
    −(1/log C_old)·mean_c p_c log(p_c + 1e-8), divided by log(``num_classes``) (PLOP's
    ``max_entropy``, with ``nb_current_classes`` = the new model's K; default C_old)."""
    c_old = old_logits.shape[1]
    num_classes = c_old if num_classes is None else num_classes
    if c_old < 2 or num_classes < 2:
        raise ValueError("the entropy needs at least two classes")
    p = torch.softmax(old_logits.detach().float(), dim=1)
    ent = -(p * torch.log(p + 1e-8)).mean(dim=1) / math.log(c_old)
    return ent / math.log(num_classes)


@torch.no_grad()
def entropy_histogram(
    labels: torch.Tensor, old_logits: torch.Tensor, num_classes: int | None = None, nb_bins: int = NB_BINS
) -> torch.Tensor:
    """(K_old, nb_bins) counts of the normalised entropy of the background pixels (label 0), per
    old argmax class: one batch of PLOP's ``find_median`` pass. Add the batches' histograms."""
    k_old = old_logits.shape[1]
    mask = labels == 0
    ent = normalized_entropy(old_logits, num_classes)[mask]
    cls = old_logits.argmax(dim=1)[mask]
    bins = (ent * nb_bins).long().clamp(0, nb_bins - 1)
    flat = torch.bincount(cls * nb_bins + bins, minlength=k_old * nb_bins)
    return flat.view(k_old, nb_bins)


@torch.no_grad()
def class_entropy_thresholds(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int | None = None,
    threshold: float = ENTROPY_THRESHOLD,
    nb_bins: int = NB_BINS,
) -> torch.Tensor:
    """PLOP's per-class entropy thresholds, (K_old,): the median normalised entropy of the old
    model on the background pixels it assigns to each class, floored at ``threshold`` (PLOP's
    ``max(median, threshold)``, default 0.001; a class it never predicts gets ``threshold``).

    ``batches`` yields (labels, old_logits); ``num_classes`` is the new model's K (PLOP's
    ``nb_current_classes``), used by :func:`normalized_entropy`.
    """
    histogram = None
    for labels, old_logits in batches:
        h = entropy_histogram(labels, old_logits, num_classes, nb_bins)
        histogram = h if histogram is None else histogram + h.to(histogram.device)
    if histogram is None:
        raise ValueError("no batch to compute the thresholds from")
    return histogram_medians(histogram).clamp_min(threshold)


@torch.no_grad()
def entropy_pseudo_labels(
    labels: torch.Tensor,
    old_logits: torch.Tensor,
    thresholds: torch.Tensor,
    num_classes: int | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """PLOP's ``pseudo == "entropy"`` labels (Sec. 3.2).

    A background pixel (label < K_old) takes the old argmax class ĉ (background included) where
    its normalised entropy is below ``thresholds[ĉ]``, and ``ignore_index`` otherwise; new-class
    and ``ignore_index`` pixels keep their label. ``num_classes`` as in
    :func:`class_entropy_thresholds` (use the same value for both).
    """
    k_old = old_logits.shape[1]
    background = labels < k_old
    pseudo = old_logits.argmax(dim=1)
    confident = normalized_entropy(old_logits, num_classes) < thresholds.to(old_logits.device)[pseudo]
    out = torch.where(background & confident, pseudo, labels)
    return torch.where(background & ~confident, torch.full_like(labels, ignore_index), out)


@torch.no_grad()
def classif_adaptive_factor(
    labels: torch.Tensor, pseudo: torch.Tensor, k_old: int, ignore_index: int = IGNORE
) -> torch.Tensor:
    """PLOP's ``classif_adaptive_factor`` (ν), (B,): per image, the share of background pixels
    (label < K_old) that got a pseudo-label; 1 for an image without background pixels."""
    background = labels < k_old
    num = (background & (pseudo != ignore_index)).flatten(1).sum(1).float()
    den = background.flatten(1).sum(1).float()
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(den))


# --- The method --------------------------------------------------------------------------------


@dataclass
class PLOP(Method):
    """ν-weighted cross-entropy on entropy pseudo-labels + Local POD, PLOP's defaults (see the
    module's docstring). :meth:`prepare` computes the class thresholds with the prior."""

    name: str = "plop"
    pod_factor: float = POD_FACTOR
    pod_logits_factor: float = POD_LOGITS_FACTOR
    scales: tuple[int, ...] = POD_SCALES
    pod_schedule: bool = True
    threshold: float = ENTROPY_THRESHOLD
    nb_bins: int = NB_BINS
    uses_prior: bool = True
    scores: str = "softmax"  # softmax scores: MiB's classifier initialisation
    thresholds: torch.Tensor | None = field(default=None, repr=False)

    @torch.no_grad()
    def prepare(self, ctx: StepContext) -> None:
        net = ctx.prior.network
        k = ctx.prior.num_channels + len(ctx.new_classes)
        pairs = ((labels, net(x).logits) for x, labels in ctx.batches())
        self.thresholds = class_entropy_thresholds(pairs, k, self.threshold, self.nb_bins)

    def loss(self, b: StepBatch) -> LossOutput:
        if self.thresholds is None:
            raise RuntimeError("PLOP needs its entropy thresholds: call prepare(ctx) first")
        k, k_old = b.logits.shape[1], b.old_logits.shape[1]
        pseudo = entropy_pseudo_labels(b.labels, b.old_logits, self.thresholds, k)
        nu = classif_adaptive_factor(b.labels, pseudo, k_old)
        ce_map = F.cross_entropy(b.logits.float(), pseudo, ignore_index=IGNORE, reduction="none")
        ce = (ce_map * nu[:, None, None]).mean()
        factors = [self.pod_factor] * len(b.features) + [self.pod_logits_factor]
        norms = [True] * len(b.features) + [False]  # the stages normalised, the logits not (PLOP's defaults)
        pod = local_pod([*b.features, b.logits], [*b.old_features, b.old_logits], self.scales, factors, normalize=norms)
        if self.pod_schedule:
            pod = pod * math.sqrt(k / len(b.new_classes))
        return LossOutput(
            loss=ce + pod,
            terms={"ce": float(ce.detach()), "pod": float(pod.detach()), "nu": float(nu.mean())},
        )


register("plop")(PLOP)
