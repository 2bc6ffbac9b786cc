"""EWF, a baseline: Xiao, Zhang, Feng, Liu, van de Weijer, Cheng, "Endpoints Weight Fusion for Class
Incremental Semantic Segmentation", CVPR 2023 (authors' code: schuy1er/EWF_official, ``run.py``,
``train.py``, ``argparser.py`` and ``scripts/voc/*+ours_*.sh``).

EWF adds nothing to the loss. It trains the step with a base CISS method and then fuses the two
*endpoints* of the step, the frozen model of step t−1 and the model just trained, parameter by
parameter. Against this engine:

- The step's loss is the base method's (MiB by default; PLOP for ``ewf-plop``): the scripts run
  ``--method MiB`` (or ``PLOP``) ``--weight_fusion --fix_pre_cls``, so the base method's own
  defaults apply (:mod:`.mib`, :mod:`.plop`).
- ``--fix_pre_cls`` (``train.py``, ``Trainer.train``): during the step every old classifier (the
  background row and all old-class rows) is frozen, *after* MiB's initialisation has moved the
  background bias to b_0 − log(|C^t| + 1). Here the classifier is one 1×1 convolution, so the
  old rows are frozen with a gradient hook that zeroes their gradient (:meth:`EWF.prepare`); see
  the departures for weight decay.
- Endpoint weight fusion (``run.py`` after training, "xjw changed (for the weight fusion
  strategy)"): for every entry θ of the *old* model's state dict,

      θ ← (1 − α)·θ_{t−1} + α·θ_t,   α = sqrt(|C^t| / (|C^t| + |C^{0:t−1}|))

  where |C^{0:t−1}| counts the background too (the code's ``trainer.old_classes``), so
  α = sqrt(|C^t| / K) with K the new model's channels. :func:`fusion_factor`,
  :func:`fuse_weights`. The new classes' classifier (a separate module ``cls[-1]`` in the code)
  has no counterpart in the old state dict and is kept as trained; here it is the rows
  K_old..K−1 of the one classifier, kept likewise. Running BatchNorm statistics are fused too
  (they are in the state dict); with BatchNorm frozen during steps they are equal anyway.
- The code's optional ``--threshold_choice`` (fuse only the parameters that moved most; "which I
  didn't mention in paper") is off in every script and is not implemented.

Where this module departs from the code, on purpose:

- The code fuses *checkpoint files*; here :meth:`EWF.finish` fuses ``ctx.model.network`` in place
  from ``ctx.prior.network.state_dict()`` before the engine saves, and never writes to the prior.
- Integer buffers (BatchNorm's ``num_batches_tracked``) keep the new model's value; the code
  multiplies them by floats and relies on the load to truncate.
- Freezing by gradient hook leaves SGD's weight decay (and the momentum it feeds) acting on the
  frozen rows, which the code's ``requires_grad=False`` avoids; :meth:`EWF.finish` therefore
  restores the frozen rows to their values at the start of the step before fusing, so the saved
  model is as if they had never moved (during the step they drift by at most
  lr·weight_decay·iterations/(1 − momentum), about 1e-4 per iteration with the defaults).
- The code's optimiser is Nesterov SGD with weight decay 1e-4 and no BatchNorm freezing; here the
  engine's optimiser and ``TrainSettings`` apply, as for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..losses import LossOutput
from . import Method, StepBatch, StepContext, base_method, register  # extends a base method (MiB or PLOP)

__all__ = ["EWF", "fuse_weights", "fusion_factor"]


def fusion_factor(num_new: int, num_channels: int) -> float:
    """EWF's α = sqrt(|C^t| / K): the weight of the new endpoint; K counts background and all
    classes, old and new (``run.py``: sqrt(nb_new / (nb_new + old_classes)))."""
    if not 0 < num_new < num_channels:
        raise ValueError(f"need 0 < new classes ({num_new}) < channels ({num_channels})")
    return math.sqrt(num_new / num_channels)


@torch.no_grad()
def fuse_weights(new: nn.Module, old: nn.Module, alpha: float) -> None:
    """Endpoint weight fusion, in place on ``new``: every floating-point entry θ of ``old``'s
    state dict becomes (1 − α)·θ_old + α·θ_new in ``new``. An entry of ``new`` with more rows than
    ``old``'s (the grown classifier) is fused on ``old``'s rows only; the extra rows (the new
    classes) are kept. Integer buffers are left as ``new`` has them. ``old`` is only read."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    new_state = new.state_dict()  # detached tensors sharing storage with the parameters
    for name, old_value in old.state_dict().items():
        if name not in new_state:
            raise ValueError(f"the new model has no {name!r}: is it grown from this old model?")
        target = new_state[name]
        if not target.is_floating_point():
            continue
        if target.shape != old_value.shape:
            grown = (
                target.dim() == old_value.dim()
                and target.dim() > 0
                and target.shape[1:] == old_value.shape[1:]
                and target.shape[0] > old_value.shape[0]
            )
            if not grown:
                raise ValueError(f"{name}: shapes {tuple(target.shape)} and {tuple(old_value.shape)} do not fit")
            target = target[: old_value.shape[0]]
        target.mul_(alpha).add_(old_value.to(target.device, target.dtype), alpha=1.0 - alpha)


def _zero_rows(k: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:k] = 0
        return grad

    return hook


@dataclass
class EWF(Method):
    """The base method's loss during the step, then endpoint weight fusion (see the module's
    docstring). ``alpha=None`` uses the paper's sqrt(|C^t| / K)."""

    name: str = "ewf"
    base: str = "mib"  # the scripts: mib+ours (--method MiB), plop+ours (--method PLOP)
    freeze_old_classifier: bool = True  # --fix_pre_cls, in every EWF script
    alpha: float | None = None
    uses_prior: bool = True
    scores: str = "softmax"  # softmax scores: MiB's classifier initialisation
    fused_alpha: float | None = field(default=None, init=False)
    _base: object = field(default=None, init=False, repr=False)
    _hooks: list = field(default_factory=list, init=False, repr=False)
    _frozen: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._base = base_method(self.base)

    def prepare(self, ctx: StepContext) -> None:
        self._base.prepare(ctx)
        if self.freeze_old_classifier:
            cls = ctx.model.network.classifier
            k_old = ctx.prior.num_channels
            self._frozen = (k_old, cls.weight.detach()[:k_old].clone(), cls.bias.detach()[:k_old].clone())
            self._hooks = [p.register_hook(_zero_rows(k_old)) for p in (cls.weight, cls.bias)]

    def loss(self, b: StepBatch) -> LossOutput:
        return self._base.loss(b)

    @torch.no_grad()
    def finish(self, ctx: StepContext) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        net = ctx.model.network
        if self._frozen is not None:
            k_old, weight, bias = self._frozen
            net.classifier.weight[:k_old] = weight.to(net.classifier.weight.device)
            net.classifier.bias[:k_old] = bias.to(net.classifier.bias.device)
        k = net.classifier.out_channels
        self.fused_alpha = self.alpha if self.alpha is not None else fusion_factor(len(ctx.new_classes), k)
        fuse_weights(net, ctx.prior.network, self.fused_alpha)


register("ewf")(EWF)
register("ewf-plop")(lambda: EWF(name="ewf-plop", base="plop"))
