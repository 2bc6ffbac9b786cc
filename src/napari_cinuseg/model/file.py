"""The model file: weights plus a readable JSON record, saved atomically, loaded without unpickling code.

Layout (a ``torch.save`` zip): ``{"format": FORMAT, "format_version": 1, 2 or 3, "record": <JSON
text>, "state_dict": {name: tensor}}``. Loading uses ``torch.load(weights_only=True)``, which refuses any
pickled Python object; every failure becomes a :class:`ModelFileError` that says what to do.

Weights are stored as trained (fp32), as fp16 (``half``), or with the convolutions' kernels in 8
bits (``int8``, format version 2, for shipping): each output channel's kernel is rounded to
integers in [-127, 127] times one fp32 scale, kept beside it as ``<name>.int8_scale``; everything
else is fp16. All are loaded back as fp32.

A network with a nucleus separation head (``architecture.separation``, network.py) is written as
format version 3: a reader of versions 1 and 2 would build the network without the head and
refuse its weights as damaged; version 3 tells it to upgrade instead. Files of versions 1 and 2
have no head, and segment their nuclei with the class map's watershed (inference/instances.py).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import torch

from ..io.atomic import atomic_path, describe_write_failure
from ..io.pixel_size import checked_pixel_size
from .network import Architecture, NucleiSegNet
from .segmenter import CiNuSegModel

FORMAT = "napari-cinuseg-model"
# 2: convolution kernels may be stored in 8 bits (save_model(int8=True)); 3: the network may have
# a nucleus separation head
FORMAT_VERSION = 3
INT8_SCALE = ".int8_scale"
# kernels smaller than this stay fp16: the stem's and 1x1 classifier's few weights save nothing
INT8_MIN_ELEMENTS = 4096
SUFFIX = ".cinuseg.pt"
# The base model shipped with the package (see docs/usage.md for the command that made it).
BUNDLED_MODEL = Path(__file__).parents[1] / "resources" / "base-consep.cinuseg.pt"


class ModelFileError(ValueError):
    """A model file that cannot be read or written; the message says what to do."""


def save_model(
    model: CiNuSegModel,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    half: bool = False,
    int8: bool = False,
) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then rename).

    Never replaces the file of a model this one was trained from (its prior), even with
    ``overwrite``; without ``overwrite`` an existing file is never replaced. ``half`` stores
    floating-point weights as fp16 (for shipping); ``int8`` stores convolution kernels in 8 bits
    per output channel and the rest as fp16 (a file half the size again; see the module's
    docstring). Either is loaded back as fp32.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give a file name such as {path / ('model' + SUFFIX)}")
    if not path.parent.exists():
        raise ModelFileError(f"the folder {path.parent} does not exist; create it or choose another place")
    if path.exists():
        prior_id = _peek_id(path)
        if prior_id is not None and prior_id in model.lineage:
            raise ModelFileError(
                f"{path} holds a model this one was trained from; it is never overwritten. "
                "Save the new model under another name."
            )
        if not overwrite:
            raise ModelFileError(f"{path} exists; choose another name (model files are never overwritten)")

    state = {}
    for k, v in model.network.state_dict().items():
        v = v.detach().cpu()
        if int8 and v.is_floating_point() and v.dim() == 4 and v.numel() >= INT8_MIN_ELEMENTS:
            state[k], state[k + INT8_SCALE] = _quantized(v)
            continue
        if (half or int8) and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    payload = {
        "format": FORMAT,
        "format_version": _format_version(model, int8),
        "record": json.dumps(model.record(), indent=1, sort_keys=True),
        "state_dict": state,
    }
    try:
        with atomic_path(path, replace=overwrite) as tmp:
            torch.save(payload, tmp)
    except FileExistsError:
        raise ModelFileError(
            f"{path} was written by another run while this model was being saved; it is kept as it is. "
            "Save this model under another name"
        ) from None
    except (OSError, RuntimeError) as exc:
        raise ModelFileError(f"{path} could not be written: {describe_write_failure(exc, path)}") from None
    return path


def _format_version(model: CiNuSegModel, int8: bool) -> int:
    """The oldest format whose readers can read this file: 3 with a separation head, 2 with 8-bit
    kernels, else 1."""
    if model.network.has_separation:
        return 3
    return 2 if int8 else 1


def _not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a PyTorch file, from its first bytes; None if it may be one. Every
    napari-cinuseg model is a zip (``torch.save``'s format since PyTorch 1.6)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "it is empty (0 bytes); copy it again"
    if head.startswith(b"PK\x03\x04"):
        return None
    if not head.strip(b"\x00"):
        return "it holds only zero bytes (a file never written, or a sparse or damaged copy); copy it again"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return (
            "it is an old-style PyTorch/pickle file, not the zip file napari-cinuseg writes; "
            "pickles are never loaded (they could run code)"
        )
    image = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"II*\x00": "a TIFF image",
        b"MM\x00*": "a TIFF image",
    }
    for magic, what in image.items():
        if head.startswith(magic):
            return f"it is {what}, renamed"
    try:
        if b"\x00" in head:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "a NUL byte is no text")
        head.decode("utf-8")
        return "it is a text file, renamed"
    except UnicodeDecodeError:
        return "its contents are no PyTorch file (another format, or damaged)"


def _read_payload(path: Path) -> dict:
    if not path.exists():
        raise ModelFileError(f"no model file at {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file")
    if not stat.S_ISREG(path.stat().st_mode):  # a named pipe would block the reader, a device never ends
        raise ModelFileError(
            f"{path} is not a regular file (a named pipe, a device or a socket); choose a model file (*.cinuseg.pt)"
        )
    reason = _not_a_torch_file(path)
    if reason is not None:
        raise ModelFileError(
            f"{path} is not a usable napari-cinuseg model file: {reason}. "
            "Choose a file saved by napari-cinuseg (*.cinuseg.pt)."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes advice
        text = str(exc)
        if (
            "Weights only load failed" in text
            or "Unsupported global" in text
            or "UnpicklingError" in type(exc).__name__
        ):
            reason = "it contains pickled Python objects, which are never loaded (they could run code)"
        elif "zip archive" in text or "central directory" in text or "PytorchStreamReader" in text:
            reason = "it is not a complete PyTorch file (truncated, or another format)"
        else:
            reason = f"it could not be read ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"
        raise ModelFileError(
            f"{path} is not a usable napari-cinuseg model file: {reason}. "
            "Choose a file saved by napari-cinuseg (*.cinuseg.pt)."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is a PyTorch file but not a napari-cinuseg model (no '{FORMAT}' header); "
            "choose a file saved by napari-cinuseg (*.cinuseg.pt)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(
            f"{path} states file format {version!r}, which napari-cinuseg never writes (it writes the numbers "
            f"1..{FORMAT_VERSION}); the file was edited or damaged, use the file as napari-cinuseg saved it"
        )
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer napari-cinuseg (file format {version}); upgrade the plugin"
        )
    return payload


def _quantized(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel (out, in, h, w) as int8 values and one fp32 scale per output channel."""
    w = weight.float()
    scale = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127
    values = torch.round(w / scale[:, None, None, None]).clamp(-127, 127).to(torch.int8)
    return values.contiguous(), scale.contiguous()


