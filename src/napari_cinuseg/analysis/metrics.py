"""Dice per class from one confusion matrix accumulated over a whole test set."""

from __future__ import annotations

import numpy as np

from ..runtime.names import IGNORE


class ConfusionMatrix:
    """Counts of (ground truth, prediction) over classes 0..K-1 (predictions 0..P-1 where the
    predicted classes are others, ``num_predicted``); ground truth 255 is skipped."""

    def __init__(self, num_classes: int, num_predicted: int | None = None):
        self.k = int(num_classes)
        self.p = self.k if num_predicted is None else int(num_predicted)
        self.counts = np.zeros((self.k, self.p), np.int64)

    def update(self, truth: np.ndarray, pred: np.ndarray) -> None:
        truth, pred = np.asarray(truth).ravel(), np.asarray(pred).ravel()
        if truth.shape != pred.shape:
            raise ValueError(f"truth and prediction differ in size: {truth.size} vs {pred.size}")
        keep = truth != IGNORE
        t, p = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
        if t.size and (t.max() >= self.k or p.max() >= self.p):
            raise ValueError(
                f"class id out of range 0..{self.k - 1}" + (f" (predicted 0..{self.p - 1})" if self.p != self.k else "")
            )
        self.counts += np.bincount(t * self.p + p, minlength=self.k * self.p).reshape(self.k, self.p)

    def dice(self) -> np.ndarray:
        """2·TP / (|GT| + |Pred|) per class; NaN for a class with no ground-truth pixels, whatever
        was predicted of it: such a class is scored for no method, so every method's mean is over
        the same classes (a prediction of an absent class still lowers the other classes' Dice,
        through their false positives and negatives)."""
        tp = np.diag(self.counts).astype(np.float64)
        truth = self.counts.sum(1)
        denom = self.counts.sum(0) + truth
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(truth > 0, 2 * tp / denom, np.nan)
