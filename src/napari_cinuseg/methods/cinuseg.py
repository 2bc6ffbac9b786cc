"""CiNuSeg (eq. 17) and the ablations of Table 3: baseline, +ACL, +DRR, +ACL+DRR, full.

Its hyper-parameters are fields of :class:`CiNuSeg`, with the paper's values as defaults; those a
user may change carry their help and range in the field's metadata (methods.method_settings),
from which the command line makes its options and the panel its advanced fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses import LossOutput, cinuseg_loss, class_thresholds
from ..losses.cinuseg import UNPAINTED_NUCLEI
from ..losses.pseudo import UNCERTAIN_OLD
from . import Method, StepBatch, StepContext, register, setting

# a step whose images have at least this share of their pixels labelled is labelled in full
LABELLED_IN_FULL = 0.9


@dataclass
class CiNuSeg(Method):
    name: str = "cinuseg"
    acl: bool = True
    drr: bool = True
    att: bool = True
    tau: float = setting(0.7, "τ, eqs. 1 and 11: an old class's score above it makes a pseudo-label", 0.0, 0.99)
    omega: float = setting(0.1, "ω, eq. 12: extra weight of hard negatives", 0.0, 10.0)
    # σ of eqs. 15-16 on a step whose images are labelled in full (the paper's setting): 0, ATT on
    # every crop with a new-class pixel, measured best on the CPU protocols (docs/method.md, ATT);
    # the paper's 0.7 with sigma=0.7. On a painted step (a few nuclei painted), sigma_painted.
    sigma: float = setting(
        0.0,
        "σ (labelled in full), eqs. 15-16: ATT fires on a crop whose new-class share is above it, on a step "
        "whose images are labelled in full (the paper's is 0.7)",
        0.0,
        0.99,
    )
    sigma_painted: float = setting(
        0.7, "σ (painted), eqs. 15-16 on a painted step (under 90 % of its pixels labelled)", 0.0, 0.99
    )
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
    unpainted: str = setting(
        "prior", "eq. 1 on unlabelled pixels: the prior's prediction, or τ as written", choices=("prior", "tau")
    )
    # NS on an unpainted pixel that only the prior's argmax gives an old class (score ≤ τ): a
    # negative of the new class too (True), or only a keeper of the old class (False)
    uncertain_negatives: bool = setting(
        True, "an unpainted pixel the prior calls old below τ is a negative of the new class too"
    )
    # with unpainted="prior": an unpainted pixel that no old class claims and whose prior
    # background score is above this is background too (1 = never: such pixels stay unlabelled)
    unpainted_background: float = setting(
        0.5, "an unpainted pixel the prior calls background with a score above this is background (1 = never)", 0.0, 1.0
    )
    # that background as its own mean in NS (eq. 12), weighed as much as the other pixels together
    background_apart: bool = setting(
        True, "the unpainted background is its own mean in NS, weighed as much as the rest"
    )
    # eq. 1 on a labelled background pixel the prior's argmax calls old at a score ≤ τ: background
    # (the paper), unlabelled (PLOP's reading of an uncertain pseudo-label) or that old class
    uncertain_old: str = setting(
        "background",
        "eq. 1 on labelled background the prior calls old below τ: background, unlabelled, or that class",
        choices=UNCERTAIN_OLD,
    )
    # eq. 5 over every pixel, those labelled as a new class too (the paper), on every step; off,
    # distillation leaves out the pixels labelled as a new class
    pkd_on_new: bool = setting(
        True, "eq. 5 over every pixel, the new class's too (the paper), not only those not labelled new"
    )
    # a painted step's unpainted pixels that may be a nucleus (not the prior's sure background,
    # nucleus_margin px from its nuclei): unlabelled for the new class (the old classes keep the
    # prior's prediction; chosen on the painted-step benchmark's tune split, docs/method.md), a
    # negative of it (eq. 1 read on them, the rule before) or left to distillation
    unpainted_nuclei: str = setting(
        "unlabelled",
        "unpainted pixels that may be a nucleus: a negative of the new class, unlabelled for it, or left to "
        "distillation",
        choices=UNPAINTED_NUCLEI,
    )
    unpainted_nucleus_weight: float = setting(
        0.0, "with unpainted_nuclei=unlabelled: their weight as negatives of the new class (0: none)", 0.0, 1.0
    )
    nucleus_margin: int = setting(
        4, "pixels around the prior's nuclei that are no sure background (with unpainted_nuclei)", 0, 64
    )
    # eq. 12 on the old classes' channels where the label and the pseudo-label are both background:
    # trained toward 0 there (the paper), or left to distillation (eq. 5) alone
    ns_old_on_background: bool = setting(
        True, "eq. 12 trains the old channels toward 0 where label and pseudo-label are both background"
    )
    uses_prior: bool = True
    refines: bool = True  # old-class paint: kept in eq. 1, left out of eq. 5 (losses.cinuseg_loss)
    scores: str = "sigmoid"  # per-class sigmoid scores: the new rows start low, the old scores untouched
    tau_per_class: torch.Tensor | None = field(default=None, repr=False)
    labelled_share: float | None = field(default=None, repr=False)  # of the step's pixels, set by prepare

    @property
    def sigma_now(self) -> float:
        """σ for this step: ``sigma`` where its images are labelled in full (at least
        :data:`LABELLED_IN_FULL` of their pixels), ``sigma_painted`` where a few nuclei were painted."""
        return self.sigma_painted if self.painted else self.sigma

    @property
    def painted(self) -> bool:
        """Whether this step's images hold under :data:`LABELLED_IN_FULL` of their pixels labelled."""
        return self.labelled_share is not None and self.labelled_share < LABELLED_IN_FULL

    def prepare(self, ctx: StepContext) -> None:
        """The share of the step's pixels that carry a label (which σ applies), and with
        ``adaptive_tau`` eq. 1's τ per old class, lowered to the prior's median score on its own
        predictions of that class (losses.class_thresholds; not in the paper)."""
        self.labelled_share = ctx.labelled_share
        self.tau_per_class = None
        if self.adaptive_tau:
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
            sigma=self.sigma_now,
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
            pkd_on_new=self.pkd_on_new,
            unpainted_nuclei=self.unpainted_nuclei,
            nucleus_margin=self.nucleus_margin,
            unpainted_nucleus_weight=self.unpainted_nucleus_weight,
            ns_old_on_background=self.ns_old_on_background,
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