def _dequantized(path: Path, state: dict) -> dict:
    """``state`` with every int8 kernel and its scale made one fp32 tensor again."""
    out = {k: v for k, v in state.items() if not k.endswith(INT8_SCALE)}
    for key, scale in state.items():
        if not key.endswith(INT8_SCALE):
            continue
        name = key[: -len(INT8_SCALE)]
        values = out.get(name)
        if values is None or values.dtype != torch.int8 or values.dim() != 4 or scale.shape != values.shape[:1]:
            raise ModelFileError(f"{path}'s 8-bit weights {name} do not match their scale; the file is damaged")
        out[name] = values.float() * scale.float()[:, None, None, None]
    stray = [k for k, v in out.items() if v.dtype == torch.int8]
    if stray:
        raise ModelFileError(f"{path} holds 8-bit weights without their scale ({stray[0]}); the file is damaged")
    return out


def _peek_id(path: Path) -> str | None:
    try:
        return json.loads(_read_payload(path)["record"]).get("id")
    except (ModelFileError, KeyError, TypeError, ValueError):
        return None


def read_record(path: str | os.PathLike) -> dict:
    """The readable record of a model file, without building the network."""
    path = Path(path)
    payload = _read_payload(path)
    try:
        record = json.loads(payload["record"])
        record["classes"], record["architecture"]  # noqa: B018 - required keys
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} has a damaged record ({exc}); the file cannot be used") from None
    return record


