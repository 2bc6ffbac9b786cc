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


# --- clicks on an image: areas, windows, waiting clicks -----------------------------------------


def test_an_area_covers_a_click_far_enough_from_its_inner_sides():
    from napari_cinuseg.session.picking import SegmentedArea

    labels = np.zeros((100, 100), np.uint32)
    area = SegmentedArea((50, 0, 150, 100), labels, np.zeros(1), (300, 100))  # rows 50-150 of a 300-row image
    assert area.covers((100, 50), 20) and area.covers((100, 0), 20) and area.covers((100, 99), 20)  # image edges
    assert not area.covers((60, 50), 20) and not area.covers((140, 50), 20)  # near a side inside the image
    assert not area.covers((10, 50), 20) and not area.covers((100, 100), 0)  # outside
    whole = SegmentedArea((0, 0, 300, 100), np.zeros((300, 100)), np.zeros(1), (300, 100))
    assert whole.covers((0, 0), 500) and whole.covers((299.4, 99.4), 500)
    with pytest.raises(ValueError, match="does not cover the box"):
        SegmentedArea((0, 0, 10, 10), labels, np.zeros(1), (300, 100))
    with pytest.raises(ValueError, match="not inside the image"):
        SegmentedArea((0, 0, 400, 100), np.zeros((400, 100)), np.zeros(1), (300, 100))


def test_a_pick_paints_the_whole_nucleus_keeps_strokes_and_reads_far_enough():
    from napari_cinuseg.session.picking import SegmentedArea, pick_nucleus

    inst = np.zeros((200, 200), np.uint32)
    inst[20:40, 20:40] = 1
    inst[100:110, 40:120] = 2  # a long object: more than twice the reach about a click
    inst[150:152, 0:200] = 3  # and one more than four times
    area = SegmentedArea((0, 0, 200, 200), inst, np.array([0, 2, 1, 1]), (200, 200))
    ann = np.zeros((200, 200), np.uint8)
    ann[25, 25] = 2  # a stroke of background
    pick = pick_nucleus(area, ann, (30.2, 29.6), 1, reach=16)
    assert (pick.nucleus, pick.nucleus_class, pick.area, pick.kept) == (1, 2, 400, 1)
    assert ann.sum() == 2  # the annotation is not written: the caller paints (napari's undo)
    ann[pick.rows, pick.cols] = 1
    assert (ann[inst == 1] > 0).all() and ann[25, 25] == 2 and ann.sum() == 399 + 2
    long = pick_nucleus(area, ann, (105, 60), 1, reach=16)  # read twice, then four times as far
    assert long.nucleus == 2 and long.area == 10 * 80 and long.cols.min() == 40 and long.cols.max() == 119
    too_long = pick_nucleus(area, ann, (150, 100), 1, reach=16)  # no nucleus: read 64 px about the click
    assert too_long.nucleus == 3 and too_long.area == 2 * 129
    near = pick_nucleus(area, ann, (43, 30), 1, reach=16, radius=4)  # 3 px below nucleus 1: painted already
    assert near.nucleus == 1 and len(near.rows) == 0 and near.kept == 400
    miss = pick_nucleus(area, ann, (70, 70), 1, reach=16, radius=4)
    assert miss.nucleus == 0 and len(miss.rows) == 0
    with pytest.raises(ValueError, match="outside the segmented box"):
        pick_nucleus(SegmentedArea((0, 0, 50, 50), inst[:50, :50], area.classes, (200, 200)), ann, (60, 60), 1, reach=8)
    with pytest.raises(ValueError, match="differ in size"):
        pick_nucleus(area, ann[:100], (30, 30), 1, reach=8)


def test_a_window_area_is_read_in_image_pixels_where_it_lies():
    from napari_cinuseg.session.picking import SegmentedArea, pick_nucleus

    inst = np.zeros((60, 80), np.uint32)
    inst[30:36, 40:50] = 7
    area = SegmentedArea((100, 200, 160, 280), inst, np.arange(8), (400, 400))  # a window of a larger image
    ann = np.zeros((400, 400), np.uint8)
    pick = pick_nucleus(area, ann, (133, 245), 3, reach=20)
    assert pick.nucleus == 7 and (pick.rows.min(), pick.rows.max(), pick.cols.min(), pick.cols.max()) == (
        130,
        135,
        240,
        249,
    )


def test_the_label_a_click_paints_is_one_of_the_layers():
    from napari_cinuseg.session.picking import checked_label

    names = ["unpainted", "Lymphocyte", "background", "Epithelial (correction)"]
    assert [checked_label(k, names) for k in (1, 2, 3)] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"does not erase: choose under Paint .*Lymphocyte \[1\], background \[2\]"):
        checked_label(0, names)
    with pytest.raises(ValueError, match="label 7 is none of this annotation layer's"):
        checked_label(7, names)


