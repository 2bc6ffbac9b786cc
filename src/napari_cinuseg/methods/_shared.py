"""Pieces that several methods share, so that no method imports another sideways: a method
imports another module of this package only when it extends that method, and says so.

- :func:`histogram_medians`: PLOP's and CoNuSeg's per-class medians of a histogram.
- :func:`resize_labels`: labels brought to a feature map's size (CoNuSeg, INS, BARM).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, H, W) integer labels → (B, h, w) by nearest neighbour (``F.interpolate`` 'nearest')."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def histogram_medians(histogram: torch.Tensor) -> torch.Tensor:
    """Per row of a (C, nb_bins) histogram over [0, 1], the median by linear interpolation in the
    bin that holds it: lower_edge + (N/2 − count below) / count in bin · bin width. 0 for an empty
    row. Computed in float64 on the CPU (MPS has no float64), returned on the histogram's device."""
    hist = histogram.detach().cpu().double()
    nb_bins = hist.shape[1]
    total = hist.sum(dim=1)
    half = total / 2
    cum = hist.cumsum(dim=1)
    idx = (cum < half[:, None]).sum(dim=1).clamp(max=nb_bins - 1)  # first bin where cum ≥ N/2
    in_bin = hist.gather(1, idx[:, None])[:, 0]
    below = cum.gather(1, idx[:, None])[:, 0] - in_bin
    median = (idx.double() + (half - below) / in_bin.clamp_min(1)) / nb_bins
    return torch.where(total > 0, median, torch.zeros_like(median)).float().to(histogram.device)
