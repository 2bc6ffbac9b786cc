"""CoNuSeg, a baseline: Wu, Wang, Zhao, Chen, Qin, "Continual Nuclei Segmentation via Prototype-Wise
Relation Distillation and Contrastive Learning", IEEE TMI 42(12), 2023 (authors' code: zzw-szu/CoNuSeg,
``utils/loss.py``, ``train.py``, ``run.py``, ``argparser.py``, ``segmentation_module.py``,
``net/denseunet_2d.py``; itself built on SDR and MiB).

The paper's text was not available to us; its abstract and the authors' code were. CoNuSeg's three
parts, against this engine:

- Pseudo-labelled unbiased cross-entropy (``PseudoUnbiasedCrossEntropy``, ``--puce``). A pixel the
  step's labels call background takes the old model's argmax class ĉ (softmax, background included)
  where the old model's top probability exceeds a per-class threshold θ_ĉ, and is then learned with
  the plain cross-entropy on ĉ; an unconfident background pixel is learned with MiB's unbiased
  cross-entropy (log q̃_0 = logsumexp(z_0..z_{K_old−1}) − logsumexp(z)); a new-class pixel with
  the plain cross-entropy. θ_c = min(median_c, 0.75): the median of the old model's top probability
  over the step's background pixels it assigns to c (``Trainer.find_median``, 20 bins over [0, 1]),
  capped at ``--base_threshold`` = 0.75; a class the old model never predicts there gets θ = 0.
  :func:`confidence_histogram`, :func:`class_confidence_thresholds`,
  :func:`pseudo_unbiased_cross_entropy`.
- Prototype-wise relation distillation (``PrototypeWiseRelationDistillationLoss``, ``--loss_prd``).
  On the pseudo-label map (the labels where they are not background, the old argmax elsewhere, no
  threshold), downsampled by nearest neighbour to the feature map: per class, the batch mean of the
  L2-normalised pixel features of the new model (P) and of the old one (P̂); for the old classes
  c = 0..K_old−1 (background included; a class absent from the batch has a zero prototype), the
  similarities P·Pᵀ/τ_cur and P̂·P̂ᵀ/τ_past without the diagonal are turned into row-wise softmaxes
  p and q, and the loss is mean_c Σ_{j≠c} −q_cj log p_cj. τ_cur = 0.2, τ_past = 0.01 (the class's
  defaults). :func:`batch_prototypes`, :func:`prototype_relation_distillation`.
- Prototype-wise contrastive learning with hard sampling (``PrototypeWiseContrastiveLoss``,
  ``--loss_pcon``, ``--hard``). Global prototypes G_c are running means of the L2-normalised
  features of each class (``Trainer._update_running_stats``, detached), updated at every iteration
  *before* the loss with the step's ground-truth new-class pixels. Local prototypes L_c are batch
  means on the pseudo-label map; for a new class, pixels the current model already predicts as c
  ("easy") are weighted by 1 − its top probability, the others ("hard") by 1. For every foreground
  class c present in the batch: −log exp(L_c·G_c/τ) / Σ_{j=1}^{K−1} exp(L_c·G_j/τ), averaged over
  those classes (background is neither an anchor nor a key); τ = 0.1.
  :func:`update_running_prototypes`, :func:`prototype_contrastive`.

The objective is ℓ_PUCE + 0.1·ℓ_PRD + 0.1·ℓ_PCon. Defaults, as read in the authors' code:

- ``lambda_prd = 0.1``, ``lambda_pcon = 0.1``, ``hard = True``: ``argparser.modify_command_options``
  for every step > 0 (``opts.puce = True`` there too).
- ``base_threshold = 0.75`` (``--base_threshold``), 20 histogram bins (``find_median``), thresholds
  min(median, base_threshold) — a *cap*, not PLOP's floor.
- ``current_temp = 0.2``, ``past_temp = 0.01`` (PRD), ``temp = 0.1`` (PCon): the classes' defaults.
- ℓ_PUCE is the per-pixel loss (``reduction='none'``, 0 at unlabelled pixels) averaged over *all*
  pixels of the batch (``loss.mean()`` in ``Trainer.train``).
- The features are the encoder's deepest output: ``features["body"]`` is ``DenseUnet_2d``'s ``fea``,
  the ReLU'd DenseNet-161 encoder output (2208 channels, stride 32), not the decoder's. Here that is
  ``layer4`` (stride 32), the ``features_from`` setting.
- Labels and logits reach the feature map's size by nearest-neighbour interpolation, as in the code.

Where this module departs from the code, on purpose:

- The global prototypes of the *old* classes: the code carries them over from the previous step's
  checkpoint (running means on the old training data). A model file of this engine holds no method
  state, so :meth:`CoNuSeg.prepare` estimates them with the frozen prior on the step's own images,
  from the background pixels it labels confidently (old argmax c ≥ 1 with top probability > θ_c),
  as running means of its normalised features. The background prototype is never used by the loss,
  so it is not estimated.
- Hard sampling: the code multiplies an easy pixel's feature by (1 − p) *before* its L2
  normalisation, which cancels the weight (any positive weight gives the same unit vector); we
  weight the normalised feature, which is what the paper's hard sampling describes, and we detach
  the weight (the code lets the gradient flow into the logits through it).
- The code's ``features[mask.expand(...)].view(D, −1)`` interleaves images and channels when the
  batch has more than one image; prototypes here are the true per-pixel means.
- A pixel labelled 255 (unlabelled) is never a class: it is skipped by the prototypes and
  contrastive terms (the code would index past the class table), and its PUCE term is 0.
- PCon drops the background as an anchor; the code drops the smallest class present in the batch,
  which is the background unless an image has none.
- ``find_median``'s running sum adds the bin *index* instead of its count (as PLOP's does); the
  median here uses the cumulative counts (:func:`~napari_cinuseg.methods._shared.histogram_medians`).
- The thresholds are computed once before training on the step's whole images (``ctx.batches``)
  rather than on its augmented crops.
- With no foreground class in the batch PCon is 0 (the code's empty mean would be NaN).

Labels are channel ids: 0 background, the new classes' channels (K_old..K−1), 255 unlabelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..losses import IGNORE, LossOutput
from . import Method, StepBatch, StepContext, register
from ._shared import histogram_medians, resize_labels

__all__ = [
    "CoNuSeg",
    "batch_prototypes",
    "class_confidence_thresholds",
    "confidence_histogram",
    "old_pseudo_labels",
    "prototype_contrastive",
    "prototype_relation_distillation",
    "pseudo_unbiased_cross_entropy",
    "resize_labels",
    "update_running_prototypes",
]

BASE_THRESHOLD = 0.75  # --base_threshold: the cap of the per-class thresholds
NB_BINS = 20  # find_median: bins of 0.05 on [0, 1]
LAMBDA_PRD = 0.1  # opts.loss_prd for step > 0
LAMBDA_PCON = 0.1  # opts.loss_pcon for step > 0
PRD_CURRENT_TEMP = 0.2  # PrototypeWiseRelationDistillationLoss(current_temp)
PRD_PAST_TEMP = 0.01  # PrototypeWiseRelationDistillationLoss(past_temp)
PCON_TEMP = 0.1  # PrototypeWiseContrastiveLoss(temp)
_EPS = 1e-6  # L2 normalisation floor: a dead (all-zero) pixel stays 0 without a 1e12 gradient


@torch.no_grad()
def old_pseudo_labels(labels: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """The pseudo-label map of PRD and PCon (``train.py``): the labels where they are not 0, the old
    model's softmax argmax (background included) at background pixels; 255 stays 255."""
    old_arg = old_logits.detach().argmax(dim=1)
    return torch.where(labels != 0, labels, old_arg)


