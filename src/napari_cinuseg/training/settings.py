"""Training settings: every hyper-parameter of the paper as a named setting, and the presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from ..runtime import setting as declared
from ..runtime.names import DECODERS, ENCODERS, INPUTS, SEPARATIONS
from ..runtime.setting import CLI, setting


@dataclass
class TrainSettings:
    """Every training setting of a step. Those declared with :func:`setting` are checked against
    their declaration, and the command line's options (and some of the panel's fields) are made
    from them; :data:`PRESETS` holds the paper's values and a CPU preset."""

    # network (used when a base model is made; an incremental step keeps its prior's network)
    encoder: str = setting("resnet18", "encoder network of a base model", choices=ENCODERS, offered=())
    decoder: str = setting("unet", "decoder network of a base model", choices=DECODERS, offered=())
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    encoder_weights: str | None = None  # a local torchvision ResNet state dict; never downloaded
    # the RGB image, or its hematoxylin optical density only
    input: str = setting("rgb", "what a base model sees", choices=INPUTS, offered=())
    # what a base model learns beside the class scores to split touching nuclei (network.py)
    separation: str = setting("none", "nucleus separation learned by a base model", choices=SEPARATIONS, offered=())
    # the separation's weight in the loss: its regression on images with instances (base step),
    # its distillation from the prior (incremental steps; 0 = the step does not keep it)
    separation_weight: float = setting(
        1.0, "weight of the nucleus separation's loss (regression, or distillation in a step)", 0.0, 100.0, offered=()
    )
    # a base step's separation head learns at this multiple of lr_base: it starts from nothing
    # (often on a trained network, whose rate is low), as a step's new classifier rows do
    separation_lr: float = setting(
        10.0, "the separation head's learning rate in a base step, × lr_base", 1e-6, 1000.0, offered=()
    )

    # optimisation (SGD with momentum, poly schedule)
    lr_base: float = setting(0.01, "learning rate of step 0", 0.0, 10.0, offered=())
    lr_step: float = setting(0.001, "learning rate of incremental steps", 0.0, 10.0, offered=())
    momentum: float = setting(0.9, "SGD momentum", 0.0, 1.0, offered=())
    weight_decay: float = setting(0.01, "SGD weight decay", 0.0, 1.0, offered=(CLI,))
    poly_power: float = setting(0.9, "power of the poly learning-rate schedule", 0.0, 10.0, offered=())
    epochs: int = setting(25, "training epochs (one random crop per image each)", 1, offered=(CLI,))
    iterations: int | None = setting(None, "total iterations (overrides --epochs)", 1, offered=(CLI,))
    # With few, large images (MoNuSAC) an epoch of one crop per image is a handful of
    # iterations: a step trains at least this many (unless ``iterations`` is set).
    min_iterations: int = setting(400, "the fewest iterations of a step without --iterations", 0, offered=())
    batch_size: int = setting(8, "crops per iteration", 1, offered=(CLI,))
    crop_size: int = setting(
        128, "side of the training crops in pixels (a multiple of 32)", 32, 4096, multiple=32, offered=(CLI,)
    )
    freeze_bn: bool = True  # incremental steps keep the prior's BatchNorm statistics
    # Every method alike: the gradient's global L2 norm is clipped to this before each SGD step
    # (0 = off), the new classes' classifier rows on their own (loop.clip_gradient), and an
    # iteration whose loss or gradient is not finite does not step at all; a step stops with an
    # error after more than ``max_skipped`` such iterations.
    grad_clip: float = setting(1.0, "the gradient's global L2 norm is clipped to this (0 = off)", 0.0, offered=(CLI,))
    # Incremental steps: the new classes' classifier rows learn at this multiple of lr_step (they
    # start from zero weights and must learn in a few hundred iterations; the rest of the
    # network only has to stay where the prior left it), and this share of the crops is placed
    # on a painted pixel of a new class (crops.CropDataset).
    new_class_lr: float = setting(10.0, "the new classifier rows' learning rate, × lr_step", 1e-6, offered=())
    painted_crops: float = setting(0.5, "share of the crops placed on a painted new-class pixel", 0.0, 1.0, offered=())
    max_skipped: int = setting(10, "iterations with a non-finite loss skipped before a step fails", 0, offered=())
    # augmentation beyond flips and rotations (augment.py); 0 = off, as in the paper's protocol
    stain_jitter: float = setting(
        0.0, "HED stain augmentation: stain amounts scaled by 2^U(-s, s) (0 = off, 1 = 0.5x..2x)", 0.0, 2.0
    )
    scale_jitter: float = setting(
        0.0, "zoom augmentation: crops zoomed by 2^U(-s, s) (0 = off, 1 = 0.5x..2x)", 0.0, 2.0
    )
    magnification_jitter: float = setting(
        0.0, "share of crops seen as a 20x scan: shrunk by 1-2x and enlarged back (0 = off)", 0.0, 1.0
    )

    # The user's changes to the step method's own settings (fields of its dataclass, e.g.
    # CiNuSeg's τ: methods.method_settings), handed to methods.get_method by the step.
    method_settings: dict = field(default_factory=dict)

    # running
    seed: int = setting(0, "random seed of weights, crops and order", offered=(CLI,))
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cuda, mps or cpu", offered=(CLI,))
    amp: bool = True  # mixed precision on CUDA only
    num_workers: int = setting(0, "data loader processes", 0, 64, offered=(CLI,))
    log_every: int = setting(1, "iterations between two progress events", 1, offered=())

    def architecture(self, num_classes: int = 1):
        from ..model.network import Architecture  # noqa: PLC0415 - reading settings needs no PyTorch

        return Architecture(self.encoder, self.decoder, self.decoder_channels, num_classes, self.separation)

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
            from ..methods import all_method_settings  # noqa: PLC0415 - reading settings needs no PyTorch

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
        self.method_settings = dict(self.method_settings)
        declared.check(self)


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
