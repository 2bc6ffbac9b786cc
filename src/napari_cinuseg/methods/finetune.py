"""Fine-tuning, the lower bound: plain BCE on the step's labels, no prior, no distillation."""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import LossOutput, base_bce
from . import StepBatch, register


@dataclass
class FineTune:
    name: str = "finetune"
    uses_prior: bool = False
    scores: str = "sigmoid"  # BCE on per-class sigmoid scores

    def loss(self, b: StepBatch) -> LossOutput:
        per_image = base_bce(b.logits, b.labels)
        return LossOutput(loss=per_image.mean(), terms={"bce": float(per_image.detach().mean())})


register("finetune")(FineTune)
