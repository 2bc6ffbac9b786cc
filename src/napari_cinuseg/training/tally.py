"""What a training step counts as it goes: its losses and terms, skipped iterations and ATT
firings (eqs. 14-16), and the loss curve and crop statistics made from them for its events and
its record in the model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..losses import LossOutput
from ..runtime.events import CropStats


@dataclass
class Tally:
    """What a step counts as it goes, for its events and its record."""

    t0: float
    it: int = 0
    epoch: int = 0
    recent: list[float] = field(default_factory=list)  # the last 20 losses
    skips: list[dict] = field(default_factory=list)  # iterations whose loss or gradient was not finite
    history: list[dict[str, float]] = field(default_factory=list)  # every iteration's loss and terms
    att: list[int] = field(default_factory=lambda: [0, 0])  # crops seen, crops where ATT fired

    def add(self, loss: float, result: LossOutput, grad_norm: float) -> None:
        self.recent = (self.recent + [loss])[-20:]
        self.history.append({"loss": loss, **result.terms, "grad_norm": grad_norm})
        if result.t_o is not None:  # ATT (eqs. 14-16): how often it fired
            self.att[0] += int(result.t_o.numel())
            self.att[1] += int((result.t_o != 1).sum())


def loss_curve(history: list[dict[str, float]], points: int = 50) -> dict[str, list]:
    """The loss and each term, averaged over at most ``points`` equal windows of iterations:
    ``{"iteration": [last iteration of each window], "loss": [...], term: [...]}``."""
    if not history:
        return {}
    size = max(1, math.ceil(len(history) / points))
    keys = list(dict.fromkeys(k for h in history for k in h))
    curve: dict[str, list] = {"iteration": []}
    for k in keys:
        curve[k] = []
    for start in range(0, len(history), size):
        window = history[start : start + size]
        curve["iteration"].append(start + len(window))
        for k in keys:
            vals = [h[k] for h in window if k in h]
            curve[k].append(round(float(np.mean(vals)), 5) if vals else None)
    return curve


def crop_stats(boxes: torch.Tensor, result: LossOutput) -> tuple[CropStats, ...]:
    if result.r is None:
        return ()
    r, t_o, t_n = (v.detach().float().cpu().tolist() for v in (result.r, result.t_o, result.t_n))
    return tuple(
        CropStats(int(b[0]), int(b[1]), int(b[2]), int(b[3]), r[i], t_o[i], t_n[i])
        for i, b in enumerate(boxes.tolist())
    )
