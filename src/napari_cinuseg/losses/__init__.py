"""The CiNuSeg losses, equation by equation (Wu, Ding, Wu, Qin, AAAI 2026).

Notation used throughout:

- ``logits`` (B, K, H, W): the model being trained; ``old_logits`` (B, K_old, H, W): the frozen
  prior model, K_old = 1 + |C^{1:t-1}|. The class id is the channel index, channel 0 = background.
- ``new_classes``: channel ids of C^t (K_old..K-1); ``old_classes``: 1..K_old-1.
- ``labels`` (B, H, W) int64 with values in {0} ∪ C^t and ``ignore_index`` (255) = unlabelled.
- Scores S are ``sigmoid(logits)`` (eqs. 1, 8, 10, 11, 12); eqs. 4-5 compare distributions and
  use ``softmax`` over channels.

Every loss returns one value **per image**, shape (B,), so that ATT (eqs. 14-16) can weight
images before the batch mean of eq. 17.
"""

from .base import base_bce, mixed_base_bce, nucleus_only_bce
from .cinuseg import (
    IGNORE,
    LossOutput,
    adaptive_temperatures,
    background_suppression,
    cinuseg_loss,
    class_anchor_consolidation,
    class_anchors,
    class_thresholds,
    foreground_guidance,
    given_negatives,
    negative_sample_bce,
    negative_sample_mask,
    prediction_distillation,
    pseudo_labels,
)

__all__ = [
    "IGNORE",
    "LossOutput",
    "adaptive_temperatures",
    "background_suppression",
    "base_bce",
    "cinuseg_loss",
    "class_anchor_consolidation",
    "class_anchors",
    "class_thresholds",
    "foreground_guidance",
    "given_negatives",
    "mixed_base_bce",
    "negative_sample_bce",
    "negative_sample_mask",
    "nucleus_only_bce",
    "prediction_distillation",
    "pseudo_labels",
]
