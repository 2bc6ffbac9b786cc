"""ATT's progress in words a pathologist reads, with its numbers kept for a tooltip."""

from napari_cinuseg.runtime.events import CropStats, Progress
from napari_cinuseg.session.att import att_numbers, att_words


def _crop(r, fired):
    return CropStats(0, 0, 0, 64, r, 10.0 if fired else 1.0, 0.5 if fired else 1.0)


def test_att_in_words_without_its_symbols():
    assert att_words([]) == "" and att_numbers([]) == ""
    one = att_words([_crop(0.9, True)])
    assert one == "keeping the old classes weighs more on this crop (most of its nuclei are the new class)"
    assert att_words([_crop(0.2, False)]).startswith("the old classes and the new one weigh the same on this crop")
    assert att_words([_crop(0.9, True)] * 3).startswith("keeping the old classes weighs more on these 3 crops")
    assert att_words([_crop(0.1, False)] * 2).startswith("the old classes and the new one weigh the same on these 2")
    mixed = att_words([_crop(0.9, True), _crop(0.1, False), _crop(0.8, True), _crop(0.0, False)])
    assert mixed.startswith("keeping the old classes weighs more on 2 of these 4 crops")
    for sentence in (one, mixed):
        assert "r=" not in sentence and "t_o" not in sentence and "ATT" not in sentence


def test_att_numbers_are_the_means_of_the_iterations_crops():
    text = att_numbers([_crop(0.9, True), _crop(0.1, False)])
    assert "2 crop(s)" in text and "r=0.50" in text and "t_o=5.50" in text and "t_n=0.75" in text


def test_the_training_section_says_att_in_words_with_the_numbers_in_a_tooltip(qtbot):
    from napari_cinuseg.ui.train_section import TrainSection

    section = TrainSection()
    qtbot.addWidget(section)
    crops = (_crop(0.9, True),)
    section.on_event(Progress(1, 0, 3, 10, 0.5, {"cac": 0.1}, 0.01, 2.0, crops))
    text = section.iteration_text.text()
    assert text.startswith("iteration 3/10, loss 0.500") and "keeping the old classes weighs more" in text
    assert "t_o" not in text and "t_o=10.00" in section.iteration_text.toolTip()
    section.reset_results()
    assert section.iteration_text.text() == "" and section.iteration_text.toolTip() == ""
