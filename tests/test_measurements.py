"""Blockwise (bounded-memory) class statistics against the exact in-memory path, on real class maps."""

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label, regionprops

from napari_cinuseg.analysis.measurements import class_statistics

NAMES = ["other", "inflammatory", "epithelial", "spindle-shaped"]


@pytest.fixture(scope="module")
def mosaic(shared_data) -> np.ndarray:
    """A 1024² class map (classes 1..4): 4×4 real CoNSeP label patches, tiled."""
    files = sorted((shared_data / "consep" / "train" / "labels").glob("*.png"))[:16]
    assert len(files) == 16
    tiles = [np.asarray(Image.open(f)) for f in files]
    cm = np.block([[tiles[4 * r + c] for c in range(4)] for r in range(4)])
    assert cm.shape == (1024, 1024) and set(np.unique(cm)) <= {0, 1, 2, 3, 4}
    return cm


def largest_bbox_side(cm: np.ndarray, n: int) -> int:
    sides = [
        max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1])
        for i in range(1, n + 1)
        for r in regionprops(label(cm == i, connectivity=1))
    ]
    return max(sides)


class Recorder:
    """A lazy 2-D array: ``.shape`` and slicing only, remembering the largest slice read."""

    def __init__(self, array):
        self.array, self.shape, self.largest = array, array.shape, 0

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.largest = max(self.largest, out.size)
        return out


def test_blockwise_equals_exact_when_nuclei_are_smaller_than_the_margin(mosaic):
    block, margin = 100, 192
    assert largest_bbox_side(mosaic, 4) < margin  # the rule's precondition for exactness
    exact = class_statistics(mosaic, NAMES)
    assert all(r["nuclei"] > 0 for r in exact)
    assert class_statistics(mosaic, NAMES, block=block, margin=margin, blockwise=True) == exact
    # Blocks that do not divide the map, and blocks larger than the map.
    assert class_statistics(mosaic, NAMES, block=333, margin=margin, blockwise=True) == exact
    assert class_statistics(mosaic, NAMES, block=4096, margin=margin, blockwise=True) == exact


@pytest.mark.parametrize("kind", ["zarr", "dask"])
def test_lazy_input_is_read_in_bounded_blocks(mosaic, kind):
    block, margin = 100, 192
    if kind == "zarr":
        zarr = pytest.importorskip("zarr")
        lazy = zarr.create_array(
            store=zarr.storage.MemoryStore(), shape=mosaic.shape, chunks=(256, 256), dtype=mosaic.dtype
        )
        lazy[:] = mosaic
    else:
        da = pytest.importorskip("dask.array")
        lazy = da.from_array(mosaic, chunks=(256, 256))
    src = Recorder(lazy)
    # Not a numpy array: the blockwise path is chosen automatically.
    rows = class_statistics(src, NAMES, block=block, margin=margin)
    assert rows == class_statistics(mosaic, NAMES)
    assert src.largest <= (block + 2 * margin) ** 2 < mosaic.size


def test_component_bigger_than_the_margin_is_counted_and_total_area_is_exact(mosaic):
    cm = np.zeros((300, 300), np.uint8)
    cm[20:280, 20:23] = 2  # a big ring, far bigger than the margin
    cm[20:280, 277:280] = 2
    cm[20:23, 20:280] = 2
    cm[277:280, 20:280] = 2
    for k in range(8):  # small nuclei around and across block borders
        cm[40 + 30 * k : 44 + 30 * k, 45 + 25 * k : 50 + 25 * k] = 1
    exact = class_statistics(cm, ["small", "big"])
    assert exact[1]["nuclei"] == 1
    rows = class_statistics(cm, ["small", "big"], block=50, margin=8, blockwise=True)
    assert rows[0] == exact[0]
    assert rows[1]["nuclei"] >= 1 and rows[1]["area_px"] == exact[1]["area_px"] == int((cm == 2).sum())
    # Real data with a margin smaller than the largest component: totals stay exact.
    assert largest_bbox_side(mosaic, 4) >= 64
    exact = class_statistics(mosaic, NAMES)
    rows = class_statistics(mosaic, NAMES, block=100, margin=64, blockwise=True)
    assert [r["area_px"] for r in rows] == [r["area_px"] for r in exact] == list(np.bincount(mosaic.ravel())[1:5])
    assert all(r["nuclei"] >= e["nuclei"] for r, e in zip(rows, exact))


def test_pixel_size_gives_square_micrometres(mosaic):
    rows = class_statistics(mosaic, NAMES, pixel_size_um=0.25, block=256, margin=192, blockwise=True)
    assert rows == class_statistics(mosaic, NAMES, pixel_size_um=0.25)
    for r in rows:
        assert set(r) == {"class", "nuclei", "area_px", "mean_area_px", "median_area_px", "area_um2", "mean_area_um2"}
        assert r["area_um2"] == pytest.approx(r["area_px"] * 0.0625)
        assert r["mean_area_um2"] == pytest.approx(r["mean_area_px"] * 0.0625)
    assert set(class_statistics(mosaic, NAMES, block=256, blockwise=True)[0]) == {
        "class",
        "nuclei",
        "area_px",
        "mean_area_px",
        "median_area_px",
    }


def test_nucleus_table_has_one_row_per_connected_component_also_blockwise(consep):
    """One row per nucleus; the blockwise path (small blocks) gives the same table."""
    from skimage.measure import label

    from napari_cinuseg.analysis.measurements import nucleus_table

    item = consep.items[0]
    cm = np.where(item.labels == 255, 0, item.labels).astype(np.uint8)
    names = consep.class_names
    whole = nucleus_table(cm, names, 0.25)
    pieces = nucleus_table(cm, names, 0.25, block=64, margin=48)
    components = sum(int(label(cm == i, connectivity=1).max()) for i in range(1, len(names) + 1))
    assert len(whole["nucleus"]) == components > 10
    assert sorted(zip(whole["class"], whole["area_px"])) == sorted(zip(pieces["class"], pieces["area_px"]))
    assert whole["area_um2"][0] == whole["area_px"][0] * 0.25**2
