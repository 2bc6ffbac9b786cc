"""NeST, a baseline: Xie, Lu, Xiao, Wang, Zhang, Liu, "Early Preparation Pays Off: New Classifier
Pre-tuning for Class Incremental Semantic Segmentation", ECCV 2024 (authors' code:
zhengyuan-xie/ECCV24_NeST, ``segmentation_module.py``, ``train.py`` (``Trainer.select``,
``Trainer.warm_up``), ``run.py``, ``argparser.py`` and ``scripts/voc/mib+ours_resnet101_15-1.sh``).

The paper's text was not among the sources available here; this module follows the authors' code,
whose names are kept in brackets.

NeST prepares the new classifier *before* the step: it is not learned from scratch (nor copied
from background, as MiB does) but built as a learned transformation of the old classifiers, which
is pre-tuned on the step's images while everything else is frozen. Then the step trains with a
base CISS method. Against this engine, with W ∈ R^{K_old×D} the old classifier rows (background
included) and N = |C^t|:

- New classifier (``avg_weight_output``, ``init_via_weight``): for new class c,

      w_c = Σ_j P_{c,j} · (M_{c,j,:} ⊙ W_{j,:})

  with an importance matrix M ∈ R^{N×K_old×D} (``weight_old``) and a projection matrix
  P ∈ R^{N×K_old} (``weight_new``), and a free bias b_c (``new_bias``). The background row is
  transformed too: w_0' = p_0 · (m_0 ⊙ w_0), m_0 ∈ R^D and p_0 ∈ R initialised to ones
  (``weight_old_bg``, ``weight_new_bg``); its bias stays the old one. :func:`transformed_weights`.
- Matrix initialisation from cross-task class similarity (``Trainer.select``): over the pixels x of
  new class c, with p_j(x) the old model's softmax and f(x) the embedding (the classifier's input),

      M_{c,j,d} = mean_{x ∈ c} p_j(x) · 1[f_d(x) · W_{j,d} > 0],   P_{c,:} = softmax_j(Σ_d M_{c,j,d})

  :func:`similarity_statistics`, :func:`initial_matrices`.
- Pre-tuning (``Trainer.warm_up``, ``--unce_in_warm``): the network and the old classifiers are
  frozen; M, P, b, m_0, p_0 are trained with MiB's unbiased cross-entropy (mean over all pixels)
  on the logits [w_0', W_{1..K_old−1}, w_c] (old biases kept). SGD, Nesterov momentum 0.9, the
  step's learning rate × ``warm_lr_scale``, poly schedule over the pre-tuning iterations.
- Installing the pre-tuned classifier (``init_via_weight`` then ``align_weight("all")``): w_0'
  is rescaled to the norm of w_0; the new biases are rescaled so that ‖b_new‖ = ‖b_old‖ (all
  old biases, background included); the new rows are rescaled so that their mean norm equals
  the mean norm of the old rows (w_0' included). :func:`installed_classifier`.
- ``--init_balanced`` with ``--warm_up`` calls ``init_new_classifier_simplified``, which skips
  MiB's bias initialisation: the background bias stays the old model's b_0. The engine has
  already applied MiB's initialisation when the model grew, so :meth:`NeST.prepare` puts b_0
  back.
- The step then trains with the base method, MiB by default (``--method ours`` sets
  ``loss_kd=10, unce, unkd``; the PLOP script gives ``nest-plop``), with its own defaults.

Defaults, as read in the code: ``warm_epochs = 5`` (``argparser.py``, "ade: 15 voc: 5", and the VOC
scripts), ``warm_lr_scale = 1`` (VOC scripts; 500 for ADE), ``unce_in_warm`` on, ``unkd_in_warm``
off, ``fix_pre_cls`` off.

Where this module departs from the code, on purpose:

- One pre-tuning iteration is one whole step image (``ctx.batches()``, batch 1, no augmentation);
  the code uses the training loader (augmented crops, batch 6). The number of iterations is
  ``pretune_epochs`` × the number of images, at most ``pretune_max_iterations`` (2000), so the
  pre-tuning is bounded. The network runs in eval mode (no gradient, BatchNorm statistics
  untouched) for the similarity statistics and the pre-tuning.
- The similarity statistics are taken at the embedding's resolution (labels resized by nearest
  neighbour, the old model's probabilities from its classifier on that embedding), not after
  resizing features and labels to 128×128 as the code does.
- The new biases start at the engine's MiB value b_0 − log(N + 1); in the code they start at
  the bias of a freshly built, never-loaded layer (a random draw).
- A new class absent from every image (the code would divide by zero) keeps M = 1 and a P that is
  one-hot on background, i.e. MiB's copy of the background row.
- Pre-tuning uses the engine's weight decay and momentum (``TrainSettings``), not the code's 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..losses import LossOutput
from ..model.network import eval_mode
from . import Method, StepBatch, StepContext, base_method, register  # extends a base method (MiB or PLOP)
from .mib import unbiased_cross_entropy

__all__ = [
    "NeST",
    "initial_matrices",
    "installed_classifier",
    "similarity_statistics",
    "transformed_weights",
]

PRETUNE_EPOCHS = 5  # --warm_epochs, VOC
PRETUNE_LR_SCALE = 1.0  # --warm_lr_scale, VOC
PRETUNE_MAX_ITERATIONS = 2000


def transformed_weights(old_weight: torch.Tensor, importance: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """w_c = Σ_j P_{c,j} (M_{c,j,:} ⊙ W_{j,:}): ``old_weight`` (K_old, D), ``importance`` (N, K_old, D),
    ``projection`` (N, K_old) → (N, D)."""
    return torch.einsum("nk,nkd->nd", projection, importance * old_weight[None])


@torch.no_grad()
def similarity_statistics(
    old_probs: torch.Tensor,
    embedding: torch.Tensor,
    labels: torch.Tensor,
    old_weight: torch.Tensor,
    new_classes: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per new class c, Σ_{x ∈ c} p_j(x)·1[f_d(x)·W_{j,d} > 0] (N, K_old, D) and the pixel count (N,).

    ``old_probs`` (B, K_old, h, w), ``embedding`` (B, D, h, w), ``labels`` (B, h, w) at the same
    resolution, ``old_weight`` (K_old, D). The indicator is split by the sign of W_{j,d}, so the
    sums are two matrix products, not a (pixels, K_old, D) tensor.
    """
    k_old, d = old_weight.shape
    p = old_probs.float().permute(0, 2, 3, 1).reshape(-1, k_old)
    f = embedding.float().permute(0, 2, 3, 1).reshape(-1, d)
    idx = torch.as_tensor(list(new_classes), device=labels.device)
    member = (labels.reshape(-1, 1) == idx[None]).float()  # (P, N)
    weighted = member[:, :, None] * p[:, None, :]  # (P, N, K_old)
    pos = torch.einsum("pnk,pd->nkd", weighted, (f > 0).float())
    neg = torch.einsum("pnk,pd->nkd", weighted, (f < 0).float())
    w = old_weight.float()[None]
    sums = torch.where(w > 0, pos, torch.where(w < 0, neg, torch.zeros_like(pos)))
    return sums, member.sum(0)


