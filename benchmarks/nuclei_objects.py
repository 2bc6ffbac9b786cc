"""Nuclei as objects: does a model find every nucleus, as separate objects? (docs/benchmarks-nuclei.md)

Three parts; train and measure resume (every result is kept in ``--out`` and reused; delete it to redo):

``train``: a base model on mixed supervision (docs/method.md, "Mixed supervision"), going on from
the bundled model (``--init``; same classes Epithelial + Spindle-shaped, network and input): the
CoNSeP training split with its classes (CoNSeP's Other nuclei as nuclei of unknown class, or
background with ``--consep-other background``), plus
the MoNuSeg and NuInsSeg training splits as nucleus-only data. Validation sources (20 %, seed 0,
by slide / source image / tile) are never trained on. Saved as ``<out>/mixed.cinuseg.pt``.

``measure``: for each model, on the validation splits:

- MoNuSeg (6 held-out slides of 30, 1000² at 0.25 µm/px): foreground Dice, detection F1 at IoU
  0.5, AJI, PQ against MoNuSeg's instance maps;
- CoNSeP (5 held-out source images, 80 patches): the same against CoNSeP's instance maps, and
  class Dice (Epithelial, Spindle-shaped; the data's Other pixels ignored, as ``cinuseg evaluate``);
- each with the instances of inference/instances.py, split as ``cinuseg segment`` splits a user's
  (``nuclei_of`` at the image's pixel size): watershed on the distance transform and plain
  connected components (and a separation head's learned distance, for a model with one);
- ``--test-data DIR``: another centre's images and instance maps, one more set ``test:<folder>``
  measured as MoNuSeg is (``DIR/images/<name>.png|.tif``, ``DIR/instances/<name>.png|.tif|.npy``,
  ``--test-pixel-size``).

MoNuSeg's (and the test set's) images are segmented whole by the engine (``segment``: tiles of
512, overlap 64). Scores are means over images (as HoVer-Net's tables), the foreground Dice also
pooled over pixels.

``--magnification 20`` measures what a user with 20× images gets: the 40× images are downsampled
to 0.5 µm/px (anti-aliased; the instance and class maps by nearest pixel), segmented with that
pixel size given (the engine resamples to the model's 0.25 µm/px and back; CoNSeP's patches,
128² then, are predicted whole with the same resampling), their nuclei split with 3 µm² and
1.5 µm in 0.5 µm pixels, and scored against the downsampled maps. Each
magnification has its own cache (``measure-<id>-20x.json``; 40× keeps ``measure-<id>.json``).

    OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/nuclei_objects.py train --out runs/nuclei --iterations 500
    OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/nuclei_objects.py measure --out runs/nuclei \\
        --models bundled,runs/nuclei/mixed.cinuseg.pt
    OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/nuclei_objects.py measure --out runs/nuclei --models bundled \\
        --magnification 20
    python3 benchmarks/nuclei_objects.py overlay --out docs/images --models bundled,runs/nuclei/mixed.cinuseg.pt \\
        --names bundled-before,mixed

``overlay``: a picture per model of its nucleus objects on a MoNuSeg validation crop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cinuseg import drain, load_model, train_base
from napari_cinuseg.analysis.metrics import ConfusionMatrix
from napari_cinuseg.analysis.objects import ObjectScores
from napari_cinuseg.datasets.labelled import (
    IGNORE,
    IMAGE_SUFFIXES,
    data_dir,
    read_consep_instances,
    read_consep_patches,
    step_pairs,
)
from napari_cinuseg.datasets.nucleus_only import mixed_class_pairs, nucleus_pairs, read_monuseg, read_nuinsseg
from napari_cinuseg.datasets.splits import split_by_source
from napari_cinuseg.inference.instances import instance_method, min_area_pixels, nuclei_of, split_nuclei
from napari_cinuseg.inference.segmentation import segment
from napari_cinuseg.io.images import read_rgb
from napari_cinuseg.io.pixel_size import checked_pixel_size, resampling_factor
from napari_cinuseg.model.file import BUNDLED_MODEL
from napari_cinuseg.runtime.events import Progress
from napari_cinuseg.training.settings import TrainSettings

CLASSES = ["Epithelial", "Spindle-shaped"]
PUBLISHED = {  # HoVer-Net (Graham et al. 2019), MoNuSeg, trained on MoNuSeg's own training images, as published
    "MoNuSeg": {"dice": 0.826, "aji": 0.618, "pq": 0.597},
}


def _splits(root: Path, val_fraction: float, seed: int):
    consep = read_consep_patches(root / "consep")
    monuseg = read_monuseg(root / "monuseg")
    return split_by_source(consep, val_fraction, seed), split_by_source(monuseg, val_fraction, seed)


def cmd_train(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "mixed.cinuseg.pt"
    if target.exists():
        print(f"{target} exists: kept (delete it to train again)")
        return 0
    root = data_dir(args.data)
    (c_train, _), (m_train, _) = _splits(root, args.val_fraction, args.seed)
    nuins = read_nuinsseg(root / "nuinsseg")
    n_train, _ = split_by_source(nuins, args.val_fraction, args.seed)
    del nuins
    consep_pairs = (
        step_pairs(c_train, CLASSES) if args.consep_other == "background" else mixed_class_pairs(c_train, CLASSES)
    )
    m_pairs = nucleus_pairs(m_train)
    if args.separation == "none":  # the instances teach nothing without a separation head
        m_pairs = [p._replace(instances=None) for p in m_pairs]
    else:
        inst = read_consep_instances(root / "consep", [p.name for p in consep_pairs])
        consep_pairs = [p._replace(instances=inst[p.name]) for p in consep_pairs]
    pairs = consep_pairs * args.consep_repeat + m_pairs * args.monuseg_repeat + nucleus_pairs(n_train)
    init = load_model(args.init if args.init != "bundled" else BUNDLED_MODEL)
    s = init.steps[0].settings
    settings = TrainSettings(
        encoder=s["encoder"],
        decoder=s["decoder"],
        decoder_channels=tuple(s["decoder_channels"]),
        encoder_weights=None,
        input=s["input"],
        stain_jitter=s["stain_jitter"],
        magnification_jitter=args.magnification_jitter,
        crop_size=s["crop_size"],
        batch_size=s["batch_size"],
        iterations=args.iterations,
        lr_base=args.lr,
        seed=args.train_seed,
        device=args.device,
        log_every=25,
        separation=args.separation,
        separation_weight=args.separation_weight,
        separation_lr=args.separation_lr,
    )
    print(
        f"training on {len(pairs)} pairs (CoNSeP {len(c_train.items)} × {args.consep_repeat}, "
        f"MoNuSeg {len(m_train.items)} × {args.monuseg_repeat}, NuInsSeg {len(n_train.items)}), "
        f"{args.iterations} iterations from {init.id[:8]}",
        flush=True,
    )
    t0 = time.time()

    def show(ev):
        if isinstance(ev, Progress):
            terms = " ".join(f"{k} {v:.3f}" for k, v in ev.terms.items())
            print(f"it {ev.iteration}/{ev.total} loss {ev.loss:.3f} {terms} {ev.seconds:.0f}s", flush=True)

    model = drain(
        train_base(
            pairs,
            CLASSES,
            settings,
            colours=[c.colour for c in init.classes],
            pixel_size=0.25,
            init=init,
            out=out / "mixed-fp32.cinuseg.pt",
        ),
        show,
    )
    from napari_cinuseg import save_model

    save_model(model, target, half=True)
    (out / "train.json").write_text(
        json.dumps(
            {
                "seconds": round(time.time() - t0, 1),
                "iterations": args.iterations,
                "lr": args.lr,
                "train_seed": args.train_seed,
                "separation": args.separation,
                "separation_weight": args.separation_weight,
                "separation_lr": args.separation_lr,
                "magnification_jitter": args.magnification_jitter,
                "init": init.id,
                "pairs": {
                    "consep": len(c_train.items),
                    "consep_repeat": args.consep_repeat,
                    "consep_other": args.consep_other,
                    "monuseg": len(m_train.items),
                    "monuseg_repeat": args.monuseg_repeat,
                    "nuinsseg": len(n_train.items),
                },
                "machine": _machine(),
            },
            indent=1,
        )
    )
    print(f"saved {target} in {time.time() - t0:.0f} s")
    return 0


def _machine() -> str:
    return (
        f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}"
    )


def _class_map(model, image, device) -> np.ndarray:
    return _maps(model, image, device)[0]


def _maps(model, image, device, pixel_size: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(class map, learned distance map uint8 or None) of an image of ``pixel_size`` µm/px (default:
    the model's), by the engine's tiles: resampled to the model's pixel size and back, as ``cinuseg
    segment`` does, so both maps have the image's size."""
    sep = np.zeros(image.shape[:2], np.uint8) if model.network.has_separation else None
    cm = drain(
        segment(
            model,
            image,
            tile=512,
            overlap=64,
            device=device,
            min_tissue=0.0,
            image_pixel_size=pixel_size or model.pixel_size,
            separation_out=sep,
        )
    )
    return cm, sep


