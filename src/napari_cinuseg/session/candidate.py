"""A step's result before the user keeps it: the new model, its file in the candidates folder,
the class it learned, where it was painted and its review. Keep moves the file into the models
folder and makes the model current; Discard deletes the file; a newer step's result replaces it
(and deletes its file). The prior's file is never touched. The panel holds one candidate and only
shows it; tests drive it without Qt."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .review import StepReview
from .storage import Storage


def training_fingerprint(prior, pairs: Sequence, class_name: str, settings, pixel_size: float | None = None) -> str:
    """What a step would learn from, as one digest: the prior, the class, the settings, the
    images' pixel size (the scale the step resamples them by) and every training pair's pixels and
    paint. The same digest means the same step would be trained again."""
    h = hashlib.sha256()
    record = {
        "prior": getattr(prior, "id", None),
        "class": class_name,
        "settings": settings.to_dict() if hasattr(settings, "to_dict") else repr(settings),
        "pixel_size": pixel_size,
    }
    h.update(json.dumps(record, sort_keys=True, default=str).encode())
    for pair in pairs:
        for array in (np.asarray(pair.image), np.asarray(pair.target)):
            h.update(str((array.shape, array.dtype.str)).encode())
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


@dataclass
class StepCandidate:
    """One step's result awaiting Keep or Discard.

    ``origins``: (image layer name, y0, x0) of each training pair, where the review's maps lie;
    ``fingerprint``: :func:`training_fingerprint` of what it learned from."""

    model: object  # CiNuSegModel
    path: Path | None
    class_name: str
    prior: object | None = None  # the model it was trained from (current until Keep)
    review: StepReview | None = None
    origins: list = field(default_factory=list)
    fingerprint: str | None = None
    done: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path) if self.path is not None else None
        if self.path is not None:
            self.model.source_path = str(self.path)

    def replaces(self, older: StepCandidate | None) -> StepCandidate:
        """This result takes the place of ``older`` (train again): the older one's file is
        deleted unless it is this one's. Returns self."""
        if older is not None and not older.done:
            if older.path is not None and older.path != self.path:
                older.path.unlink(missing_ok=True)
            older.done = True
        return self

    def keep(self, storage: Storage):
        """Move the file into the models folder (:meth:`Storage.keep`); returns the model, now
        current, with its new path. Refused (OSError) where the move fails: the candidate then
        stays as it was."""
        self._check_open()
        if self.path is not None:
            self.path = storage.keep(self.path)
            self.model.source_path = str(self.path)
        self.done = True
        return self.model

    def discard(self) -> None:
        """Delete the file; the prior stays current."""
        self._check_open()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.done = True

    def same_training(self, fingerprint: str) -> bool:
        """Whether a step from ``fingerprint`` would learn exactly what this one did."""
        return self.fingerprint is not None and self.fingerprint == fingerprint

    def _check_open(self) -> None:
        if self.done:
            raise RuntimeError(f"the step result for {self.class_name} was already kept, discarded or replaced")
