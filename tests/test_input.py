"""What a network sees: RGB, or only the hematoxylin density, recorded in the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cinuseg import CiNuSegModel, load_model, save_model
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.model.segmenter import HEMATOXYLIN_MAX, HEMATOXYLIN_MEAN, HEMATOXYLIN_STD, hematoxylin_density

ARCH = Architecture("resnet18", "unet", (32, 16, 16, 8))


def test_hematoxylin_density_is_scikit_images_on_a_real_patch(consep):
    from skimage.color import rgb2hed

    image = consep.items[0].image
    ours = hematoxylin_density(torch.from_numpy(image).permute(2, 0, 1)[None])[0, 0].numpy()
    np.testing.assert_allclose(ours, rgb2hed(image)[..., 0].clip(0, HEMATOXYLIN_MAX), atol=1e-5)
    assert ours.max() > 0.1  # a patch with nuclei


def test_the_darkest_nuclei_read_as_the_darkest_a_model_knows():
    """A near-black nucleus pixel (RGB 5, 2, 10, as in CMU-1's darkest nuclei) has a hematoxylin density far
    beyond CoNSeP's; it is capped at HEMATOXYLIN_MAX, which CoNSeP's own nuclei barely reach."""
    from skimage.color import rgb2hed

    dark = np.array([[[5, 2, 10]]], np.uint8)
    assert rgb2hed(dark)[0, 0, 0] > HEMATOXYLIN_MAX
    ours = hematoxylin_density(torch.from_numpy(dark).permute(2, 0, 1)[None])
    assert float(ours.max()) == pytest.approx(HEMATOXYLIN_MAX)


def test_a_hematoxylin_model_records_its_input_and_keeps_it_when_grown(consep, tmp_path):
    model = CiNuSegModel.new(["Epithelial"], ARCH, input="hematoxylin")
    assert model.mean == (HEMATOXYLIN_MEAN,) * 3 and model.std == (HEMATOXYLIN_STD,) * 3
    x = torch.from_numpy(consep.items[0].image).permute(2, 0, 1)[None]
    seen = model.normalize(x)
    assert seen.shape == (1, 3, *x.shape[-2:]) and torch.equal(seen[:, 0], seen[:, 2])
    expected = (hematoxylin_density(x)[:, 0] - HEMATOXYLIN_MEAN) / HEMATOXYLIN_STD
    torch.testing.assert_close(seen[:, 1], expected)
    loaded = load_model(save_model(model, tmp_path / "h.cinuseg.pt"))
    assert loaded.input == "hematoxylin" and loaded.record()["normalization"]["input"] == "hematoxylin"
    torch.testing.assert_close(loaded.normalize(x), seen)
    assert loaded.child(["Other"]).input == "hematoxylin"
    rgb = CiNuSegModel.new(["Epithelial"], ARCH)
    assert rgb.input == "rgb" and not torch.equal(rgb.normalize(x)[:, 0], rgb.normalize(x)[:, 2])


def test_an_unknown_input_is_refused():
    with pytest.raises(ValueError, match="hematoxylin"):
        CiNuSegModel.new(["Epithelial"], ARCH, input="grey")


def test_train_base_from_the_command_line_with_hematoxylin_input(shared_data, tmp_path, capsys):
    from napari_cinuseg.cli import main

    out = tmp_path / "h.cinuseg.pt"
    args = [
        "--data",
        str(shared_data / "consep"),
        "--iterations",
        "2",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--device",
        "cpu",
    ]
    assert main(["train-base", *args, "--classes", "Epithelial", "--input", "hematoxylin", "--out", str(out)]) == 0
    model = load_model(out)
    assert model.input == "hematoxylin" and model.steps[0].settings["input"] == "hematoxylin"
    assert model.predict(np.full((64, 64, 3), 200, np.uint8)).shape == (64, 64)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "input: hematoxylin density only" in capsys.readouterr().out
