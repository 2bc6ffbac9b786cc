"""Nuclei counts and areas per class, from a class map (connected components)."""

from __future__ import annotations

import numpy as np
from skimage.measure import label as connected_components
from skimage.measure import regionprops


def class_statistics(class_map: np.ndarray, class_names: list[str], pixel_size_um: float | None = None) -> list[dict]:
    """One row per class: nuclei (connected components of that class), total and mean area.

    Areas are in pixels, and also in µm² when ``pixel_size_um`` is given.
    """
    rows = []
    cm = np.asarray(class_map)
    for i, name in enumerate(class_names, start=1):
        comps = connected_components(cm == i, connectivity=1)
        areas = np.array([r.area for r in regionprops(comps)], dtype=float)
        row = {
            "class": name,
            "nuclei": int(areas.size),
            "area_px": int(areas.sum()),
            "mean_area_px": float(areas.mean()) if areas.size else 0.0,
            "median_area_px": float(np.median(areas)) if areas.size else 0.0,
        }
        if pixel_size_um:
            px = pixel_size_um**2
            row["area_um2"] = row["area_px"] * px
            row["mean_area_um2"] = row["mean_area_px"] * px
        rows.append(row)
    return rows
