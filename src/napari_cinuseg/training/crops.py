"""Training crops: random crops of the step's images, with flips, rotations and optional stain
and scale jitter (augment.py), the same whatever the number of loader workers; with each crop
the nucleus separation's target (losses/separation.py) where the image's instances are known."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..datasets.labelled import IGNORE, TrainingPair
from ..losses.separation import UNKNOWN, distance_target
from . import augment


class CropDataset(torch.utils.data.Dataset):
    """Random crops with flips and 90° rotations (nuclei have no orientation), and optionally
    stain and scale jitter (``augment.py``).

    Crops are drawn from a generator seeded by (seed, epoch, index), so they are the same whatever
    the number of loader workers. Images smaller than the crop are padded: white image, label 255.
    With scale jitter a crop of c/z image pixels is read and resized to c; the box returned with
    each crop is the one read from the image.

    Each item is (image (3, c, c) uint8, target (c, c) long, separation target (c, c) float32,
    box): the separation target is the normalised distance of the crop's instance map (computed
    after cropping, turning and resizing, so a nucleus cut by the crop ends at its edge), and
    ``UNKNOWN`` everywhere for a pair without instances (or with ``separation`` False: a network
    without a separation head) and on unlabelled pixels.
    """

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        crop: int,
        seed: int = 0,
        length: int | None = None,
        stain_jitter: float = 0.0,
        scale_jitter: float = 0.0,
        magnification_jitter: float = 0.0,
        painted_share: float = 0.0,
        separation: bool = True,
    ):
        self.pairs = list(pairs)
        self.crop = int(crop)
        self.seed = int(seed)
        self.stain_jitter = float(stain_jitter)
        self.scale_jitter = float(scale_jitter)
        self.magnification_jitter = float(magnification_jitter)
        # The share of crops placed so that they hold a painted pixel of a step class (target
        # 1..254), drawn uniformly over those pixels; the others fall anywhere. Sparse painting
        # leaves most random crops without a single example of the class being learned.
        self.painted_share = float(painted_share)
        # whether the separation targets are computed (a network with a separation head learns
        # them); otherwise every crop's is UNKNOWN, at no cost
        self.separation = bool(separation)
        self._painted: dict[tuple, np.ndarray] = {}
        self.epoch = 0
        # An epoch has one crop per image, or ``length`` crops drawn from the images in turn
        # (so that one annotated image still fills a batch).
        self.length = max(int(length or 0), len(self.pairs))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pair = self.pairs[index % len(self.pairs)]
        img, tgt, inst = pair.image, pair.target, pair.instances
        c = max(8, int(round(self.crop / augment.zoom_factor(rng, self.scale_jitter))))
        h, w = tgt.shape
        if h < c or w < c:
            ph, pw = max(c - h, 0), max(c - w, 0)
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=255)
            tgt = np.pad(tgt, ((0, ph), (0, pw)), constant_values=IGNORE)
            if inst is not None:
                inst = np.pad(inst, ((0, ph), (0, pw)))
            h, w = tgt.shape
        top = int(rng.integers(0, h - c + 1))
        left = int(rng.integers(0, w - c + 1))
        if self.painted_share > 0 and rng.random() < self.painted_share:
            where = self._painted_pixels(index % len(self.pairs), tgt)
            if where.size:
                y, x = divmod(int(where[rng.integers(0, where.size)]), w)
                top = int(np.clip(y - rng.integers(0, c), 0, h - c))
                left = int(np.clip(x - rng.integers(0, c), 0, w - c))
        img = img[top : top + c, left : left + c]
        tgt = tgt[top : top + c, left : left + c]
        k = int(rng.integers(0, 4))
        img, tgt = np.rot90(img, k), np.rot90(tgt, k)
        flip = rng.random() < 0.5
        if flip:
            img, tgt = img[:, ::-1], tgt[:, ::-1]
        img, tgt = augment.resize_pair(np.ascontiguousarray(img), np.ascontiguousarray(tgt), self.crop)
        sep = np.full((self.crop, self.crop), UNKNOWN, np.float32)
        if inst is not None and self.separation:
            part = np.rot90(inst[top : top + c, left : left + c], k)
            part = np.ascontiguousarray(part[:, ::-1] if flip else part)
            _, part = augment.resize_pair(np.zeros((*part.shape, 3), np.uint8), part, self.crop)
            sep = distance_target(part)
            sep[tgt == IGNORE] = UNKNOWN
        img = augment.magnification_jitter(img, rng, self.magnification_jitter)
        img = augment.stain_jitter(img, rng, self.stain_jitter)
        # A cached data set's arrays are read-only and an uncropped, unturned crop is a view of
        # them; torch wants to own its memory, so such a crop is copied.
        x = torch.from_numpy(np.require(img, requirements="CW")).permute(2, 0, 1)
        y = torch.from_numpy(np.require(tgt, requirements="CW")).long()
        return x, y, torch.from_numpy(sep), torch.tensor([index % len(self.pairs), top, left, c])

    def _painted_pixels(self, i: int, target: np.ndarray) -> np.ndarray:
        """Flat indices of the (padded) target's pixels of a step class, computed once per pair
        and padded size."""
        key = (i, target.shape)
        if key not in self._painted:
            t = np.asarray(target)
            self._painted[key] = np.flatnonzero((t > 0) & (t != IGNORE))
        return self._painted[key]
