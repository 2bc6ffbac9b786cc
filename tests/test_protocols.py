import pytest

from napari_cinuseg.datasets.protocols import CLASS_ORDERS, make_protocol


def test_the_papers_protocols():
    m = CLASS_ORDERS["monusac"]
    assert [len(make_protocol(p, m).steps) for p in ("1-1", "2-1", "2-2", "3-1")] == [4, 3, 2, 2]
    assert make_protocol("1-1", m).steps == (("Epithelial",), ("Lymphocyte",), ("Neutrophil",), ("Macrophage",))
    assert make_protocol("2-2", m).steps == (("Epithelial", "Lymphocyte"), ("Neutrophil", "Macrophage"))
    c = make_protocol("1-1", CLASS_ORDERS["consep"])
    assert c.steps == (("Epithelial",), ("Spindle-shaped",), ("Other",))
    assert c.base_classes == ("Epithelial",) and c.added_classes == ("Spindle-shaped", "Other")
    assert c.seen_after(1) == ("Epithelial", "Spindle-shaped")
    assert make_protocol("2-1", CLASS_ORDERS["consep"]).steps == (("Epithelial", "Spindle-shaped"), ("Other",))


def test_protocol_errors():
    with pytest.raises(ValueError, match="X-Y"):
        make_protocol("one", ["a", "b"])
    with pytest.raises(ValueError, match="needs at least 4 classes"):
        make_protocol("3-1", CLASS_ORDERS["consep"])
    with pytest.raises(ValueError, match="lacks"):
        make_protocol("1-1", ["Epithelial", "Neutrophil"], known=CLASS_ORDERS["consep"])
    # a custom order, matched case-insensitively to the data set's names
    p = make_protocol("1-1", ["other", "epithelial"], known=CLASS_ORDERS["consep"])
    assert p.steps == (("Other",), ("Epithelial",))