# --- Pseudo-labelled unbiased cross-entropy ---------------------------------------------------


@torch.no_grad()
def confidence_histogram(labels: torch.Tensor, old_logits: torch.Tensor, nb_bins: int = NB_BINS) -> torch.Tensor:
    """(K_old, nb_bins) counts of the old model's top softmax probability on the background pixels
    (label 0), per old argmax class: one batch of CoNuSeg's ``find_median`` pass."""
    k_old = old_logits.shape[1]
    mask = labels == 0
    max_p, arg = torch.softmax(old_logits.detach().float(), dim=1).max(dim=1)
    bins = (max_p[mask] * nb_bins).long().clamp(0, nb_bins - 1)
    flat = torch.bincount(arg[mask] * nb_bins + bins, minlength=k_old * nb_bins)
    return flat.view(k_old, nb_bins)


@torch.no_grad()
def class_confidence_thresholds(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    base_threshold: float = BASE_THRESHOLD,
    nb_bins: int = NB_BINS,
) -> torch.Tensor:
    """CoNuSeg's per-class thresholds θ, (K_old,): the median of the old model's top probability on
    the background pixels it assigns to each class, capped at ``base_threshold`` (the code's
    ``min(thresholds[c], base_threshold)``); 0 for a class it never predicts there.
    ``batches`` yields (labels, old_logits)."""
    histogram = None
    for labels, old_logits in batches:
        h = confidence_histogram(labels, old_logits, nb_bins)
        histogram = h if histogram is None else histogram + h.to(histogram.device)
    if histogram is None:
        raise ValueError("no batch to compute the thresholds from")
    return histogram_medians(histogram).clamp_max(base_threshold)


