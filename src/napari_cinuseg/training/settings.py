"""Training settings: every hyper-parameter of the paper as a named setting, and the presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass
class TrainSettings:
    # network (used when a base model is made; an incremental step keeps its prior's network)
    encoder: str = "resnet18"
    decoder: str = "unet"
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    encoder_weights: str | None = None  # a local torchvision ResNet state dict; never downloaded
    input: str = "rgb"  # names.INPUTS: the RGB image, or its hematoxylin optical density only

    # optimisation (SGD with momentum, poly schedule)
    lr_base: float = 0.01  # step 0
    lr_step: float = 0.001  # incremental steps
    momentum: float = 0.9
    weight_decay: float = 0.01
    poly_power: float = 0.9
    epochs: int = 25
    iterations: int | None = None  # if set, overrides epochs
    # With few, large images (MoNuSAC) an epoch of one crop per image is a handful of
    # iterations: a step trains at least this many (unless ``iterations`` is set).
    min_iterations: int = 400
    batch_size: int = 8
    crop_size: int = 128
    freeze_bn: bool = True  # incremental steps keep the prior's BatchNorm statistics
    # Every method alike: the gradient's global L2 norm is clipped to this before each SGD step
    # (0 = off), and an iteration whose loss or gradient is not finite does not step at all; a
    # step stops with an error after more than ``max_skipped`` such iterations.
    grad_clip: float = 1.0
    # Incremental steps: the new classes' classifier rows learn at this multiple of lr_step (they
    # start from zero weights and must learn in a few hundred iterations; the rest of the
    # network only has to stay where the prior left it), and this share of the crops is placed
    # on a painted pixel of a new class (crops.CropDataset).
    new_class_lr: float = 10.0
    painted_crops: float = 0.5
    max_skipped: int = 10
    # augmentation beyond flips and rotations (augment.py); 0 = off, as in the paper's protocol
    stain_jitter: float = 0.0  # HED stain strength s: concentrations × 2^U(−s, s), + U(−s, s)·spread/2
    scale_jitter: float = 0.0  # zoom 2^U(−s, s): 1.0 covers 20× to 80× for a 40× training set

    # The user's changes to the step method's own settings (fields of its dataclass, e.g.
    # CiNuSeg's τ: methods.method_settings), handed to methods.get_method by the step.
    method_settings: dict = field(default_factory=dict)

    # running
    seed: int = 0
    device: str = "auto"  # auto = CUDA, then MPS, then CPU
    amp: bool = True  # mixed precision on CUDA only
    num_workers: int = 0
    log_every: int = 1

    def architecture(self, num_classes: int = 1):
        from ..model.network import Architecture  # here, so that reading settings needs no PyTorch

        return Architecture(self.encoder, self.decoder, self.decoder_channels, num_classes)

    def for_network(self, arch) -> TrainSettings:
        """These settings with the network of ``arch`` (a prior model's): a step keeps its
        prior's network, so its settings must name that network."""
        return self.replace(encoder=arch.encoder, decoder=arch.decoder, decoder_channels=tuple(arch.decoder_channels))

    def replace(self, **changes) -> TrainSettings:
        """These settings with ``changes``; a name that is no training setting but a method's
        own (e.g. ``tau``) goes into ``method_settings``."""
        own = {f.name for f in fields(self)}
        others = {k: changes.pop(k) for k in set(changes) - own}
        if others:
            from ..methods import all_method_settings  # here: reading settings needs no PyTorch

            unknown = set(others) - set(all_method_settings())
            if unknown:
                raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
            changes["method_settings"] = {**changes.get("method_settings", self.method_settings), **others}
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        d["method_settings"] = dict(self.method_settings)
        return d

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(self.decoder_channels)
        if self.crop_size < 32 or self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32 (the encoder's stride), got {self.crop_size}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be at least 1")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip is a gradient norm (0 = off), got {self.grad_clip}")
        if self.new_class_lr <= 0:
            raise ValueError(f"new_class_lr is a factor on lr_step, above 0, got {self.new_class_lr}")
        if not 0 <= self.painted_crops <= 1:
            raise ValueError(f"painted_crops is a share of the crops in [0, 1], got {self.painted_crops}")
        if self.max_skipped < 0:
            raise ValueError(f"max_skipped is a number of iterations, got {self.max_skipped}")
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        self.method_settings = dict(self.method_settings)
        for name, (low, high) in SETTING_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}] ({USER_SETTINGS[name]}), got {value}")


# The training settings a user may change for one run, with what each means: the command line
# makes one option of each (cli/parser.py), and one of each method's own setting beside them
# (methods.method_settings); the panel its advanced fields (ui/sections.py).
USER_SETTINGS: dict[str, str] = {
    "epochs": "training epochs (one random crop per image each)",
    "iterations": "total iterations (overrides --epochs)",
    "batch_size": "crops per iteration",
    "crop_size": "side of the training crops in pixels (a multiple of 32)",
    "device": "auto (CUDA, then MPS, then CPU), cuda, mps or cpu",
    "seed": "random seed of weights, crops and order",
    "num_workers": "data loader processes",
    "stain_jitter": "HED stain augmentation: stain amounts scaled by 2^U(-s, s) (0 = off, 1 = 0.5x..2x)",
    "scale_jitter": "zoom augmentation: crops zoomed by 2^U(-s, s) (0 = off, 1 = 0.5x..2x)",
}


# The allowed range of each tunable training number (TrainSettings checks them; the panel offers
# these under "Advanced", with the method's own, one field each, explained from USER_SETTINGS).
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "stain_jitter": (0.0, 2.0),
    "scale_jitter": (0.0, 2.0),
}


def setting_label(name: str, help: str) -> str:
    """A short label: the symbol a setting's help starts with, up to its first comma (τ, α_o,
    σ (painted), …), else its name."""
    head = help.split(",")[0]
    return head if len(head) <= 3 or not head[0].isascii() else name.replace("_", " ")


PRESETS: dict[str, TrainSettings] = {
    # The paper: SGD, momentum 0.9, weight decay 0.01, lr 0.01 at step 0 and 0.001 after, poly
    # schedule, 100 epochs, batch 12, ResNet-101. Meant for a GPU.
    "paper": TrainSettings(
        encoder="resnet101",
        decoder_channels=(256, 128, 64, 32),
        epochs=100,
        batch_size=12,
        crop_size=256,
    ),
    # A small CPU preset for laptops and tests: ResNet-18, 128-pixel crops.
    "cpu": TrainSettings(),
}


def preset(name: str, **overrides) -> TrainSettings:
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
    return base.replace(**overrides)


def parse_changes(pairs) -> dict:
    """``KEY=VALUE`` texts (a script's ``--set``) as setting changes: true/false, a number, or
    the text as it is (e.g. ``pkd_scores=sigmoid``)."""
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r}: give a setting as KEY=VALUE")
        if value.lower() in ("true", "false"):
            changes[key] = value.lower() == "true"
            continue
        for kind in (int, float):
            try:
                changes[key] = kind(value)
                break
            except ValueError:
                pass
        else:
            changes[key] = value
    return changes


def from_dict(d: dict) -> TrainSettings:
    known = {f.name for f in fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in d.items() if k in known})
