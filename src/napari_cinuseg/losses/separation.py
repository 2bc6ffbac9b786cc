"""The nucleus separation's target and losses: each nucleus's normalised distance map.

Target (Naylor et al. 2019, "Segmentation of nuclei in histopathology images by deep regression of
the distance map", IEEE TMI 38(2); normalised per nucleus as in HoVer-Net's distance variant,
Graham et al. 2019): for a pixel p of nucleus i,

    d(p) = EDT_i(p) / max_{q ∈ i} EDT_i(q),

EDT_i the Euclidean distance to the nearest pixel outside nucleus i (another nucleus counts as
outside, so two touching nuclei meet at d ≈ 0); d = 0 on background. Every nucleus, large or
small, peaks at 1 in its core. Pixels whose instance is not known (data without instance ids,
unlabelled or padded pixels) are ``UNKNOWN`` and give no loss.

Losses, per image (B,), like every loss of the package:

- :func:`separation_loss`: KL(Bern(d) ‖ Bern(σ(s))) = BCE(d, σ(s)) − H(d) averaged over the
  image's known pixels, background included (d = 0 there), with s the network's separation
  logit: 0 where σ(s) = d, and its gradient σ(s) − d is not damped by σ′ as the squared error's
  (σ(s) − d)·σ′(s) is, so a fresh head learns the map in a few hundred iterations;
- :func:`separation_distillation`: (σ(s) − σ(s_prior))² averaged over every pixel: an
  incremental step keeps the frozen prior's separation, which knows no classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from .pixels import per_image_mean

#: The target value of a pixel whose instance is not known.
UNKNOWN = -1.0


def distance_target(instances: np.ndarray) -> np.ndarray:
    """(H, W) float32 normalised distance of an instance map (0 background, i nucleus i): see the
    module's docstring. Each nucleus's distance is computed in its bounding box, one pixel wider."""
    lab = np.asarray(instances)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"a distance target needs a 2-D integer instance map, got {lab.dtype} {lab.shape}")
    out = np.zeros(lab.shape, np.float32)
    h, w = lab.shape
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        r0, r1 = max(box[0].start - 1, 0), min(box[0].stop + 1, h)
        c0, c1 = max(box[1].start - 1, 0), min(box[1].stop + 1, w)
        inside = lab[r0:r1, c0:c1] == i
        # pad by one background pixel on every side: a nucleus cut by the image's edge ends there
        dist = ndi.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        peak = dist.max()
        if peak > 0:
            region = out[r0:r1, c0:c1]
            region[inside] = (dist[inside] / peak).astype(np.float32)
    return out


def separation_loss(separation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image (B,): mean over the known pixels of KL(Bern(d) ‖ Bern(σ(s))); 0 for an image
    with none. ``separation`` (B, 1, H, W) logits, ``target`` (B, H, W) in 0..1 or ``UNKNOWN``."""
    if separation.dim() != 4 or separation.shape[1] != 1 or separation.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"separation logits (B, 1, H, W) and targets (B, H, W) must agree, got {tuple(separation.shape)} "
            f"and {tuple(target.shape)}"
        )
    known = target >= 0
    s = separation.float()[:, 0]
    d = target.clamp(0, 1).to(s.dtype)
    bce = F.binary_cross_entropy_with_logits(s, d, reduction="none")
    entropy = F.binary_cross_entropy(d, d, reduction="none")  # H(d): the BCE's least value
    return per_image_mean((bce - entropy) * known.to(s.dtype), known)


def separation_distillation(separation: torch.Tensor, old_separation: torch.Tensor) -> torch.Tensor:
    """Per image (B,): mean over all pixels of (σ(s) − σ(s_prior))², both (B, 1, H, W) logits."""
    if separation.shape != old_separation.shape:
        raise ValueError(
            f"the separation of the model {tuple(separation.shape)} and of its prior "
            f"{tuple(old_separation.shape)} must have the same shape"
        )
    diff = torch.sigmoid(separation.float()) - torch.sigmoid(old_separation.float())
    return (diff**2).flatten(1).mean(1)
