"""The on-disk pyramid of a class map (pyramid.py), on a real exported-size class map."""

import numpy as np
import pytest
import zarr
from skimage import io

from napari_cinuseg.io.pyramid import build_pyramid


@pytest.fixture
def class_map_zarr(tmp_path, shared_data):
    """A 1300 × 1100 mosaic of real CoNSeP class maps, stored as a zarr array."""
    labels = sorted((shared_data / "consep" / "train" / "labels").glob("*.png"))[:30]
    tiles = [io.imread(p) for p in labels]
    mosaic = np.block([[tiles[r * 5 + c] for c in range(5)] for r in range(6)])[:1300, :1100]
    path = tmp_path / "map.zarr"
    z = zarr.open_array(str(path), mode="w", shape=mosaic.shape, chunks=(512, 512), dtype="uint8")
    z[:] = mosaic
    return path, mosaic


def test_levels_are_every_second_pixel_until_small(class_map_zarr):
    path, mosaic = class_map_zarr
    levels = build_pyramid(path, min_size=300, block=256)  # blocks smaller than the map
    assert [lv.shape for lv in levels] == [(1300, 1100), (650, 550), (325, 275), (163, 138)]
    expected = mosaic
    for lv in levels[1:]:
        expected = expected[::2, ::2]
        np.testing.assert_array_equal(lv[:], expected)  # labels are picked, never blended
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "map.level1.zarr",
        "map.level2.zarr",
        "map.level3.zarr",
        "map.zarr",
    ]


def test_an_existing_level_is_reused_and_a_wrong_one_rebuilt(class_map_zarr):
    path, mosaic = class_map_zarr
    build_pyramid(path, min_size=600)
    level1 = path.with_name("map.level1.zarr")
    stamp = {p: p.stat().st_mtime_ns for p in level1.rglob("*")}
    assert stamp
    again = build_pyramid(path, min_size=600)
    assert len(again) == 3
    assert {p: p.stat().st_mtime_ns for p in level1.rglob("*")} == stamp  # not rewritten
    # a stale level of another shape (an older class map under the same name) is rebuilt
    zarr.open_array(str(path.with_name("map.level2.zarr")), mode="w", shape=(5, 5), dtype="uint8")
    levels = build_pyramid(path, min_size=600)
    np.testing.assert_array_equal(levels[2][:], mosaic[::4, ::4])


def test_small_map_has_one_level_and_bad_arguments_are_refused(class_map_zarr):
    path, _ = class_map_zarr
    assert len(build_pyramid(path, min_size=5000)) == 1
    with pytest.raises(ValueError, match="block"):
        build_pyramid(path, block=3)
