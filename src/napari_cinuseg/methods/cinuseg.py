"""CiNuSeg (eq. 17) and the ablations of Table 3: baseline, +ACL, +DRR, +ACL+DRR, full.

Its hyper-parameters are fields of :class:`CiNuSeg`, with the paper's values as defaults; those a
user may change carry their help and range in the field's metadata (methods.method_settings),
from which the command line makes its options and the panel its advanced fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses import LossOutput, cinuseg_loss, class_thresholds
from ..losses.pseudo import UNCERTAIN_OLD
from . import StepBatch, StepContext, register, setting


@dataclass
class CiNuSeg:
    name: str = "cinuseg"
    acl: bool = True
    drr: bool = True
    att: bool = True
    tau: float = setting(0.7, "τ, eqs. 1 and 11: an old class's score above it makes a pseudo-label", 0.0, 0.99)
    omega: float = setting(0.1, "ω, eq. 12: extra weight of hard negatives", 0.0, 10.0)
    sigma: float = setting(0.7, "σ, eqs. 15-16: the new-class share of an image above which ATT fires", 0.0, 0.99)
    alpha_o: float = setting(10.0, "α_o, eq. 16: the old-class loss factor where ATT fires", 0.0, 100.0)
    alpha_n: float = setting(0.5, "α_n, eq. 15: the new-class loss factor where ATT fires", 0.0, 10.0)
    # eqs. 4-5 on the softmax over channels (MiB's reading, the default) or, as a binary
    # distillation per channel, on the sigmoid scores S
    pkd_scores: str = setting("softmax", "eqs. 4-5 on softmax or sigmoid scores", choices=("softmax", "sigmoid"))
    # eq. 1's τ per old class, lowered to the prior's median score on its own predictions of that
    # class for an under-confident prior (not in the paper)
    adaptive_tau: bool = setting(False, "eq. 1's τ per old class, lowered for an under-confident prior")
    # eq. 1 on pixels nobody labelled (the paper labels every pixel): "prior" keeps the prior's
    # prediction where it is an old class, at any score; "tau" reads eq. 1 as written
    unpainted: str = setting("prior", "eq. 1 on unlabelled pixels: the prior's prediction, or τ as written", choices=("prior", "tau"))
    # NS on an unpainted pixel that only the prior's argmax gives an old class (score ≤ τ): a
    # negative of the new class too (True), or only a keeper of the old class (False)
    uncertain_negatives: bool = setting(True, "an unpainted pixel the prior calls old below τ is a negative of the new class too")
    # with unpainted="prior": an unpainted pixel that no old class claims and whose prior
    # background score is above this is background too (1 = never: such pixels stay unlabelled)
    unpainted_background: float = setting(0.5, "an unpainted pixel the prior calls background with a score above this is background (1 = never)", 0.0, 1.0)
    # that background as its own mean in NS (eq. 12), weighed as much as the other pixels together
    background_apart: bool = setting(True, "the unpainted background is its own mean in NS, weighed as much as the rest")
    # eq. 1 on a labelled background pixel the prior's argmax calls old at a score ≤ τ: background
    # (the paper), unlabelled (PLOP's reading of an uncertain pseudo-label) or that old class
    uncertain_old: str = setting(
        "background", "eq. 1 on labelled background the prior calls old below τ: background, unlabelled, or that class",
        choices=UNCERTAIN_OLD,
    )
    uses_prior: bool = True
    scores: str = "sigmoid"  # per-class sigmoid scores: the new rows start low, the old scores untouched
    tau_per_class: torch.Tensor | None = field(default=None, repr=False)

    def prepare(self, ctx: StepContext) -> None:
        """With ``adaptive_tau``: eq. 1's τ per old class, lowered to the prior's median score on
        its own predictions of that class (losses.class_thresholds; not in the paper)."""
        if not self.adaptive_tau:
            self.tau_per_class = None
            return
        prior = ctx.prior.network  # on the device and in eval mode already (the loop's doing)
        taus = class_thresholds((prior(x).logits for x, _ in ctx.batches()), self.tau)
        self.tau_per_class = taus.to(ctx.device)  # once, not at every iteration

    def loss(self, b: StepBatch) -> LossOutput:
        return cinuseg_loss(
            b.logits,
            b.old_logits,
            b.features,
            b.old_features,
            b.labels,
            b.new_classes,
            tau=self.tau_per_class if self.tau_per_class is not None else self.tau,
            omega=self.omega,
            sigma=self.sigma,
            alpha_o=self.alpha_o,
            alpha_n=self.alpha_n,
            acl=self.acl,
            drr=self.drr,
            att=self.att,
            pkd_scores=self.pkd_scores,
            unpainted=self.unpainted,
            uncertain_negatives=self.uncertain_negatives,
            background=self.unpainted_background,
            background_apart=self.background_apart,
            uncertain_old=self.uncertain_old,
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