def test_what_a_click_did_is_said():
    from napari_cinuseg.session.picking import NO_NUCLEUS, Pick, pick_sentence, picks_sentence

    classes = ["Epithelial", "Spindle-shaped"]
    rows = np.arange(5)
    painted = Pick(rows, rows, nucleus=4, nucleus_class=2, area=8)
    assert pick_sentence(painted, "Lymphocyte", classes) == (
        "Painted the model's Spindle-shaped nucleus (8 px) as Lymphocyte; its 3 px painted before keep their paint."
    )
    assert pick_sentence(Pick(rows[:0], rows[:0]), "Lymphocyte", classes) == NO_NUCLEUS
    assert "painted already" in pick_sentence(Pick(rows[:0], rows[:0], 4, 1, 8), "background", classes)
    said = picks_sentence(
        [(painted, "Lymphocyte"), (painted, "Lymphocyte"), (painted, "background"), (Pick(rows[:0], rows[:0]), "x")],
        classes,
    )
    assert said == (
        "4 clicks: 2 nuclei painted as Lymphocyte; 1 nucleus painted as background; "
        "1 where the model found no nucleus: paint it by hand."
    )


def test_clicks_wait_for_windows_sized_in_model_pixels():
    from napari_cinuseg.session.picking import Click, NucleusClicks, SegmentedArea

    at40 = NucleusClicks((5000, 3000), model_pixel_size=0.25, image_pixel_size=0.25)
    assert (at40.window, at40.reach, at40.radius) == (1024, 128, 8)
    at20 = NucleusClicks((5000, 3000), model_pixel_size=0.25, image_pixel_size=0.5)
    assert (at20.window, at20.reach, at20.radius) == (512, 64, 4)  # 1024 model pixels, 256 µm either way
    unknown = NucleusClicks((5000, 3000), model_pixel_size=0.25)  # the model's pixel size assumed
    assert (unknown.window, unknown.reach) == (1024, 128)
    assert at20.window_around((2500, 1500)) == (2244, 1244, 2756, 1756)  # centred
    assert at20.window_around((10, 2990)) == (0, 2488, 512, 3000)  # moved inside the image
    assert NucleusClicks((300, 200), model_pixel_size=0.25).window_around((150, 100)) == (0, 0, 300, 200)
    with pytest.raises(ValueError, match="outside the image"):
        at20.window_around((-1, 5))
    with pytest.raises(ValueError, match="nothing to click"):
        NucleusClicks((0, 10))

    at20.pending = [Click((2500, 1500), 1), Click((2510, 1700), 2), Click((100, 100), 1)]
    box = at20.window_around(at20.pending[0].point)
    area = SegmentedArea(box, np.zeros((512, 512), np.uint32), np.zeros(1), (5000, 3000))
    at20.add(area)
    assert [c.point for c in at20.take_pending(area)] == [(2500, 1500)]  # (2510, 1700): 56 px from its side
    assert [c.point for c in at20.pending] == [(2510, 1700), (100, 100)]  # they wait for the next window
    assert at20.area_for((2500, 1500)) is area and at20.area_for((100, 100)) is None
    for _ in range(12):  # the newest windows are kept
        at20.add(SegmentedArea((0, 0, 512, 512), np.zeros((512, 512)), np.zeros(1), (5000, 3000)))
    assert len(at20.areas) == 8 and area not in at20.areas
    with pytest.raises(ValueError, match="an area of an image"):
        at20.add(SegmentedArea((0, 0, 10, 10), np.zeros((10, 10)), np.zeros(1), (10, 10)))


def test_same_pixel_size():
    from napari_cinuseg.session.picking import same_pixel_size

    assert same_pixel_size(None, 0) and same_pixel_size(0.5, 0.5) and not same_pixel_size(0.5, None)
    assert not same_pixel_size(0.499, 0.5)


@pytest.mark.slow  # the bundled model segments twice on the CPU (about 10 s on two cores)
def test_a_window_about_a_click_is_segmented_in_the_images_pixels_at_20x():
    """The bundled model (0.25 µm/px) on a crop of the 20× sample (0.499 µm/px): a window's
    instance map is in the image's pixels, and its nuclei lie where the whole crop's do."""
    from napari_cinuseg.model.file import BUNDLED_MODEL, load_model
    from napari_cinuseg.plugin.sample_data import sample_he
    from napari_cinuseg.runtime.events import drain
    from napari_cinuseg.session.nuclei import segment_nuclei_and_measure
    from napari_cinuseg.session.picking import segment_area

    model = load_model(BUNDLED_MODEL)
    ((image, attributes),) = sample_he()
    crop = np.asarray(image[0:384, 384:768])
    px = attributes["metadata"]["pixel_size_um"]
    area = drain(segment_area(model, crop, (64, 32, 320, 352), tile=256, image_pixel_size=px, device="cpu"))
    assert area.box == (64, 32, 320, 352) and area.labels.shape == (256, 320) and area.image_shape == (384, 384)
    whole = drain(segment_nuclei_and_measure(model, crop, tile=256, image_pixel_size=px, device="cpu")).nuclei.labels
    inner = whole[64 + 64 : 320 - 64, 32 + 64 : 352 - 64]  # far from the window's sides
    window = area.labels[64:-64, 64:-64]
    agree = ((inner > 0) == (window > 0)).mean()
    assert (inner > 0).mean() > 0.05 and agree > 0.95
