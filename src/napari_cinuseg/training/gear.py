"""What one step trains with, on its device: the networks (the prior frozen), the optimiser with
the poly schedule, the fp16 scaler, the target → channel table, and the gradient's clipping."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..model.segmenter import CiNuSegModel
from ..runtime import devices
from ..runtime.names import IGNORE
from . import distributed
from .settings import TrainSettings


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze_batchnorm(net: torch.nn.Module) -> None:
    """Keep BatchNorm's running statistics as the prior learned them (its affine weights still
    train): an incremental step sees only the new class's images, often a handful at batch 1,
    and re-estimating the statistics there shifts every old class's features."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    """The poly schedule: base · (1 − it/total)^power, it counted from 0."""
    return base * (1 - iteration / total) ** power


def clip_gradient(
    params: Sequence[torch.nn.Parameter], classifier: torch.nn.Module, rows: Sequence[int], limit: float, factor: float
) -> float:
    """Clip the gradient's global L2 norm to ``limit`` (0 = no clipping), the same for every
    method. The new classes' classifier ``rows`` (zero weights at the start, nothing to keep) are
    clipped on their own, so that the large gradient of the rest cannot shrink theirs to nothing,
    and then step ``factor`` times further (SGD's per-row learning rate). Returns the norm of the
    whole gradient before clipping, the new rows' included (not finite: the step must be skipped)."""
    limit = limit if limit > 0 else float("inf")
    params = [p for p in params if p.grad is not None]
    weight, bias = classifier.weight, classifier.bias
    if not rows or weight.grad is None:
        return float(torch.nn.utils.clip_grad_norm_(params, limit))
    rows = list(rows)
    own = [p for p in (weight, bias) if p is not None and p.grad is not None]
    new_grads = [p.grad[rows].clone() for p in own]
    for p in own:
        p.grad[rows] = 0
    rest = torch.nn.utils.clip_grad_norm_(params, limit)
    new = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in new_grads]))
    scale = (limit / (new + 1e-6)).clamp(max=1.0) if math.isfinite(limit) else torch.ones_like(new)
    for p, g in zip(own, new_grads):
        p.grad[rows] = (g * scale * factor).to(p.grad.dtype)
    return float(torch.sqrt(rest.float() ** 2 + new.float() ** 2))


@dataclass
class Gear:
    """What one step trains with, on its device."""

    device: torch.device
    world: int
    rank: int
    amp: object
    lut: torch.Tensor  # step target value → channel id
    net: torch.nn.Module
    train_net: torch.nn.Module  # net, or its DistributedDataParallel wrapper under torchrun
    prior_net: torch.nn.Module | None
    opt: torch.optim.Optimizer
    scaler: object


def make_gear(
    model: CiNuSegModel,
    prior: CiNuSegModel | None,
    channel_of_target: Sequence[int],
    settings: TrainSettings,
    lr: float,
    device: torch.device,
    freeze_bn: bool,
    head_lr: float = 1.0,
) -> Gear:
    """The networks on the device (the prior frozen in eval mode, BatchNorm frozen where the
    step keeps it), the optimiser, the fp16 scaler and the target → channel table. ``head_lr``:
    the separation head's parameters learn at this multiple of the schedule's rate (each
    parameter group's ``lr_scale``)."""
    s = settings
    world, rank = distributed.world_size(), distributed.rank()
    amp = devices.amp_dtype(device, s.amp)
    lut = torch.full((256,), IGNORE, dtype=torch.long)
    for local, ch in enumerate(channel_of_target):
        lut[local] = ch
    net = model.network.to(device).train()
    if freeze_bn:
        freeze_batchnorm(net)
    prior_net = None
    if prior is not None:
        # The prior runs under no_grad; its parameters' own flags are left alone, so a later
        # child() of the same model object can still learn.
        prior_net = prior.network.to(device).eval()
    head = list(net.separation.parameters()) if net.separation is not None else []
    held = {id(p) for p in head}
    groups = [{"params": [p for p in net.parameters() if id(p) not in held], "lr_scale": 1.0}]
    if head:
        groups.append({"params": head, "lr_scale": float(head_lr)})
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    opt = torch.optim.SGD(groups, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    train_net = net
    if world > 1:
        train_net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    return Gear(device, world, rank, amp, lut, net, train_net, prior_net, opt, scaler)
