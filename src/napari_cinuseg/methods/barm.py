"""BARM, a baseline: Zhang and Gao, "Background Adaptation with Residual Modeling for Exemplar-Free
Class-Incremental Semantic Segmentation", ECCV 2024 (authors' code: ANDYZAQ/BARM,
``trainer/trainer.py`` (``Trainer.train_episode``, ``init_optimizer``, ``init_ckpt``),
``network/_deeplab.py`` (``DeepLabHeadBgA``), ``utils/loss.py``, ``utils/parser.py``, ``run.sh``).

The paper's text was not among the sources available here; the parts below follow the authors'
code and the paper's abstract (which names the losses), and the equations are written from the
code.

BARM does not let the step re-learn the background classifier. It keeps the old background logit
and adds, in an extra channel, a *residual* r_t learned at step t, so that the step's background is
z_0^{t−1} + r_t; the residuals of all steps are summed ("aggregated") into the background. Notation:
z the logits of the model being trained, ẑ the frozen prior's, K_old its channels, y the labels,
f and f̂ the embeddings (the classifier's input), Ω⁺ the new-class pixels, Ω⁰ the pixels labelled 0.

- Background adaptation channel (``DeepLabHeadBgA``): r_t = w_r·f + b_r, a 1×1 convolution on
  the embedding, built in :meth:`BARM.prepare` and trained as an extra parameter. During the step
  the background logit is z̃_0 = sg(z_0) + r_t (``adp_outputs``: the old part is detached, so the
  background row learns only from the distillation); the old classes' logits are detached too.
- Pseudo-labels (``train_episode``, ``--pseudo --pseudo_thresh 0.7``): a pixel labelled 0 takes the
  old model's argmax class c = argmax_k σ(ẑ_k) when c ≠ 0 and σ(ẑ_c) ≥ 0.7. :func:`pseudo_labels`.
- Pseudo Background BCE (PB-BCE, ``std_loss``): Σ_k BCE(z̃_k, onehot(ỹ)_k) averaged over the
  labelled pixels of the batch (``BCEWithLogitsLossWithIgnoreIndex``). :func:`pseudo_background_bce`.
- Background Adaptation losses (``bga_ce``, ``bga_t``), at the embedding's resolution:
  L_ba_ce = mean_{Ω⁺} BCE(r_t, 0) (the residual must lower the background on new classes);
  L_ba_t = mean_{Ω⁰} max(0, (σ(r_t) − 1)² − σ(r_t)²) = mean_{Ω⁰} max(0, 1 − 2σ(r_t)) (it must not
  lower it elsewhere). :func:`background_adaptation_losses`.
- Group Knowledge Distillation (GKD, ``gkd_loss``): for every group of old channels,
  Σ_k mean_pixels BCE(z_k, σ(ẑ_k)). Here the old groups are one group, channels 0..K_old−1
  (the earlier residuals are folded into channel 0, see below). :func:`group_distillation`.
- Background Feature Distillation (BFD, ``tunnel_loss``): mean over all elements of
  (f·1_{Ω⁰} − f̂·1_{Ω⁰})². :func:`background_feature_distillation`.

The objective is L_PB-BCE + 5·L_ba_t + 4·L_BFD + 1·L_GKD + 1·L_ba_ce (``co_bg, co_tn, co_p,
co_oc = 5, 4, 1, 1`` in ``train_episode``).

Folding the residual into the one saved network (:func:`fold_residual`, :meth:`BARM.finish`).
The saved model has one channel per class, so the residual channel cannot be kept. r_t is linear
in the embedding, and so is the background logit, so at the end of the step

    w_0 ← w_0 + w_r,   b_0 ← b_0 + b_r

makes the saved background logit exactly z_0 + r_t — the composition that the step's loss was
computed on (the code's *training* forward, where the current residual is not clamped; bilinear
upsampling commutes with the sum). The code's *inference* forward, however, clamps every residual
at zero, z_0 + Σ_t min(r_t, 0), so a residual may only lower the background. ``min(·, 0)`` is not
linear and cannot be folded into a 1×1 classifier: where r_t > 0 (on background and on old-class
pixels, which L_ba_t pushes to r_t ≥ 0) the saved model's background is higher than BARM's
inference would give. Nothing else is kept; the residual head is dropped after folding, and at the
next step the folded background is the "old" background, as BARM's clamped sum is.

Where this module departs from the code, on purpose:

- The code grows a new feature branch per step (``ear``: a 3×3 conv + BN + ReLU on the ASPP output,
  initialised from ``head_pre``) under the residual channel and the new classifier, and distils
  every earlier branch. A U-Net nuclei model has one decoder and one classifier, so the residual
  and the new classes read the shared embedding, and BFD distils that embedding.
- The code's optimiser uses per-part learning rates (1e-4 for backbone and old heads, 1e-3 for
  ASPP, ``--lr`` for the new head) and weight decay 1e-4; here the engine's single learning rate
  and ``TrainSettings`` apply to all, the residual head included.
- GKD is computed on the full-resolution logits the engine gives, the code on the logits before
  upsampling; L_ba_t and L_ba_ce of an image set without Ω⁰ / Ω⁺ pixels are 0 (the code would
  divide by zero for L_ba_t).
- The engine has grown the classifier with MiB's initialisation; :meth:`BARM.prepare` puts the
  background bias back to the prior's (BARM never shifts it) and re-initialises the new-class rows
  as the code builds a new head: Kaiming-normal weights, PyTorch's default uniform bias. The
  residual head gets the same initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import IGNORE, LossOutput
from . import Method, StepBatch, StepContext, register
from ._shared import resize_labels

__all__ = [
    "BARM",
    "background_adaptation_losses",
    "background_feature_distillation",
    "compose_background",
    "fold_residual",
    "group_distillation",
    "pseudo_background_bce",
    "pseudo_labels",
]

PSEUDO_THRESHOLD = 0.7  # --pseudo_thresh
LAMBDA_BA_T = 5.0  # co_bg
LAMBDA_BFD = 4.0  # co_tn
LAMBDA_GKD = 1.0  # co_p
LAMBDA_BA_CE = 1.0  # co_oc


@torch.no_grad()
def pseudo_labels(labels: torch.Tensor, old_logits: torch.Tensor, threshold: float = PSEUDO_THRESHOLD) -> torch.Tensor:
    """A pixel labelled 0 takes the old model's argmax class (over σ of all its channels, background
    included) when that class is not background and its score is ≥ ``threshold``."""
    score, cls = torch.sigmoid(old_logits.float()).max(dim=1)
    return torch.where((labels == 0) & (cls > 0) & (score >= threshold), cls, labels)


def compose_background(logits: torch.Tensor, residual: torch.Tensor, k_old: int) -> torch.Tensor:
    """BARM's step logits: [sg(z_0) + r, sg(z_1..z_{K_old−1}), z_{K_old}..]. ``residual`` (B, 1, H, W)."""
    logits = logits.float()
    bg = logits[:, :1].detach() + residual.float()
    return torch.cat([bg, logits[:, 1:k_old].detach(), logits[:, k_old:]], dim=1)


