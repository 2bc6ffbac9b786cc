import json
import os

import numpy as np
import pytest
import torch

from napari_cinuseg import CiNuSegModel, ModelFileError, load_model, read_record, save_model
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.model.segmenter import StepRecord

ARCH = Architecture("resnet18", "unet", (32, 16, 16, 8))


@pytest.fixture
def model():
    m = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], ARCH, colours=["#ff0000", "#00ff00"])
    m.steps.append(StepRecord(0, "base", ["Epithelial", "Spindle-shaped"], {"epochs": 1}, {}, {"final_loss": 0.5}))
    return m


def test_round_trip(model, tmp_path):
    path = save_model(model, tmp_path / "m.cinuseg.pt")
    loaded = load_model(path)
    assert loaded.record() == model.record()
    for k, v in model.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[k], v), k
    record = read_record(path)
    assert record["classes"][0] == {"name": "Epithelial", "colour": "#ff0000", "step": 0}
    assert record["architecture"]["encoder"] == "resnet18"
    assert record["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert record["steps"][0]["results"]["final_loss"] == 0.5
    assert sorted(os.listdir(tmp_path)) == ["m.cinuseg.pt"]


def test_half_precision_file_is_smaller_and_loads_as_float(model, tmp_path):
    full = save_model(model, tmp_path / "full.cinuseg.pt")
    half = save_model(model, tmp_path / "half.cinuseg.pt", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    w = load_model(half).network.classifier.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, model.network.classifier.weight, atol=1e-3, rtol=1e-3)


def test_never_overwrites_without_asking_and_never_a_prior(model, tmp_path):
    path = save_model(model, tmp_path / "m.cinuseg.pt")
    with pytest.raises(ModelFileError, match="exists"):
        save_model(model, path)
    save_model(model, path, overwrite=True)  # the same model may replace itself when asked
    child = model.child(["Other"])
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match="trained from"):
        save_model(child, path, overwrite=True)
    assert path.read_bytes() == before


def test_failed_save_keeps_the_old_file(model, tmp_path, monkeypatch):
    path = save_model(model, tmp_path / "m.cinuseg.pt")
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(ModelFileError, match="m.cinuseg.pt could not be written: disk full"):
        save_model(model, path, overwrite=True)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.cinuseg.pt"]


