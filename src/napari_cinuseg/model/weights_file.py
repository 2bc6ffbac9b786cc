"""An encoder's weights file (a state dict saved with ``torch.save``), read without unpickling
code: every failure is a ValueError that says what the file is and what to give instead, never
PyTorch's own text (whose advice to pass ``weights_only=False`` would run a pickle's code)."""

from __future__ import annotations

import stat
from pathlib import Path

import torch


def read_state_dict(path: str | Path, wanted: str) -> dict:
    """The state dict in ``path`` (a ``{"state_dict": …}`` wrapper unwrapped); ``wanted`` names
    what it should hold (e.g. "a torchvision ResNet state dict") for the messages."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError(f"{path} is not a regular file (a folder, a named pipe or a device); give {wanted}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with advice, PyTorch's text left out
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "Unpickl" in type(exc).__name__:
            why = "it holds pickled Python objects, which are never loaded (they could run code)"
        else:
            why = "it is not a PyTorch weights file (truncated, or another format)"
        raise ValueError(
            f"{path} cannot be used as encoder weights: {why}; give {wanted} saved with torch.save"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict (names to tensors); give {wanted}")
    return state