def _methods(model, marker_hs) -> list[str]:
    """The instance methods measured for ``model``: the class map's watershed and components, and
    for a model with a separation head its learned distance at each h of ``marker_hs``."""
    learned = [f"distance-h{h:g}" for h in marker_hs] if model.network.has_separation else []
    return ["watershed", "components", *learned]


def _instances(cm: np.ndarray, method: str, pixel_size: float, sep=None) -> np.ndarray:
    """The instance map of a class map of ``pixel_size`` µm/px by ``method`` (one of
    :func:`_methods`), split as ``cinuseg segment`` splits a user's (``nuclei_of``): objects under
    3 µm² dropped and the watershed's markers 1.5 µm apart, both in this pixel size's pixels."""
    if method.startswith("distance-h"):
        h = float(method.removeprefix("distance-h"))
        return nuclei_of(cm, pixel_size_um=pixel_size, method="distance", separation=sep, marker_h=h).labels
    return nuclei_of(cm, pixel_size_um=pixel_size, method=method).labels


#: How each set's images are segmented: MoNuSeg's 1000² images by the engine's tiles (what a user
#: gets), CoNSeP's 256² patches whole (``model.predict``, as ``cinuseg evaluate`` and the Dice
#: figures of docs/benchmarks.md: in a 512 tile they would sit in white padding).
INFERENCE = {"MoNuSeg": "segment, tile 512, overlap 64", "CoNSeP": "predict, whole patch"}
#: MoNuSeg's and CoNSeP's magnification and pixel size as published.
NATIVE_MAGNIFICATION = 40
NATIVE_PIXEL_SIZE = 0.25
#: How ``--test-data`` is laid out, for its errors and help.
TEST_LAYOUT = (
    "DIR/images/<name>.png or .tif (the H&E images) and DIR/instances/<name>.png, .tif or .npy "
    "(each image's instance map: one id per nucleus, 0 background, the image's height and width)"
)
INSTANCE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


