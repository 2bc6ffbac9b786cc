"""Photometric and scale augmentation of training crops, for models that must work on slides
from other scanners, stains and magnifications than the ones they were trained on.

Both are off by default (the benchmarks follow the paper's protocol: flips and rotations only).

- **Stain jitter** perturbs the image in the haematoxylin–eosin–DAB optical-density space
  (Ruifrok & Johnston's colour deconvolution, ``skimage.color.rgb2hed``), after Tellez et al.
  (2018, "Whole-slide mitosis detection in H&E breast histology using PHH3 as a reference to train
  distilled stain-invariant convolutional networks"): each stain's concentration is scaled by
  α = 2^U(−s, s) and shifted by β ~ U(−s, s)·(its spread)/2, s being the strength. Tellez drew
  α from U(1 − s, 1 + s); we draw its logarithm so that one strength covers both lighter and
  much darker stains (CMU-1's haematoxylin is ~2.6× CoNSeP's at the 99th percentile, s = 1 reaches
  0.5×..2×).
- **Magnification jitter** shows a share of the crops as a lower-magnification scan resampled to
  the model's pixel size would look: shrunk by a factor f ~ U(1, 2) (anti-aliased, as a 20×
  scanner's optics and sampling lose detail at f = 2) and enlarged back to the crop (bicubic, as
  the engine enlarges a 20× tile), so a model trained at 40× sees the blur of a 20× slide.
- **Scale jitter** zooms the crop by z = 2^U(−s, s): a crop of c/z pixels is read and resized to
  c (image bilinear, labels nearest), so a model trained at 40× also sees nuclei at 20× size
  (s = 1 covers 0.5×..2×).
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed2rgb, rgb2hed
from skimage.transform import resize


def stain_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) → the same tissue with other stain concentrations (uint8)."""
    if strength <= 0:
        return image
    hed = rgb2hed(image)
    alpha = 2.0 ** rng.uniform(-strength, strength, size=3)
    spread = hed.reshape(-1, 3).std(0) + 1e-3
    beta = rng.uniform(-strength, strength, size=3) * spread / 2
    out = hed2rgb(hed * alpha + beta)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def magnification_jitter(image: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) → with probability ``share``, the same crop as seen at 1/f of its
    magnification, f ~ U(1, 2): shrunk (anti-aliased) and enlarged back (bicubic); else unchanged."""
    if share <= 0 or rng.random() >= share:
        return image
    f = rng.uniform(1.0, 2.0)
    h, w = image.shape[:2]
    size = (max(1, round(h / f)), max(1, round(w / f)), 3)
    small = resize(image, size, order=1, anti_aliasing=True, preserve_range=True)
    back = resize(small, (h, w, 3), order=3, preserve_range=True, anti_aliasing=False)
    return (np.clip(back, 0, 255) + 0.5).astype(np.uint8)


def zoom_factor(rng: np.random.Generator, strength: float) -> float:
    """z = 2^U(−s, s); 1 when the strength is 0."""
    return float(2.0 ** rng.uniform(-strength, strength)) if strength > 0 else 1.0


def resize_pair(image: np.ndarray, target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear, anti-aliased when shrinking) and label map (nearest) resized to size²."""
    if image.shape[0] == size and image.shape[1] == size:
        return image, target
    img = resize(image, (size, size, 3), order=1, preserve_range=True, anti_aliasing=image.shape[0] > size)
    tgt = resize(target, (size, size), order=0, preserve_range=True, anti_aliasing=False)
    return (img + 0.5).astype(np.uint8), tgt.astype(target.dtype)