def _check_record(path: Path, record: dict, net: NucleiSegNet) -> None:
    """Refuse a record that would segment wrongly without a word: class names that do not match
    the network's outputs or name one class twice, an input normalisation that divides by zero,
    is not finite or has not one value per colour channel, a pixel size that is not plausible
    (io.pixel_size)."""
    classes = record["classes"]
    if not isinstance(classes, list):
        raise ModelFileError(f"{path} has a damaged record (its classes are not a list); the file cannot be used")
    names = [str(c.get("name", "")).strip().lower() if isinstance(c, dict) else "" for c in classes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelFileError(
            f"{path}'s record names class {twice[0]!r} more than once, so its masks and table would merge "
            "different classes; the record was edited or damaged, use the file as napari-cinuseg saved it"
        )
    if net.num_classes != len(classes) + 1:
        raise ModelFileError(
            f"{path}'s record names {len(classes)} class(es), but its network segments "
            f"{net.num_classes - 1} (plus background); the record was edited or damaged, "
            "use the file as napari-cinuseg saved it"
        )
    if record.get("pixel_size_um") is not None:  # every tile is resampled by it: inf or 1000 µm is no scale
        try:
            checked_pixel_size(
                record["pixel_size_um"],
                f"{path}: its record's pixel_size_um",
                fix="the record was edited or damaged, use the file as napari-cinuseg saved it",
            )
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
    norm = record.get("normalization") or {}
    for key in ("mean", "std"):
        values = norm.get(key)
        if values is None:
            continue
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ModelFileError(
                f"{path}: normalization {key} {values!r} is not a list of numbers; the record is damaged"
            ) from None
        if len(values) != 3:
            raise ModelFileError(
                f"{path}: normalization {key} {values} has {len(values)} value(s), but one per colour channel (3) "
                "is needed; the record was edited or damaged, use the file as napari-cinuseg saved it"
            )
        bad = [v for v in values if not math.isfinite(v) or (key == "std" and v <= 0)]
        if bad:
            need = "positive and finite" if key == "std" else "finite"
            raise ModelFileError(
                f"{path}: normalization {key} {values} must be {need} (a std of 0 makes every pixel infinite, "
                "and the model finds no nuclei); the record was edited or damaged, use the file as saved"
            )


def _check_weights(path: Path, state: dict) -> None:
    """Refuse weights that are NaN or infinite: such a network segments every pixel as background."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(
                f"{path} holds NaN or infinite weights ({name}), with which it finds no nuclei; the training "
                "diverged or the file is damaged: choose another model file, or train again with a lower learning rate"
            )


def load_model(path: str | os.PathLike, *, expect_encoder: str | None = None) -> CiNuSegModel:
    """Read a model file. ``expect_encoder`` refuses a model of another encoder with a clear message."""
    path = Path(path)
    payload = _read_payload(path)
    record = read_record(path)
    try:
        arch = Architecture.from_dict(record["architecture"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} describes a network this version cannot build: {exc}") from None
    if expect_encoder and arch.encoder != expect_encoder:
        raise ModelFileError(
            f"{path} is a {arch.encoder} model but {expect_encoder} was asked for; "
            f"choose encoder {arch.encoder} or another model file"
        )
    net = NucleiSegNet(arch)
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} holds no weights")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path} holds weights that are not tensors; the file is damaged")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in _dequantized(path, state).items()}
    _check_weights(path, state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path}'s weights do not match its own description ({str(exc).splitlines()[0]}); the file is damaged"
        ) from None
    _check_record(path, record, net)
    try:
        model = CiNuSegModel.from_record(record, net)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path} has a damaged record ({exc}); the file cannot be used") from None
    model.source_path = str(path)
    return model


def check_new_model_path(out: str | os.PathLike | None, prior=None) -> None:
    """Refuse, before a step trains rather than after, a place its model could not be saved:
    the ``prior``'s own file, a missing folder, or an existing file (never overwritten)."""
    if out is None:
        return
    out = os.fspath(out)
    if prior is not None and prior.source_path and os.path.abspath(out) == os.path.abspath(prior.source_path):
        raise ModelFileError(f"{out} is the prior model's file; save the new model under another name")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ModelFileError(f"the folder {parent} does not exist; create it or choose another place")
    if os.path.exists(out):
        raise ModelFileError(f"{out} exists; choose another name (model files are never overwritten)")
