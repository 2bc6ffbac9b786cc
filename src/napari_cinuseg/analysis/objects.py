"""Object-level scores of an instance map against a ground-truth instance map.

- foreground Dice: any nucleus vs background, 2·|G ∩ P| / (|G| + |P|);
- detection F1 at IoU 0.5: a predicted nucleus matches a true one when their IoU is over 0.5 (such
  a match is unique: two objects cannot both overlap one by more than half); F1 = 2TP / (2TP + FP + FN);
- PQ (Kirillov et al. 2019, as HoVer-Net reports it): SQ · DQ with SQ the mean IoU of the
  matches and DQ the detection F1 above;
- AJI (Kumar et al. 2017): each true nucleus takes the predicted one of largest IoU with it;
  Σ |G ∩ P| over Σ |G ∪ P|, plus every predicted nucleus never taken in the denominator.

Scores are per image; :class:`ObjectScores` averages them over images (the mean of per-image
figures, as HoVer-Net's tables), and pools them too: F1 and PQ from the summed matches, AJI from
the summed intersections and unions, and the foreground Dice (the figures of a sparse class, whose
images hold a nucleus or two each, where a per-image mean is mostly noise).

:func:`majority_classes` and :func:`class_objects` keep one class's objects of an instance map,
so that the scores can be had for one class's nuclei alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _overlaps(truth: np.ndarray, pred: np.ndarray):
    """Areas of every true and predicted object, and the (true id, pred id, intersection) of every
    overlapping pair, from two instance maps of the same shape."""
    t, p = np.asarray(truth).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in size: {np.shape(truth)} vs {np.shape(pred)}")
    # renumber both to 0..N so that sparse ids cost nothing
    tu, t = np.unique(t, return_inverse=True)
    pu, p = np.unique(p, return_inverse=True)
    t_off = 0 if tu[0] == 0 else 1  # inverse index of true id 0 is 0 when 0 is present
    p_off = 0 if pu[0] == 0 else 1
    t, p = t + t_off, p + p_off
    nt, npred = len(tu) + t_off, len(pu) + p_off
    t_area = np.bincount(t, minlength=nt)
    p_area = np.bincount(p, minlength=npred)
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(t[both] * npred + p[both], return_counts=True)
    return t_area, p_area, pairs // npred, pairs % npred, inter


def image_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """One image's scores (see the module's docstring) and counts: ``dice``, ``f1``, ``pq``,
    ``sq``, ``aji``, ``tp``, ``fp``, ``fn``, ``true``, ``pred``."""
    t_area, p_area, ti, pi, inter = _overlaps(truth, pred)
    n_true, n_pred = int((t_area[1:] > 0).sum()), int((p_area[1:] > 0).sum())
    union = t_area[ti] + p_area[pi] - inter
    iou = inter / np.maximum(union, 1)
    match = iou > 0.5
    tp = int(match.sum())
    fp, fn = n_pred - tp, n_true - tp
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    sq = float(iou[match].mean()) if tp else 0.0
    fg_t, fg_p = int(t_area[1:].sum()), int(p_area[1:].sum())
    fg_i = int(inter.sum())
    dice = 2 * fg_i / (fg_t + fg_p) if (fg_t + fg_p) else 1.0
    # AJI: each true object's best predicted partner by IoU
    c = u = 0
    used = np.zeros(len(p_area), bool)
    if len(ti):
        order = np.lexsort((-iou, ti))  # by true id, best IoU first
        first = np.ones(len(order), bool)
        first[1:] = ti[order][1:] != ti[order][:-1]
        best = order[first]
        c = int(inter[best].sum())
        u = int(union[best].sum())
        used[pi[best]] = True
    matched_true = np.zeros(len(t_area), bool)
    matched_true[ti] = True
    u += int(t_area[1:][~matched_true[1:]].sum())  # true objects no prediction touches
    u += int(p_area[~used & (np.arange(len(p_area)) > 0)].sum())
    aji = c / u if u else 1.0
    return {
        "dice": dice,
        "f1": f1,
        "pq": sq * f1,
        "sq": sq,
        "aji": aji,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "true": n_true,
        "pred": n_pred,
        "_fg": (fg_i, fg_t, fg_p),
        "_aji": (c, u),
    }


def majority_classes(instances: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per id 0..max of ``instances``, the value most of its pixels carry in the class map
    ``labels`` (background and unlabelled count as values too; ties to the lowest); 0 for id 0
    and for ids not in the map."""
    inst = np.asarray(instances).astype(np.int64).ravel()
    lab = np.asarray(labels).astype(np.int64).ravel()
    if inst.shape != lab.shape:
        raise ValueError(f"instances and labels differ in size: {np.shape(instances)} vs {np.shape(labels)}")
    n, k = int(inst.max(initial=0)) + 1, int(lab.max(initial=0)) + 1
    votes = np.bincount(inst * k + lab, minlength=n * k).reshape(n, k)
    out = votes.argmax(1)
    out[0] = 0
    return out


def class_objects(instances: np.ndarray, classes: np.ndarray, keep: int) -> np.ndarray:
    """``instances`` with only the objects whose class (``classes[id]``) is ``keep``, the others
    background; ids are kept."""
    inst = np.asarray(instances)
    wanted = np.asarray(classes) == keep
    wanted[0] = False
    return np.where(wanted[inst], inst, 0)


@dataclass
class ObjectScores:
    """Scores accumulated over images: per-image means, and pooled (``*_pooled``) figures."""

    images: list[dict] = field(default_factory=list)

    def update(self, truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        s = image_scores(truth, pred)
        self.images.append(s)
        return s

    def summary(self) -> dict[str, float]:
        if not self.images:
            return {}
        mean = {k: float(np.mean([s[k] for s in self.images])) for k in ("dice", "f1", "pq", "sq", "aji")}
        i, t, p = (sum(s["_fg"][j] for s in self.images) for j in range(3))
        mean["dice_pooled"] = 2 * i / (t + p) if (t + p) else 1.0
        tp, fp, fn = (sum(s[k] for s in self.images) for k in ("tp", "fp", "fn"))
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
        mean["f1_pooled"] = f1
        mean["pq_pooled"] = sum(s["sq"] * s["tp"] for s in self.images) / tp * f1 if tp else 0.0
        c, u = (sum(s["_aji"][j] for s in self.images) for j in range(2))
        mean["aji_pooled"] = c / u if u else 1.0
        for k in ("tp", "fp", "fn", "true", "pred"):
            mean[k] = int(sum(s[k] for s in self.images))
        mean["images"] = len(self.images)
        return mean
