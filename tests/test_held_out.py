"""analysis/held_out.py: which scored images a model trained on, from its steps' records."""

from napari_cinuseg.analysis.held_out import trained_on, trained_on_warning
from napari_cinuseg.datasets.layouts import read_dataset
from napari_cinuseg.datasets.splits import split_by_source
from napari_cinuseg.model.file import BUNDLED_MODEL, load_model


def test_the_bundled_model_was_not_trained_on_the_validation_split_evaluate_takes(shared_data):
    consep = read_dataset("consep", shared_data / "consep")
    bundled = load_model(BUNDLED_MODEL)
    _, val = split_by_source(consep, 0.2, 0)  # `cinuseg evaluate --split val`
    assert trained_on(bundled, [it.name for it in val.items]) == []
    assert trained_on_warning([], len(val.items)) is None
    (base,) = trained_on(bundled, [it.name for it in consep.items])  # every patch: the others were trained on
    assert base.step == 0 and len(base.images) == len(consep.items) - len(val.items)
    said = trained_on_warning([base], len(consep.items))
    assert said.startswith(f"{len(base.images)} of the {len(consep.items)} images scored")
    # the benchmark's balanced validation split is other sources: the bundled model trained on them
    _, balanced = split_by_source(consep, 0.2, 0, balanced=True)
    assert trained_on(bundled, [it.name for it in balanced.items])
