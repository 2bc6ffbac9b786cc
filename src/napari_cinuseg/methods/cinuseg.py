"""CiNuSeg (eq. 17) and the ablations of Table 3: baseline, +ACL, +DRR, +ACL+DRR, full."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses import LossOutput, cinuseg_loss, class_thresholds
from . import StepBatch, StepContext, register


@dataclass
class CiNuSeg:
    name: str = "cinuseg"
    acl: bool = True
    drr: bool = True
    att: bool = True
    uses_prior: bool = True
    scores: str = "sigmoid"  # per-class sigmoid scores: the new rows start low, the old scores untouched
    # eq. 1 on pixels nobody labelled (the paper labels every pixel): "prior" keeps the prior's
    # prediction where it is an old class, at any score; "tau" reads eq. 1 as written
    unpainted: str = "prior"
    tau_per_class: torch.Tensor | None = field(default=None, repr=False)

    def prepare(self, ctx: StepContext) -> None:
        """With ``settings.adaptive_tau``: eq. 1's τ per old class, lowered to the prior's median
        score on its own predictions of that class (losses.class_thresholds; not in the paper)."""
        if not ctx.settings.adaptive_tau:
            self.tau_per_class = None
            return
        prior = ctx.prior.network  # on the device and in eval mode already (the loop's doing)
        taus = class_thresholds((prior(x).logits for x, _ in ctx.batches()), ctx.settings.tau)
        self.tau_per_class = taus.to(ctx.device)  # once, not at every iteration

    def loss(self, b: StepBatch) -> LossOutput:
        s = b.settings
        return cinuseg_loss(
            b.logits,
            b.old_logits,
            b.features,
            b.old_features,
            b.labels,
            b.new_classes,
            tau=self.tau_per_class if self.tau_per_class is not None else s.tau,
            omega=s.omega,
            sigma=s.sigma,
            alpha_o=s.alpha_o,
            alpha_n=s.alpha_n,
            acl=self.acl,
            drr=self.drr,
            att=self.att,
            pkd_scores=s.pkd_scores,
            unpainted=self.unpainted,
        )


_VARIANTS = {
    "cinuseg": (True, True, True),
    "cinuseg-baseline": (False, False, False),  # pseudo-labels + BCE
    "cinuseg+acl": (True, False, False),
    "cinuseg+drr": (False, True, False),
    "cinuseg+acl+drr": (True, True, False),
}

for _name, (_acl, _drr, _att) in _VARIANTS.items():
    register(_name)(lambda n=_name, a=_acl, d=_drr, t=_att: CiNuSeg(n, a, d, t))
