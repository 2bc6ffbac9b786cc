"""Overlapping tiles and the blending window that hides their seams."""

from __future__ import annotations

import numpy as np

#: tile side of a segmentation, in the model's pixels (a multiple of 32): the CLI's and the
#: panel's default
DEFAULT_TILE = 512


def panel_overlap(tile: int) -> int:
    """The overlap the panel's Segment image uses with ``tile`` (its review and clicks too): a
    quarter of the tile, at most 64 px."""
    return min(64, tile // 4)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Origins of tiles of size ``tile`` covering [0, length) with at least ``overlap`` shared
    pixels between neighbours; the last tile ends at ``length`` (or the only tile at 0)."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    origins = list(range(0, length - tile, stride))
    origins.append(length - tile)
    return origins


def blend_window(tile: int, overlap: int, eps: float = 1e-3) -> np.ndarray:
    """(tile, tile) weights: 1 in the middle, falling linearly to ``eps`` over ``overlap`` pixels
    at each edge. Logits are summed with these weights and divided by the summed weights, so
    neighbouring tiles hand over smoothly and no seam shows."""
    ramp = np.ones(tile, np.float32)
    if overlap > 0:
        r = np.linspace(eps, 1.0, overlap, dtype=np.float32)
        ramp[:overlap] = r
        ramp[-overlap:] = r[::-1]
    return np.outer(ramp, ramp)


def tissue_fraction(rgb: np.ndarray, white: int = 220, min_saturation: int = 20) -> float:
    """Share of pixels that look like stained tissue: not near-white and somewhat coloured."""
    rgb = rgb.astype(np.int16)
    bright = rgb.min(axis=2) >= white
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    tissue = ~bright & (saturation >= min_saturation)
    return float(tissue.mean())