def pseudo_background_bce(adapted: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """PB-BCE: Σ_k BCE(adapted_k, onehot(targets)_k) averaged over the batch's pixels whose target is
    not ``ignore_index`` (0 when there are none)."""
    valid = targets != ignore_index
    onehot = F.one_hot(torch.where(valid, targets, torch.zeros_like(targets)), adapted.shape[1])
    onehot = onehot.permute(0, 3, 1, 2).to(adapted.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(adapted, onehot, reduction="none").sum(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def background_adaptation_losses(residual: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_ba_ce, L_ba_t) for the residual (B, 1, h, w) and channel-id labels (B, H, W), resized to
    (h, w) by nearest neighbour. New-class pixels are those neither 0 nor ignored."""
    r = residual.float()[:, 0]
    small = resize_labels(labels, r.shape[-2:])
    positive = ((small != 0) & (small != IGNORE)).float()
    negative = (small == 0).float()
    ba_ce = (F.softplus(r) * positive).sum() / positive.sum().clamp_min(1)  # BCE(r, 0) = log(1 + e^r)
    ba_t = ((1 - 2 * torch.sigmoid(r)).clamp_min(0) * negative).sum() / negative.sum().clamp_min(1)
    return ba_ce, ba_t


def group_distillation(logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """GKD: Σ_{k<K_old} mean over (B, H, W) of BCE(z_k, σ(ẑ_k)); no gradient into ``old_logits``."""
    k_old = old_logits.shape[1]
    target = torch.sigmoid(old_logits.detach().float())
    bce = F.binary_cross_entropy_with_logits(logits[:, :k_old].float(), target, reduction="none")
    return bce.mean(dim=(0, 2, 3)).sum()


def background_feature_distillation(
    embedding: torch.Tensor, old_embedding: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """BFD: mean over all elements of (f·1[y=0] − f̂·1[y=0])², labels resized to f's size by nearest
    neighbour; no gradient into ``old_embedding``."""
    f, g = embedding.float(), old_embedding.detach().float()
    mask = (resize_labels(labels, f.shape[-2:]) == 0).float()[:, None]
    return F.mse_loss(f * mask, g * mask)


@torch.no_grad()
def fold_residual(classifier: nn.Conv2d, residual: nn.Conv2d) -> None:
    """w_0 ← w_0 + w_r, b_0 ← b_0 + b_r: the classifier's background logit becomes z_0 + r."""
    classifier.weight[0] += residual.weight[0].to(classifier.weight.device, classifier.weight.dtype)
    classifier.bias[0] += residual.bias[0].to(classifier.bias.device, classifier.bias.dtype)


def _new_head_init(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """The code's new head: Kaiming-normal weights (``_init_weight``), PyTorch's default bias."""
    nn.init.kaiming_normal_(weight)
    bound = 1 / math.sqrt(weight.shape[1] * weight[0, 0].numel())
    nn.init.uniform_(bias, -bound, bound)


@dataclass
class BARM(Method):
    """PB-BCE + background adaptation + GKD + BFD with a residual background channel that is folded
    into the background row at the end (see the module's docstring)."""

    name: str = "barm"
    pseudo_threshold: float = PSEUDO_THRESHOLD
    lambda_ba_t: float = LAMBDA_BA_T
    lambda_bfd: float = LAMBDA_BFD
    lambda_gkd: float = LAMBDA_GKD
    lambda_ba_ce: float = LAMBDA_BA_CE
    uses_prior: bool = True
    scores: str = "sigmoid"  # per-class sigmoid scores: the new rows start low, the old scores untouched
    residual: nn.Conv2d | None = field(default=None, init=False, repr=False)

    @torch.no_grad()
    def prepare(self, ctx: StepContext) -> None:
        cls = ctx.model.network.classifier
        k_old = ctx.prior.num_channels
        cls.bias[0] = ctx.prior.network.classifier.bias[0].to(cls.bias.device)
        _new_head_init(cls.weight[k_old:], cls.bias[k_old:])
        self.residual = nn.Conv2d(cls.in_channels, 1, 1).to(device=ctx.device, dtype=cls.weight.dtype)
        _new_head_init(self.residual.weight, self.residual.bias)

    def extra_parameters(self):
        return self.residual.parameters()

    def loss(self, b: StepBatch) -> LossOutput:
        if self.residual is None:
            raise RuntimeError("BARM needs its residual head: call prepare(ctx) first")
        if b.embedding is None or b.old_embedding is None:
            raise ValueError("BARM needs the embeddings of both models")
        k_old = b.old_logits.shape[1]
        r_small = self.residual(b.embedding).float()
        r = r_small
        if r.shape[-2:] != b.logits.shape[-2:]:
            r = F.interpolate(r, size=b.logits.shape[-2:], mode="bilinear", align_corners=False)
        targets = pseudo_labels(b.labels, b.old_logits, self.pseudo_threshold)
        pb_bce = pseudo_background_bce(compose_background(b.logits, r, k_old), targets)
        ba_ce, ba_t = background_adaptation_losses(r_small, b.labels)
        gkd = group_distillation(b.logits, b.old_logits)
        bfd = background_feature_distillation(b.embedding, b.old_embedding, b.labels)
        loss = (
            pb_bce + self.lambda_ba_t * ba_t + self.lambda_bfd * bfd + self.lambda_gkd * gkd + self.lambda_ba_ce * ba_ce
        )
        terms = {"pb_bce": pb_bce, "ba_t": ba_t, "ba_ce": ba_ce, "gkd": gkd, "bfd": bfd}
        return LossOutput(loss=loss, terms={k: float(v.detach()) for k, v in terms.items()})

    def finish(self, ctx: StepContext) -> None:
        fold_residual(ctx.model.network.classifier, self.residual)


register("barm")(BARM)