def initial_matrices(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M = sums / counts, P = softmax_j(Σ_d M): ``Trainer.select`` and ``reset_weight_old``.
    A class with no pixel gets M = 1 and P one-hot on background (MiB's copy of background)."""
    present = counts > 0
    importance = torch.where(present[:, None, None], sums / counts.clamp_min(1)[:, None, None], torch.ones_like(sums))
    projection = torch.softmax(importance.sum(-1), dim=-1)
    one_hot = F.one_hot(torch.zeros_like(counts, dtype=torch.long), sums.shape[1]).to(projection.dtype)
    return importance, torch.where(present[:, None], projection, one_hot)


def _norm_ratio(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    den = value.norm()
    return torch.where(den > 0, target.norm() / den.clamp_min(1e-12), torch.ones_like(den))


@torch.no_grad()
def installed_classifier(
    old_weight: torch.Tensor,
    old_bias: torch.Tensor,
    importance: torch.Tensor,
    projection: torch.Tensor,
    new_bias: torch.Tensor,
    importance_bg: torch.Tensor,
    projection_bg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``init_via_weight`` + ``align_weight("all")``: the background row, the new rows and the new
    biases that go into the classifier after pre-tuning.

    w_0' = p_0 (m_0 ⊙ w_0) · ‖w_0‖/‖p_0 (m_0 ⊙ w_0)‖;  b_new ← b · ‖b_old‖/‖b‖;
    w_c = γ Σ_j P_{c,j} (M_{c,j} ⊙ W_j),  γ = mean row norm of [w_0', W_1..] / mean row norm of w_c.
    """
    bg = projection_bg * importance_bg * old_weight[0]
    bg = bg * _norm_ratio(old_weight[0], bg)
    bias = new_bias * _norm_ratio(old_bias, new_bias)
    rows = transformed_weights(old_weight, importance, projection)
    old_rows = torch.cat([bg[None], old_weight[1:]])
    new_norm = rows.norm(dim=1).mean()
    gamma = torch.where(
        new_norm > 0, old_rows.norm(dim=1).mean() / new_norm.clamp_min(1e-12), torch.ones_like(new_norm)
    )
    return bg, rows * gamma, bias


@dataclass
class NeST(Method):
    """Pre-tunes the new classifier from the old ones in :meth:`prepare`, then trains the step with
    the base method (see the module's docstring)."""

    name: str = "nest"
    base: str = "mib"
    pretune_epochs: int = PRETUNE_EPOCHS
    pretune_lr_scale: float = PRETUNE_LR_SCALE
    pretune_max_iterations: int = PRETUNE_MAX_ITERATIONS
    uses_prior: bool = True
    scores: str = "softmax"  # softmax scores: MiB's classifier initialisation
    pretune_losses: list = field(default_factory=list, init=False, repr=False)
    matrices: dict = field(default_factory=dict, init=False, repr=False)
    _base: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._base = base_method(self.base)

    def prepare(self, ctx: StepContext) -> None:
        net, prior = ctx.model.network, ctx.prior.network
        cls = net.classifier
        k_old = ctx.prior.num_channels
        new = list(ctx.new_classes)
        with torch.no_grad():
            cls.bias[0] = prior.classifier.bias[0].to(cls.bias.device)  # NeST skips MiB's bias shift
        old_weight = cls.weight.detach()[:k_old, :, 0, 0].float().clone()
        old_bias = cls.bias.detach()[:k_old].float().clone()

        # Matrix initialisation (Trainer.select), with the frozen old model.
        sums = counts = None
        n_images = 0
        with torch.no_grad(), eval_mode(prior):
            for x, y in ctx.batches():
                emb = prior(x).embedding
                probs = torch.softmax(prior.classifier(emb).float(), dim=1)
                small = F.interpolate(y[:, None].float(), size=emb.shape[-2:], mode="nearest")[:, 0].long()
                s, c = similarity_statistics(probs, emb, small, old_weight, new)
                sums, counts = (s, c) if sums is None else (sums + s, counts + c)
                n_images += 1
        if n_images == 0:
            raise ValueError("NeST needs the step's images to pre-tune the new classifier")
        importance, projection = initial_matrices(sums, counts)

        dev = old_weight.device
        params = {
            "importance": importance.clone().requires_grad_(True),
            "projection": projection.clone().requires_grad_(True),
            "new_bias": cls.bias.detach()[k_old:].float().clone().requires_grad_(True),
            "importance_bg": torch.ones(old_weight.shape[1], device=dev, requires_grad=True),
            "projection_bg": torch.ones((), device=dev, requires_grad=True),
        }
        s = ctx.settings
        lr = s.lr_step * self.pretune_lr_scale
        opt = torch.optim.SGD(params.values(), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=True)
        total = min(self.pretune_epochs * n_images, self.pretune_max_iterations)
        it = 0
        self.pretune_losses = []
        with eval_mode(net):
            while it < total:
                for x, y in ctx.batches():
                    if it >= total:
                        break
                    for group in opt.param_groups:
                        group["lr"] = lr * (1 - it / total) ** s.poly_power
                    with torch.no_grad():
                        emb = net(x).embedding.float()
                    bg = params["projection_bg"] * params["importance_bg"] * old_weight[0]
                    rows = transformed_weights(old_weight, params["importance"], params["projection"])
                    weight = torch.cat([bg[None], old_weight[1:], rows])[:, :, None, None]
                    bias = torch.cat([old_bias, params["new_bias"]])
                    logits = F.conv2d(emb, weight, bias)
                    if logits.shape[-2:] != x.shape[-2:]:
                        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
                    loss = unbiased_cross_entropy(logits, y, k_old, reduction="none").mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    self.pretune_losses.append(float(loss.detach()))
                    it += 1
                if not math.isfinite(self.pretune_losses[-1] if self.pretune_losses else 0.0):
                    raise FloatingPointError("NeST's pre-tuning diverged; lower pretune_lr_scale")

        self.matrices = {k: v.detach().clone() for k, v in params.items()}
        bg, rows, bias = installed_classifier(old_weight, old_bias, **self.matrices)
        with torch.no_grad():
            cls.weight[0, :, 0, 0] = bg.to(cls.weight.dtype)
            cls.weight[k_old:, :, 0, 0] = rows.to(cls.weight.dtype)
            cls.bias[k_old:] = bias.to(cls.bias.dtype)

        self._base.prepare(ctx)

    def loss(self, b: StepBatch) -> LossOutput:
        return self._base.loss(b)


register("nest")(NeST)
register("nest-plop")(lambda: NeST(name="nest-plop", base="plop"))