def pseudo_unbiased_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    old_logits: torch.Tensor,
    thresholds: torch.Tensor,
    ignore_index: int = IGNORE,
    reduction: str = "mean",
) -> torch.Tensor:
    """CoNuSeg's ``PseudoUnbiasedCrossEntropy``, per pixel (with p = softmax(logits)):

    - background pixel (label < K_old) whose old argmax ĉ has top probability > θ_ĉ: −log p_ĉ;
    - other background pixel: −log Σ_{c<K_old} p_c (MiB's unbiased background);
    - new-class pixel: −log p_y;  unlabelled (``ignore_index``) pixel: 0.

    ``thresholds`` (≥ K_old entries) are indexed by the old argmax. ``reduction``: ``"mean"`` over
    *all* pixels (the code's ``loss.mean()``), or ``"none"`` for the (B, H, W) map.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    k, k_old = logits.shape[1], old_logits.shape[1]
    if not 1 <= k_old < k:
        raise ValueError(f"the model needs more channels ({k}) than the old one ({k_old})")
    logits = logits.float()
    log_den = torch.logsumexp(logits, dim=1)
    log_bg = torch.logsumexp(logits[:, :k_old], dim=1) - log_den
    with torch.no_grad():
        max_p, old_arg = torch.softmax(old_logits.detach().float(), dim=1).max(dim=1)
        background = labels < k_old
        confident = background & (max_p > thresholds.to(max_p.device)[old_arg])
        valid = labels != ignore_index
        target = torch.where(confident, old_arg, torch.where(valid & ~background, labels, torch.zeros_like(labels)))
    log_p = logits.gather(1, target[:, None])[:, 0] - log_den
    log_p = torch.where(background & ~confident, log_bg, log_p)
    per_pixel = torch.where(valid, -log_p, torch.zeros_like(log_p))
    return per_pixel if reduction == "none" else per_pixel.mean()


# --- Prototypes -------------------------------------------------------------------------------


def batch_prototypes(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class c < ``num_classes``, the mean over the whole batch of the L2-normalised features of
    its pixels (optionally each multiplied by ``weights``, (B, h, w); the mean still divides by the
    pixel count, as the code's ``torch.mean``). ``features`` (B, D, h, w), ``labels`` (B, h, w) at the
    features' size; other values (255) are skipped. Returns (num_classes, D) prototypes, zero for an
    absent class, and the (num_classes,) pixel counts."""
    normed = F.normalize(features.float(), p=2, dim=1, eps=_EPS)
    classes = torch.arange(num_classes, device=labels.device)
    masks = (labels[:, None] == classes[None, :, None, None]).to(normed.dtype)  # (B, C, h, w)
    counts = masks.sum(dim=(0, 2, 3))
    if weights is not None:
        masks = masks * weights[:, None].to(normed.dtype)
    sums = torch.einsum("bchw,bdhw->cd", masks, normed)
    return sums / counts.clamp_min(1)[:, None], counts