def pixel_size_at(magnification: float) -> float:
    """µm per pixel at ``magnification``: 40× is 0.25 µm/px, 20× 0.5."""
    return NATIVE_PIXEL_SIZE * NATIVE_MAGNIFICATION / magnification


def downsample(image: np.ndarray, label_maps, factor: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """``image`` (H, W, 3) uint8 and its label maps ``factor`` times smaller, as an image taken at a
    lower magnification: the image resized with anti-aliasing (a Gaussian of σ = (factor - 1) / 2
    pixels before linear interpolation, so that each new pixel averages the area it covers), each
    label map (instance ids, class values) by its nearest pixel, so that its values stay the ids or
    classes they were (a nucleus narrower than about ``factor`` pixels may vanish)."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    shape = (max(1, round(h / factor)), max(1, round(w / factor)))
    small = resize(image, shape + image.shape[2:], order=1, anti_aliasing=True, preserve_range=True)
    small = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.intp), w - 1)
    return small, [np.asarray(m)[np.ix_(rows, cols)] for m in label_maps]


def _scaled(pixel_size: float, magnification: float) -> tuple[float, float]:
    """(downsampling factor, pixel size measured at) of a set of ``pixel_size`` µm/px measured at
    ``magnification``: finer sets are brought down to it, none is upsampled (a set already at or
    below it is measured as it is; within 5 %, the engine's tolerance, counts as at it)."""
    factor = pixel_size_at(magnification) / pixel_size
    return (factor, pixel_size_at(magnification)) if factor > 1.05 else (1.0, pixel_size)


@dataclass
class TestData:
    """Another centre's images and instance maps (``--test-data``): (image, instance map) paths,
    every pair read and checked once by :func:`read_test_data`, and the images' pixel size."""

    root: Path
    pairs: list[tuple[Path, Path]]
    pixel_size: float = NATIVE_PIXEL_SIZE

    @property
    def name(self) -> str:
        return f"test:{self.root.name}"


def read_test_data(folder, pixel_size: float = NATIVE_PIXEL_SIZE) -> TestData:
    """``folder`` laid out as :data:`TEST_LAYOUT`, every image with its instance map, checked (each
    pair read, of one size) before anything is measured; a clear error says what to fix."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--test-data {root}: no such folder; give a folder laid out as {TEST_LAYOUT}")
    pixel_size = checked_pixel_size(pixel_size, "--test-pixel-size", fix="give µm per pixel of the test images")
    img_dir, inst_dir = root / "images", root / "instances"
    for d in (img_dir, inst_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"--test-data {root} has no {d.name}/ folder; lay it out as {TEST_LAYOUT}")
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{img_dir} holds no image ({', '.join(IMAGE_SUFFIXES)}); lay it out as {TEST_LAYOUT}")
    found = {p: _instance_path(inst_dir, p.stem) for p in images}
    missing = [p.name for p, lp in found.items() if lp is None]
    if missing:
        more = ", …" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} of the {len(images)} images in {img_dir} have no instance map in {inst_dir} "
            f"({', '.join(missing[:5])}{more}): add <name>.png, .tif or .npy for each (one id per nucleus, "
            "0 background), or move those images out of images/"
        )
    pairs = list(found.items())
    for ip, lp in pairs:
        _read_test_pair(ip, lp)
    return TestData(root.resolve(), pairs, pixel_size)


def _instance_path(inst_dir: Path, stem: str) -> Path | None:
    return next((inst_dir / (stem + s) for s in INSTANCE_SUFFIXES if (inst_dir / (stem + s)).is_file()), None)


def _read_test_pair(image_path: Path, instances_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, integer instance map) of a test pair, or a ValueError that says what is wrong."""
    from skimage import io as skio

    image = read_rgb(image_path)
    try:
        inst = np.load(instances_path) if instances_path.suffix == ".npy" else np.asarray(skio.imread(instances_path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{instances_path} could not be read as an instance map ({exc})") from None
    if inst.ndim == 3 and inst.shape[2] == 1:
        inst = inst[..., 0]
    if inst.ndim != 2:
        raise ValueError(
            f"{instances_path} has shape {inst.shape}, not a label image: save each image's nucleus ids as one "
            "channel (an 8-, 16- or 32-bit PNG or TIFF, or .npy), 0 background"
        )
    if not np.issubdtype(inst.dtype, np.integer):
        if not (np.issubdtype(inst.dtype, np.floating) and np.all(np.mod(inst, 1) == 0)):
            raise ValueError(f"{instances_path} holds {inst.dtype} values that are not whole: nucleus ids are integers")
        inst = inst.astype(np.int64)
    if inst.min(initial=0) < 0:
        raise ValueError(f"{instances_path} holds negative values: nucleus ids are 1, 2, …, and 0 is background")
    if inst.shape != image.shape[:2]:
        raise ValueError(
            f"{instances_path} is {inst.shape[0]}×{inst.shape[1]} (rows × columns) but its image {image_path.name} "
            f"is {image.shape[0]}×{image.shape[1]}: an instance map must have its image's height and width"
        )
    return image, inst


@dataclass
class _Set:
    """One set as measured: ``images()`` yields (image, true instance map, class labels or None) at
    the set's own pixel size, downsampled by ``factor`` to ``pixel_size`` before segmentation; the
    engine's tiles segment them (else ``model.predict_maps``, whole); ``inference``: how, the key
    its cached result is reused by; ``class_names``: the classes of its labels, for class Dice."""

    name: str
    images: object
    pixel_size: float
    factor: float
    engine: bool
    inference: str
    class_names: list | None = None


def _sets(consep_val, monuseg_val, magnification: float = NATIVE_MAGNIFICATION, tests=()) -> list[_Set]:
    """The sets measured at ``magnification``: MoNuSeg's and CoNSeP's validation splits, then each
    test set. At 40× the inference keys are :data:`INFERENCE`'s, so results cached before
    magnifications were measured are reused."""
    factor, px = _scaled(NATIVE_PIXEL_SIZE, magnification)
    at = "" if factor == 1 else f"; downsampled to {px:g} µm/px ({magnification:g}×)"
    sets = [
        _Set(
            "MoNuSeg",
            lambda: ((it.image, monuseg_val.instances[it.name], None) for it in monuseg_val.items),
            px,
            factor,
            True,
            INFERENCE["MoNuSeg"] + at,
        ),
        _Set(
            "CoNSeP",
            lambda: ((it.image, _consep_instances(it.name), it.labels) for it in consep_val.items),
            px,
            factor,
            False,
            INFERENCE["CoNSeP"] + at,
            list(consep_val.class_names),
        ),
    ]
    for t in tests:
        f, p = _scaled(t.pixel_size, magnification)
        sets.append(
            _Set(
                t.name,
                lambda t=t: ((*_read_test_pair(ip, lp), None) for ip, lp in t.pairs),
                p,
                f,
                True,
                f"{INFERENCE['MoNuSeg']}; {t.root}, {len(t.pairs)} images at {t.pixel_size:g} µm/px"
                + ("" if f == 1 else f", downsampled to {p:g} µm/px"),
            )
        )
    return sets


def _reusable(cached: dict | None, st: _Set, methods) -> bool:
    """Whether ``cached`` holds ``st``'s result, measured the same way, for every method."""
    return bool(
        cached
        and cached.get("inference", {}).get(st.name) == st.inference
        and all(m in cached.get(st.name, {}) for m in methods)
    )


def measure_model(
    model,
    consep_val,
    monuseg_val,
    device: str = "cpu",
    cached: dict | None = None,
    marker_hs=(0.1,),
    magnification: float = NATIVE_MAGNIFICATION,
    tests=(),
) -> dict:
    """Object scores of ``model`` on every set of :func:`_sets` (its results in ``cached`` reused)."""
    t0 = time.time()
    sets = _sets(consep_val, monuseg_val, magnification, tests)
    methods = _methods(model, marker_hs)
    result: dict = {
        "model": model.id,
        "magnification": magnification,
        "min_area_px": min_area_pixels(3.0, sets[0].pixel_size)[0],
        "inference": {st.name: st.inference for st in sets},
        "at": {},
        "set_seconds": {},
    }
    for st in sets:
        if _reusable(cached, st, methods):
            result[st.name] = cached[st.name]
            for key in ("at", "set_seconds"):
                if st.name in cached.get(key, {}):
                    result[key][st.name] = cached[key][st.name]
            print(f"  {st.name}: cached", flush=True)
            continue
        t1 = time.time()
        scores = {m: ObjectScores() for m in methods}
        conf = ConfusionMatrix(model.num_channels)
        lut = np.full(256, IGNORE, np.uint8)
        lut[0] = 0
        for i, n in enumerate(st.class_names or [], start=1):
            lut[i] = model.channel_of(n) if n in model.class_names else IGNORE
        true_before = true_after = 0
        for image, inst, labels in st.images():
            if st.factor != 1:
                true_before += _count(inst)
                image, maps = downsample(image, [inst] + ([labels] if labels is not None else []), st.factor)
                inst, labels = maps[0], (maps[1] if labels is not None else None)
                true_after += _count(inst)
            if st.engine:
                cm, sep = _maps(model, image, device, st.pixel_size)
            else:
                cm, sep = model.predict_maps(image, device, resampling_factor(model.pixel_size, st.pixel_size))
            for m, s in scores.items():
                s.update(inst, _instances(cm, m, st.pixel_size, sep))
            if st.class_names:
                conf.update(lut[labels], cm)
        result[st.name] = {m: s.summary() for m, s in scores.items()}
        if st.class_names:
            d = conf.dice()
            result[st.name]["class_dice"] = {n: float(d[model.channel_of(n)] * 100) for n in model.class_names}
        result["at"][st.name] = {
            "pixel_size_um": st.pixel_size,
            "min_area_px": min_area_pixels(3.0, st.pixel_size)[0],
            "downsampled_by": st.factor,
        }
        if st.factor != 1:  # the true nuclei too small to keep a pixel at the lower magnification
            result["at"][st.name].update(true_nuclei=true_before, true_nuclei_lost=true_before - true_after)
        result["set_seconds"][st.name] = round(time.time() - t1, 1)
        print(
            f"  {st.name}: "
            + json.dumps(
                {m: {k: round(v, 3) for k, v in result[st.name][m].items() if isinstance(v, float)} for m in scores}
            ),
            flush=True,
        )
    result["seconds"] = round(time.time() - t0, 1)
    return result


def _count(instances: np.ndarray) -> int:
    """The number of objects (distinct non-zero ids) of an instance map."""
    return int(np.count_nonzero(np.bincount(np.asarray(instances).ravel().astype(np.int64))[1:]))


_CONSEP_ROOT: Path | None = None


def _consep_instances(stem: str) -> np.ndarray:
    from skimage import io as skio

    return skio.imread(_CONSEP_ROOT / "train" / "instances" / f"{stem}.png")


def cache_name(model_id: str, magnification: float = NATIVE_MAGNIFICATION, weights: str = "") -> str:
    """A model file's cache in ``--out``: ``measure-<id>-<weights>.json`` at 40×, another per
    magnification (``measure-<id>-<weights>-20x.json``), so that the two never mix. ``weights``
    (:func:`weights_key`) tells apart files of one model id whose weights differ (fp32, fp16,
    8-bit kernels)."""
    tail = "" if magnification == NATIVE_MAGNIFICATION else f"-{magnification:g}x"
    return f"measure-{model_id[:12]}{'-' + weights if weights else ''}{tail}.json"


def weights_key(path: Path) -> str:
    """The first 8 hex digits of the file's SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


def cmd_measure(args) -> int:
    global _CONSEP_ROOT
    try:  # the test data are checked before anything is measured
        tests = [read_test_data(args.test_data, args.test_pixel_size)] if args.test_data else []
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = data_dir(args.data)
    _CONSEP_ROOT = root / "consep"
    (_, c_val), (_, m_val) = _splits(root, args.val_fraction, args.seed)
    mag = args.magnification
    print(
        f"validation: CoNSeP {len(c_val.items)} patches of {len(c_val.sources)} source images, "
        f"MoNuSeg {len(m_val.items)} slides, at {mag:g}× ({pixel_size_at(mag):g} µm/px)"
        + "".join(f"; {t.name}: {len(t.pairs)} images at {t.pixel_size:g} µm/px" for t in tests),
        flush=True,
    )
    results = {}
    hs = [float(h) for h in args.marker_h.split(",")]
    sets = _sets(c_val, m_val, mag, tests)
    for spec in args.models.split(","):
        path = BUNDLED_MODEL if spec == "bundled" else Path(spec)
        model = load_model(path)
        cache = out / cache_name(model.id, mag, weights_key(path))
        cached = json.loads(cache.read_text()) if cache.exists() else None
        wanted = _methods(model, hs)
        if all(_reusable(cached, st, wanted) for st in sets):
            names = {st.name for st in sets}  # another folder's test set stays in the cache, not in the table
            results[spec] = {k: v for k, v in cached.items() if not k.startswith("test:") or k in names}
            print(f"{spec}: cached in {cache}")
            continue
        print(f"{spec} ({model.id[:8]}):", flush=True)
        r = measure_model(model, c_val, m_val, args.device, cached, hs, mag, tests)
        r.update(name=spec, file=str(path), file_mb=round(path.stat().st_size / 1e6, 1), machine=_machine())
        cache.write_text(json.dumps(_kept(cached, r), indent=1))
        results[spec] = r
    print(table(results))
    return 0


def _kept(cached: dict | None, result: dict) -> dict:
    """``result`` and the test sets of ``cached`` it did not measure (another folder's), for the cache."""
    merged = dict(result)
    for name, value in (cached or {}).items():
        if name.startswith("test:") and name not in result:
            merged[name] = value
            for key in ("inference", "at", "set_seconds"):
                if name in cached.get(key, {}):
                    merged[key] = {**merged.get(key, {}), name: cached[key][name]}
    return merged


def _scored(s: dict) -> list[str]:
    """The instance methods of a set's result (not its class Dice)."""
    return [k for k, v in s.items() if isinstance(v, dict) and "dice" in v]


def table(results: dict) -> str:
    rows = []
    mags = {r.get("magnification", NATIVE_MAGNIFICATION) for r in results.values()}
    if mags != {NATIVE_MAGNIFICATION}:
        rows += [
            f"At {', '.join(f'{m:g}×' for m in sorted(mags))}: MoNuSeg and CoNSeP downsampled from 40×, "
            "segmented at that pixel size and scored against their downsampled instance maps.",
            "",
        ]
    rows += [
        "| model | instances | MoNuSeg Dice | F1@0.5 | AJI | PQ "
        "| CoNSeP Dice | F1@0.5 | AJI | PQ | CoNSeP class Dice Epi / Spindle |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        for m in _scored(r["MoNuSeg"]):
            mo, co = r["MoNuSeg"][m], r["CoNSeP"][m]
            cd = r["CoNSeP"]["class_dice"]
            rows.append(
                f"| {name} | {m} | {100 * mo['dice']:.1f} | {100 * mo['f1']:.1f} | {100 * mo['aji']:.1f} "
                f"| {100 * mo['pq']:.1f} | "
                f"{100 * co['dice']:.1f} | {100 * co['f1']:.1f} | {100 * co['aji']:.1f} | {100 * co['pq']:.1f} | "
                f"{cd['Epithelial']:.1f} / {cd['Spindle-shaped']:.1f} |"
            )
    p = PUBLISHED["MoNuSeg"]
    rows.append(
        f"| HoVer-Net, published (trained on MoNuSeg) | its own | {100 * p['dice']:.1f} | – | {100 * p['aji']:.1f} "
        f"| {100 * p['pq']:.1f} | – | – | – | – | – |"
    )
    tests = [(name, k, r) for name, r in results.items() for k in r if k.startswith("test:")]
    if tests:
        rows += [
            "",
            "| model | instances | test set | images | µm/px | Dice | F1@0.5 | AJI | PQ |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, k, r in tests:
            px = r.get("at", {}).get(k, {}).get("pixel_size_um")
            for m in _scored(r[k]):
                s = r[k][m]
                rows.append(
                    f"| {name} | {m} | {k.removeprefix('test:')} | {s['images']} | "
                    f"{'?' if px is None else f'{px:g}'} | {100 * s['dice']:.1f} | {100 * s['f1']:.1f} | "
                    f"{100 * s['aji']:.1f} | {100 * s['pq']:.1f} |"
                )
    return "\n".join(rows)


def cmd_overlay(args) -> int:
    """One picture per model: a 400² crop of the first MoNuSeg validation slide, each nucleus object
    outlined in its class colour (left) beside MoNuSeg's own nuclei (right, white)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    root = data_dir(args.data)
    (_, _), (_, m_val) = _splits(root, args.val_fraction, args.seed)
    it = m_val.items[0]
    y, x, n = 300, 300, 400
    min_px, _ = min_area_pixels(3.0, 0.25)
    for spec, name in zip(args.models.split(","), args.names.split(",")):
        model = load_model(BUNDLED_MODEL if spec == "bundled" else spec)
        cm, sep = _maps(model, it.image, args.device)
        inst, cls = split_nuclei(
            cm, method=instance_method(model.network.has_separation), min_area_px=min_px, separation=sep
        )
        crop = it.image[y : y + n, x : x + n].copy()
        truth = crop.copy()
        lab = inst[y : y + n, x : x + n]
        edge = find_boundaries(lab, mode="inner")
        colours = np.array(
            [[0, 0, 0]] + [[int(c.colour[i : i + 2], 16) for i in (1, 3, 5)] for c in model.classes], np.uint8
        )
        crop[edge] = colours[cls[lab[edge]]]
        truth[find_boundaries(m_val.instances[it.name][y : y + n, x : x + n], mode="inner")] = 255
        fig, ax = plt.subplots(1, 2, figsize=(8, 4.2), dpi=100)
        for a, im, t in zip(ax, (crop, truth), (f"{name}: {len(np.unique(lab)) - 1} objects", "MoNuSeg's nuclei")):
            a.imshow(im)
            a.set_title(t, fontsize=9)
            a.axis("off")
        fig.tight_layout()
        path = Path(args.out) / f"nuclei-{name}.jpg"
        fig.savefig(path, pil_kwargs={"quality": 85})
        plt.close(fig)
        print(f"wrote {path} ({it.name}, rows {y}..{y + n}, columns {x}..{x + n})")
    return 0


def _magnification(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a magnification; give e.g. 20 or 40") from None
    if not 0 < value <= NATIVE_MAGNIFICATION:
        raise argparse.ArgumentTypeError(
            f"{text}: the data are at 40× and are only ever downsampled; give a magnification above 0 and at most 40"
        )
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "measure", "overlay"):
        q = sub.add_parser(name)
        q.add_argument("--out", required=True)
        q.add_argument("--data", default=None, help="the shared data folder (default $CINUSEG_DATA)")
        q.add_argument("--val-fraction", type=float, default=0.2)
        q.add_argument("--seed", type=int, default=0, help="seed of the validation split by source")
        q.add_argument("--device", default="cpu")
    t = sub.choices["train"]
    t.add_argument("--iterations", type=int, default=500)
    t.add_argument(
        "--train-seed", type=int, default=0, help="seed of the weights' training (crops, order), not of the split"
    )
    t.add_argument("--lr", type=float, default=0.005)
    t.add_argument("--init", default="bundled", help="the base model to go on from (default: the bundled one)")
    t.add_argument(
        "--consep-repeat",
        type=int,
        default=2,
        help="CoNSeP pairs repeated, so that class pixels stay a good share of the crops",
    )
    t.add_argument("--monuseg-repeat", type=int, default=4)
    t.add_argument(
        "--consep-other",
        choices=("nucleus", "background"),
        default="nucleus",
        help="CoNSeP's Other nuclei: nuclei of unknown class, or background (as the bundled model learnt them)",
    )
    t.add_argument(
        "--separation",
        choices=("none", "distance"),
        default="none",
        help="a separation head to learn beside the classes, on CoNSeP's and MoNuSeg's instances",
    )
    t.add_argument("--separation-weight", type=float, default=1.0, help="the separation loss's weight")
    t.add_argument("--separation-lr", type=float, default=10.0, help="the separation head's learning rate, × --lr")
    t.add_argument(
        "--magnification-jitter",
        type=float,
        default=0.0,
        help="share of crops seen as a 20× scan (shrunk by 1-2× and enlarged back), for 20× slides",
    )
    sub.choices["measure"].add_argument("--models", default="bundled", help="comma-separated model files, or 'bundled'")
    sub.choices["measure"].add_argument(
        "--magnification",
        type=_magnification,
        default=NATIVE_MAGNIFICATION,
        help="measure at this magnification (default 40): MoNuSeg's and CoNSeP's 40× images (0.25 µm/px) "
        "downsampled to it (20: 0.5 µm/px; anti-aliased, their instance maps by nearest pixel), segmented "
        "and split as a user's image of that pixel size, scored against the downsampled instance maps; "
        "cached apart from 40×",
    )
    sub.choices["measure"].add_argument(
        "--test-data",
        metavar="DIR",
        default=None,
        help=f"another centre's images, measured as one more set 'test:<folder name>': {TEST_LAYOUT}",
    )
    sub.choices["measure"].add_argument(
        "--test-pixel-size",
        type=float,
        default=NATIVE_PIXEL_SIZE,
        help="µm per pixel of --test-data's images (default 0.25, 40×); the engine resamples them to the model's",
    )
    sub.choices["measure"].add_argument(
        "--marker-h",
        default="0.1",
        help="comma-separated h of the learned distance's markers (instances of a model with a separation head)",
    )
    sub.choices["overlay"].add_argument("--models", default="bundled", help="comma-separated model files, or 'bundled'")
    sub.choices["overlay"].add_argument("--names", default="bundled", help="a name per model, for the pictures' files")
    args = p.parse_args(argv)
    return {"train": cmd_train, "measure": cmd_measure, "overlay": cmd_overlay}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
