import math

import pytest
import torch

from napari_cinuseg.network import Architecture, NucleiSegNet


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


def test_add_classes_initialises_from_background_as_mib():
    torch.manual_seed(0)
    net = NucleiSegNet(Architecture("resnet18", "unet", (32, 16, 16, 8), num_classes=3)).eval()
    w0, b0 = net.classifier.weight.detach().clone(), net.classifier.bias.detach().clone()
    x = torch.randn(1, 3, 64, 64)
    before = net(x).logits
    net.add_classes(2)
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