def prototype_relation_distillation(
    features: torch.Tensor,
    old_features: torch.Tensor,
    pseudo: torch.Tensor,
    old_classes: int,
    current_temp: float = PRD_CURRENT_TEMP,
    past_temp: float = PRD_PAST_TEMP,
) -> torch.Tensor:
    """CoNuSeg's PRD: ``features``/``old_features`` (B, D, h, w) of the new and the frozen model,
    ``pseudo`` (B, h, w) the pseudo-label map at their size, ``old_classes`` = K_old (background
    included). Over the rows c < K_old (absent classes have zero prototypes, as in the code):

        mean_c Σ_{j≠c} −softmax_j(P̂_c·P̂_j / τ_past) · log softmax_j(P_c·P_j / τ_cur)

    0 when K_old < 2. No gradient flows into ``old_features``."""
    if old_classes < 2:
        return features.new_zeros((), dtype=torch.float32)
    protos, _ = batch_prototypes(features, pseudo, old_classes)
    with torch.no_grad():
        old_protos, _ = batch_prototypes(old_features.detach(), pseudo, old_classes)
    off = ~torch.eye(old_classes, dtype=torch.bool, device=protos.device)
    sim = (protos @ protos.T)[off].view(old_classes, old_classes - 1) / current_temp
    old_sim = (old_protos @ old_protos.T)[off].view(old_classes, old_classes - 1) / past_temp
    q = torch.softmax(old_sim, dim=1)
    return -(q * torch.log_softmax(sim, dim=1)).sum(dim=1).mean()


@torch.no_grad()
def update_running_prototypes(
    prototypes: torch.Tensor,
    counts: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
) -> None:
    """``Trainer._update_running_stats``, in place: for each class of ``classes`` present in
    ``labels`` (B, h, w, at the features' size), the cumulative mean of its L2-normalised pixel
    features, G_c ← (Σ f̂ + n_c·G_c) / (n_c + m), n_c ← n_c + m."""
    if not len(classes):
        return
    k = prototypes.shape[0]
    means, m = batch_prototypes(features.detach(), labels, k)
    sel = torch.zeros(k, dtype=torch.bool, device=prototypes.device)
    sel[torch.as_tensor(list(classes), dtype=torch.long, device=prototypes.device)] = True
    sel &= m.to(sel.device) > 0
    m = m.to(counts.dtype)
    total = counts + m
    updated = (means * m[:, None] + prototypes * counts[:, None]) / total.clamp_min(1)[:, None]
    prototypes[sel] = updated[sel].to(prototypes.dtype)
    counts[sel] = total[sel]


def prototype_contrastive(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    logits: torch.Tensor,
    pseudo: torch.Tensor,
    old_classes: int,
    temp: float = PCON_TEMP,
    hard: bool = True,
) -> torch.Tensor:
    """CoNuSeg's PCon. ``features`` (B, D, h, w) of the model being trained, ``prototypes`` (K, D)
    the global (running) prototypes, ``logits`` (B, K, h, w) the model's logits at the features'
    size, ``pseudo`` (B, h, w) the pseudo-label map there, ``old_classes`` = K_old.

    Local prototypes L_c as :func:`batch_prototypes`; with ``hard``, the pixels of a new class
    c ≥ K_old that the model already predicts as c are weighted by 1 − max_c' softmax(logits)_c'
    (detached). For the foreground classes c ≥ 1 present in ``pseudo``:

        mean_c −log [ exp(L_c·G_c/τ) / Σ_{j=1}^{K−1} exp(L_c·G_j/τ) ]

    and 0 if there is none. No gradient flows into ``prototypes``."""
    k = prototypes.shape[0]
    weights = None
    if hard:
        with torch.no_grad():
            max_p, pred = torch.softmax(logits.detach().float(), dim=1).max(dim=1)
            easy = (pseudo >= old_classes) & (pseudo < k) & (pred == pseudo)
            weights = torch.where(easy, 1 - max_p, torch.ones_like(max_p))
    local, counts = batch_prototypes(features, pseudo, k, weights)
    present = counts > 0
    present[0] = False
    if not bool(present.any()):
        return features.new_zeros((), dtype=torch.float32)
    sim = local @ prototypes.detach().float().T / temp  # (K, K)
    log_p = sim[:, 1:] - torch.logsumexp(sim[:, 1:], dim=1, keepdim=True)  # keys: foreground only
    idx = torch.arange(1, k, device=sim.device)
    picked = log_p[idx, idx - 1]  # row c, key c
    return -(picked[present[1:]]).mean()


# --- The method --------------------------------------------------------------------------------

_STAGES = {"layer1": 0, "layer2": 1, "layer3": 2, "layer4": 3}


def _pick(features: Sequence[torch.Tensor], embedding: torch.Tensor | None, name: str) -> torch.Tensor:
    if name == "embedding":
        if embedding is None:
            raise ValueError("this network gives no embedding")
        return embedding
    return features[_STAGES[name]]


