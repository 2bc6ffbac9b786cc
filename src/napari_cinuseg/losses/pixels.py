"""Per-pixel class masks and their per-image means, shared by the losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def as_index(classes: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class ids as a long tensor on ``device``."""
    return torch.as_tensor(list(classes) if not torch.is_tensor(classes) else classes, dtype=torch.long, device=device)


def is_in(labels: torch.Tensor, classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Where ``labels`` holds one of ``classes``."""
    return torch.isin(labels, as_index(classes, labels.device))


def per_image_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, H, W) over ``mask`` per image; 0 for an image with an empty mask."""
    mask = mask.to(values.dtype)
    count = mask.flatten(1).sum(1)
    total = (values * mask).flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
