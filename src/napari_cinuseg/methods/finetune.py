"""Fine-tuning, the lower bound: plain BCE on the step's labels, no prior, no distillation. Its loss
is also the base step's and offline's (training.steps.train_base), with mixed supervision there
where the targets hold nucleus-only pixels (losses.mixed_base_bce)."""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import LossOutput, base_bce, mixed_base_bce
from ..runtime.names import NUCLEUS
from . import Method, StepBatch, register


@dataclass
class FineTune(Method):
    name: str = "finetune"
    uses_prior: bool = False
    scores: str = "sigmoid"  # BCE on per-class sigmoid scores
    # targets may hold NUCLEUS (a nucleus of no known class): the base step's mixed supervision
    nucleus_targets: bool = False

    def loss(self, b: StepBatch) -> LossOutput:
        if self.nucleus_targets:
            per_image, cls, nuc = mixed_base_bce(b.logits, b.labels, NUCLEUS)
            return LossOutput(
                loss=per_image.mean(), terms={"bce": float(cls.detach().mean()), "nucleus": float(nuc.detach().mean())}
            )
        per_image = base_bce(b.logits, b.labels)
        return LossOutput(loss=per_image.mean(), terms={"bce": float(per_image.detach().mean())})


register("finetune")(FineTune)