class Payload:
    """Unpickling this would create a file: loading must refuse it, never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.cinuseg.pt"
    torch.save({"format": "napari-cinuseg-model", "format_version": 1, "record": "{}", "x": Payload(str(marker))}, path)
    with pytest.raises(ModelFileError, match="pickled Python objects"):
        load_model(path)
    assert not marker.exists()


def test_bad_files_say_what_is_wrong(model, tmp_path):
    good = save_model(model, tmp_path / "m.cinuseg.pt")
    truncated = tmp_path / "t.cinuseg.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="not a complete PyTorch file"):
        load_model(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a usable"):
        load_model(text)
    other = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2)}, other)
    with pytest.raises(ModelFileError, match="not a napari-cinuseg model"):
        load_model(other)
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "missing.cinuseg.pt")
    with pytest.raises(ModelFileError, match="resnet18 model but resnet50"):
        load_model(good, expect_encoder="resnet50")
    newer = tmp_path / "newer.cinuseg.pt"
    torch.save({"format": "napari-cinuseg-model", "format_version": 99, "record": "{}", "state_dict": {}}, newer)
    with pytest.raises(ModelFileError, match="newer"):
        load_model(newer)
    odd = tmp_path / "odd.cinuseg.pt"
    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["classifier.bias"] = 1
    torch.save(payload, odd)
    with pytest.raises(ModelFileError, match="not tensors"):
        load_model(odd)
    mismatched = tmp_path / "mismatch.cinuseg.pt"
    payload = torch.load(good, weights_only=True)
    rec = json.loads(payload["record"])
    rec["architecture"]["num_classes"] = 5
    payload["record"] = json.dumps(rec)
    torch.save(payload, mismatched)
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(mismatched)


def test_child_keeps_parent_and_grows(model):
    child = model.child(["Other"], colours=["#0000ff"])
    assert child.class_names == ["Epithelial", "Spindle-shaped", "Other"]
    assert child.classes[-1].step == 1 and child.lineage == [model.id] and child.id != model.id
    assert model.network.num_classes == 3 and child.network.num_classes == 4
    with pytest.raises(ValueError, match="already knows"):
        model.child(["EPITHELIAL"])
    with pytest.raises(ValueError, match="background"):
        model.child(["Background"])
    with pytest.raises(ValueError, match="#rrggbb"):
        model.child(["Other"], colours=["red"])


def test_bundled_base_model_segments_held_out_consep(consep):
    """The shipped base model (8-bit kernels) loads and segments images of sources it was not trained on."""
    from napari_cinuseg.analysis.evaluation import evaluate
    from napari_cinuseg.datasets.splits import split_by_source
    from napari_cinuseg.model.file import BUNDLED_MODEL

    model = load_model(BUNDLED_MODEL)
    assert model.class_names == ["Epithelial", "Spindle-shaped"] and model.steps[0].method == "base"
    _, val = split_by_source(consep, 0.2, seed=0)  # the split it was trained beside
    few = type(val)(val.class_names, [it for it in val.items if it.source == val.sources[0]][:6])
    dice = evaluate(model, few, "cpu")
    assert dice["Epithelial"] > 50, dice


def test_child_of_the_bundled_model_keeps_its_scores_on_real_patches(consep):
    """Growing a sigmoid-scored model must not shock it. On real CoNSeP patches the
    grown network's background and old-class sigmoid scores equal the prior's, and the new class
    starts low."""
    import numpy as np

    from napari_cinuseg.model.file import BUNDLED_MODEL, load_model

    prior = load_model(BUNDLED_MODEL)
    child = prior.child(["Other"])
    images = np.stack([item.image for item in consep.items[:4]])
    x = prior.normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    prior.network.eval()
    child.network.eval()
    with torch.no_grad():
        before = torch.sigmoid(prior.network(x).logits.float())
        after = torch.sigmoid(child.network(x).logits.float())
    k_old = prior.num_channels
    assert after.shape[1] == k_old + 1
    torch.testing.assert_close(after[:, :k_old], before, atol=1e-3, rtol=0)
    assert float(after[:, k_old:].mean()) < 0.1


def test_renamed_files_and_random_bytes_say_what_they_are(tmp_path):
    """Not "pickled Python objects" (the wrong reason): what the file really is."""
    cases = {
        "notes.cinuseg.pt": (b"patient list\nnot a model\n", "it is a text file, renamed"),
        "noise.cinuseg.pt": (
            bytes(np.random.default_rng(0).integers(128, 256, 4096, dtype=np.uint8)),
            "no PyTorch file",
        ),
        "empty.cinuseg.pt": (b"", "empty"),
        "photo.cinuseg.pt": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "a PNG image, renamed"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelFileError, match=f"{name} is not a usable.*{reason}") as err:
            load_model(path)
        assert "pickled" not in str(err.value)


def _edited(good, tmp_path, name, edit):
    payload = torch.load(good, weights_only=True)
    rec = json.loads(payload["record"])
    edit(rec)
    payload["record"] = json.dumps(rec)
    path = tmp_path / name
    torch.save(payload, path)
    return path


def test_a_record_that_would_segment_wrongly_is_refused(model, tmp_path):
    good = save_model(model, tmp_path / "m.cinuseg.pt")
    zero_std = _edited(good, tmp_path, "std0.cinuseg.pt", lambda r: r["normalization"].update(std=[0.0, 0.2, 0.2]))
    with pytest.raises(ModelFileError, match=r"std0.cinuseg.pt: normalization std .* must be positive"):
        load_model(zero_std)
    nan_mean = _edited(
        good, tmp_path, "nan.cinuseg.pt", lambda r: r["normalization"].update(mean=[float("nan"), 0.5, 0.5])
    )
    with pytest.raises(ModelFileError, match="must be finite"):
        load_model(nan_mean)
    n = len(model.classes)
    extra = _edited(
        good, tmp_path, "extra.cinuseg.pt", lambda r: r["classes"].append(dict(r["classes"][0], name="Extra"))
    )
    with pytest.raises(
        ModelFileError, match=f"names {n + 1} class\\(es\\), but its network segments {n} \\(plus background\\)"
    ):
        load_model(extra)


def test_int8_file_is_smaller_again_and_loads_close_to_the_weights(model, tmp_path):
    from napari_cinuseg.model.file import INT8_SCALE, _read_payload

    half = save_model(model, tmp_path / "half.cinuseg.pt", half=True)
    small = save_model(model, tmp_path / "int8.cinuseg.pt", int8=True)
    assert small.stat().st_size < 0.7 * half.stat().st_size
    payload = _read_payload(small)
    assert payload["format_version"] == 2 and read_record(small) == read_record(half)
    assert payload["state_dict"]["encoder.layer4.0.conv1.weight"].dtype == torch.int8
    assert payload["state_dict"]["encoder.layer4.0.conv1.weight" + INT8_SCALE].shape == (512,)
    assert torch.load(half, weights_only=True)["format_version"] == 1  # readable by older versions
    loaded = load_model(small)
    assert loaded.record() == model.record()
    for k, v in model.network.state_dict().items():
        got = loaded.network.state_dict()[k]
        assert got.dtype == v.dtype, k
        if v.is_floating_point() and v.dim() == 4 and v.numel() >= 4096:  # 8 bits: within half a step
            step = v.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
            assert ((got - v).abs() <= step / 2 + 1e-6).all(), k
        elif v.is_floating_point():
            torch.testing.assert_close(got, v.half().float(), rtol=0, atol=0)


def test_damaged_int8_weights_are_refused(model, tmp_path):
    from napari_cinuseg.model.file import INT8_SCALE

    path = save_model(model, tmp_path / "int8.cinuseg.pt", int8=True)
    payload = torch.load(path, weights_only=True)
    key = "encoder.layer4.0.conv1.weight" + INT8_SCALE
    for damage in ("drop", "shape"):
        broken = {**payload, "state_dict": dict(payload["state_dict"])}
        if damage == "drop":
            del broken["state_dict"][key]
        else:
            broken["state_dict"][key] = broken["state_dict"][key][:3]
        torch.save(broken, tmp_path / f"{damage}.cinuseg.pt")
        with pytest.raises(ModelFileError, match="8-bit weights"):
            load_model(tmp_path / f"{damage}.cinuseg.pt")


def test_bundled_model_ships_at_most_30_mb_with_its_separation_head():
    from napari_cinuseg.model.file import BUNDLED_MODEL

    assert BUNDLED_MODEL.stat().st_size <= 30 * 10**6
    payload = torch.load(BUNDLED_MODEL, weights_only=True)
    assert payload["format_version"] == 3  # fp16 with the head: 8-bit kernels cost it class Dice
