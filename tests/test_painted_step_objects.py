"""benchmarks/painted_step.py --objects: the new class's nuclei scored as objects, on tiny
instance maps written to disk as CoNSeP's are."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio

from napari_cinuseg.analysis.objects import majority_classes
from napari_cinuseg.datasets.labelled import LabelledImage, LabelledSet, read_consep_instances

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Epithelial", "Spindle-shaped", "Other"]  # ids 1, 2, 3; the model's channels the same here


def _script():
    spec = importlib.util.spec_from_file_location("painted_step", ROOT / "benchmarks" / "painted_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny(tmp_path):
    """Two 32² images: ``a`` holds two Other nuclei (ids 1 and 5, the second with 40 % of its
    pixels unlabelled background: Other by majority) and an Epithelial one (id 2); ``b`` one
    Epithelial nucleus only. Their instance maps are written as CoNSeP's (uint16 PNG)."""
    inst_a = np.zeros((32, 32), np.uint16)
    lab_a = np.zeros((32, 32), np.uint8)
    inst_a[2:8, 2:8], lab_a[2:8, 2:8] = 1, 3
    inst_a[12:20, 12:20], lab_a[12:20, 12:20] = 2, 1
    inst_a[22:32, 22:27], lab_a[22:28, 22:27] = 5, 3  # rows 28-31 of it labelled background
    inst_b = np.zeros((32, 32), np.uint16)
    lab_b = np.zeros((32, 32), np.uint8)
    inst_b[4:12, 4:12], lab_b[4:12, 4:12] = 7, 1
    (tmp_path / "instances").mkdir()
    items = []
    for name, inst, lab in (("train_1_000", inst_a, lab_a), ("train_2_000", inst_b, lab_b)):
        skio.imsave(tmp_path / "instances" / f"{name}.png", inst, check_contrast=False)
        items.append(LabelledImage(np.zeros((32, 32, 3), np.uint8), lab, name.rsplit("_", 1)[0], name))
    data = LabelledSet(CLASSES, items, 0.25)
    return data, read_consep_instances(tmp_path, [it.name for it in items])


def test_new_class_objects_keep_only_that_class_on_both_sides(tmp_path):
    bench = _script()
    data, instances = _tiny(tmp_path)
    truths = bench.true_class_objects(data, "Other", instances)
    assert set(np.unique(truths["train_1_000"])) == {0, 1, 5}  # the Epithelial nucleus left out
    assert not truths["train_2_000"].any()

    def found(relabel=None):  # the true nuclei as a model's objects, each of its majority class
        def objects(item):
            inst = instances[item.name].astype(np.uint32)
            classes = majority_classes(inst, item.labels)
            if relabel:
                classes = np.where(classes == 3, relabel, classes)
            return inst, classes

        return objects

    same = bench.class_object_scores(data, truths, found(), channel=3)
    assert same["pq"] == same["f1"] == same["aji"] == same["sq"] == 1.0
    assert same["pq_pooled"] == same["f1_pooled"] == same["aji_pooled"] == 1.0
    assert (same["tp"], same["fp"], same["fn"], same["true"], same["pred"]) == (2, 0, 0, 2, 2)
    assert (same["images"], same["images_without"]) == (1, 1)  # image b holds no Other on either side

    absent = bench.class_object_scores(data, truths, found(relabel=1), channel=3)  # Other called Epithelial
    assert absent["pq"] == absent["f1"] == absent["aji"] == absent["pq_pooled"] == 0.0
    assert (absent["tp"], absent["fn"], absent["pred"]) == (0, 2, 0)


def test_new_class_objects_refuse_images_without_the_class(tmp_path):
    bench = _script()
    data, instances = _tiny(tmp_path)
    with pytest.raises(ValueError, match="no true Spindle-shaped nucleus in the 2 images"):
        bench.true_class_objects(data, "Spindle-shaped", instances)