@dataclass
class CoNuSeg(Method):
    """ℓ_PUCE + 0.1·ℓ_PRD + 0.1·ℓ_PCon with the authors' defaults (see the module's docstring).
    :meth:`prepare` computes the per-class thresholds and the old classes' global prototypes with
    the prior."""

    name: str = "conuseg"
    lambda_prd: float = LAMBDA_PRD
    lambda_pcon: float = LAMBDA_PCON
    base_threshold: float = BASE_THRESHOLD
    nb_bins: int = NB_BINS
    prd_current_temp: float = PRD_CURRENT_TEMP
    prd_past_temp: float = PRD_PAST_TEMP
    pcon_temp: float = PCON_TEMP
    hard: bool = True
    features_from: str = "layer4"  # features["body"]: the encoder's deepest output
    uses_prior: bool = True
    scores: str = "softmax"  # softmax scores: MiB's classifier initialisation
    thresholds: torch.Tensor | None = field(default=None, repr=False)
    prototypes: torch.Tensor | None = field(default=None, repr=False)
    prototype_counts: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.features_from not in (*_STAGES, "embedding"):
            raise ValueError(f"features_from must be one of {', '.join((*_STAGES, 'embedding'))}")

    @torch.no_grad()
    def prepare(self, ctx: StepContext) -> None:
        net = ctx.prior.network
        k_old = ctx.prior.num_channels
        k = k_old + len(ctx.new_classes)
        histogram, kept = None, []
        for x, labels in ctx.batches():
            out = net(x)
            h = confidence_histogram(labels, out.logits, self.nb_bins)
            histogram = h if histogram is None else histogram + h
            feats = _pick(out.features, out.embedding, self.features_from).float()
            max_p, arg = torch.softmax(out.logits.float(), dim=1).max(dim=1)
            size = feats.shape[-2:]
            small = torch.stack([max_p, arg.float(), (labels == 0).float()], dim=1)
            small = F.interpolate(small, size=size, mode="nearest")
            kept.append((feats, small))
        if histogram is None:
            raise ValueError("the step has no image")
        self.thresholds = histogram_medians(histogram).clamp_max(self.base_threshold)
        dim = kept[0][0].shape[1]
        self.prototypes = torch.zeros(k, dim, device=ctx.device)
        self.prototype_counts = torch.zeros(k, device=ctx.device)
        old_classes = list(range(1, k_old))
        for feats, small in kept:
            max_p, arg, bg = small[:, 0], small[:, 1].long(), small[:, 2] > 0
            confident = bg & (arg >= 1) & (max_p > self.thresholds[arg])
            pseudo = torch.where(confident, arg, torch.full_like(arg, IGNORE))
            update_running_prototypes(self.prototypes, self.prototype_counts, feats, pseudo, old_classes)

    def loss(self, b: StepBatch) -> LossOutput:
        if self.thresholds is None or self.prototypes is None or self.prototype_counts is None:
            raise RuntimeError("CoNuSeg needs its thresholds and prototypes: call prepare(ctx) first")
        k_old = b.old_logits.shape[1]
        feats = _pick(b.features, b.embedding, self.features_from).float()
        old_feats = _pick(b.old_features, b.old_embedding, self.features_from).float()
        size = feats.shape[-2:]
        with torch.no_grad():
            labels_small = resize_labels(b.labels, size)
            update_running_prototypes(self.prototypes, self.prototype_counts, feats, labels_small, b.new_classes)
            pseudo_small = resize_labels(old_pseudo_labels(b.labels, b.old_logits), size)
        puce = pseudo_unbiased_cross_entropy(b.logits, b.labels, b.old_logits, self.thresholds)
        prd = prototype_relation_distillation(
            feats, old_feats, pseudo_small, k_old, self.prd_current_temp, self.prd_past_temp
        )
        logits_small = F.interpolate(b.logits.float(), size=size, mode="nearest")
        pcon = prototype_contrastive(
            feats, self.prototypes, logits_small, pseudo_small, k_old, self.pcon_temp, self.hard
        )
        return LossOutput(
            loss=puce + self.lambda_prd * prd + self.lambda_pcon * pcon,
            terms={"puce": float(puce.detach()), "prd": float(prd.detach()), "pcon": float(pcon.detach())},
        )


register("conuseg")(CoNuSeg)
