"""The panel's former home, kept so that ``napari_cinuseg._widget.CiNuSegWidget`` still imports:
the panel now lives in :mod:`napari_cinuseg.ui`."""

from .ui.panel import CiNuSegWidget

__all__ = ["CiNuSegWidget"]
