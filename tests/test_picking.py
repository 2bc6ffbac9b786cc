"""A click on a nucleus takes the model's whole nucleus object (session/picking.py)."""

import numpy as np
import pytest

from napari_cinuseg.session.picking import objects_at, paint_objects


def _two_nuclei():
    inst = np.zeros((40, 40), np.uint32)
    inst[5:15, 5:15] = 1
    inst[20:30, 22:34] = 2
    return inst


def test_a_click_takes_the_object_under_it_or_the_nearest_within_the_radius():
    inst = _two_nuclei()
    ids = objects_at(inst, [(10, 10), (25, 25), (38, 2), (17, 10), (-3, 5), (25, 45)])
    assert ids.tolist() == [1, 2, 0, 0, 0, 0]
    assert objects_at(inst, [(17, 10)], radius=3).tolist() == [1]  # 3 px below nucleus 1
    assert objects_at(inst, [(19, 10)], radius=3).tolist() == [0]  # 5 px: too far


def test_painting_objects_keeps_strokes_and_counts_pixels():
    inst = _two_nuclei()
    ann = np.zeros_like(inst, np.uint8)
    ann[6, 6] = 3  # a stroke of another label
    n = paint_objects(ann, inst, [1, 0, 1], label=1)
    assert n == 99 and ann[6, 6] == 3 and (ann[inst == 1] > 0).all() and not ann[inst == 2].any()
    assert paint_objects(ann, inst, [1], label=2, over=True) == 100 and (ann[inst == 1] == 2).all()
    with pytest.raises(ValueError, match="different pixels"):
        paint_objects(ann[:10], inst, [1], 1)
