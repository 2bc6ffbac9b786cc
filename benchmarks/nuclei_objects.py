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
- each with the instances of inference/instances.py: watershed on the distance transform and
  plain connected components.

Images are segmented whole by the engine (``segment``: tiles of 512, overlap 64). Scores are
means over images (as HoVer-Net's tables), the foreground Dice also pooled over pixels.

    OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/nuclei_objects.py train --out runs/nuclei --iterations 500
    OMP_NUM_THREADS=1 nice -n 10 python3 benchmarks/nuclei_objects.py measure --out runs/nuclei \\
        --models bundled,runs/nuclei/mixed.cinuseg.pt
    python3 benchmarks/nuclei_objects.py overlay --out docs/images --models bundled,runs/nuclei/mixed.cinuseg.pt \\
        --names bundled-before,mixed

``overlay``: a picture per model of its nucleus objects on a MoNuSeg validation crop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_cinuseg import drain, load_model, train_base
from napari_cinuseg.analysis.metrics import ConfusionMatrix
from napari_cinuseg.analysis.objects import ObjectScores
from napari_cinuseg.datasets.labelled import IGNORE, data_dir, read_consep_instances, read_consep_patches, step_pairs
from napari_cinuseg.datasets.nucleus_only import mixed_class_pairs, nucleus_pairs, read_monuseg, read_nuinsseg
from napari_cinuseg.datasets.splits import split_by_source
from napari_cinuseg.inference.instances import instance_method, min_area_pixels, split_nuclei
from napari_cinuseg.inference.segmentation import segment
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


def _maps(model, image, device) -> tuple[np.ndarray, np.ndarray | None]:
    """(class map, learned distance map uint8 or None) of an image, by the engine's tiles."""
    sep = np.zeros(image.shape[:2], np.uint8) if model.network.has_separation else None
    cm = drain(
        segment(
            model,
            image,
            tile=512,
            overlap=64,
            device=device,
            min_tissue=0.0,
            image_pixel_size=model.pixel_size,
            separation_out=sep,
        )
    )
    return cm, sep


def _methods(model, marker_hs) -> list[str]:
    """The instance methods measured for ``model``: the class map's watershed and components, and
    for a model with a separation head its learned distance at each h of ``marker_hs``."""
    learned = [f"distance-h{h:g}" for h in marker_hs] if model.network.has_separation else []
    return ["watershed", "components", *learned]


def _instances(cm: np.ndarray, method: str, min_px: int, sep=None) -> np.ndarray:
    if method.startswith("distance-h"):
        h = float(method.removeprefix("distance-h"))
        return split_nuclei(cm, method="distance", min_area_px=min_px, separation=sep, marker_h=h)[0]
    return split_nuclei(cm, method=method, min_area_px=min_px, min_distance_px=6)[0]


#: How each set's images are segmented: MoNuSeg's 1000² images by the engine's tiles (what a user
#: gets), CoNSeP's 256² patches whole (``model.predict``, as ``cinuseg evaluate`` and the Dice
#: figures of docs/benchmarks.md: in a 512 tile they would sit in white padding).
INFERENCE = {"MoNuSeg": "segment, tile 512, overlap 64", "CoNSeP": "predict, whole patch"}


def measure_model(
    model, consep_val, monuseg_val, device: str = "cpu", cached: dict | None = None, marker_hs=(0.1,)
) -> dict:
    min_px, _ = min_area_pixels(3.0, 0.25)
    t0 = time.time()
    result: dict = {"model": model.id, "min_area_px": min_px, "inference": INFERENCE}
    for name, items, truth in (
        ("MoNuSeg", monuseg_val.items, lambda it: monuseg_val.instances[it.name]),
        ("CoNSeP", consep_val.items, None),
    ):
        if cached and cached.get("inference", {}).get(name) == INFERENCE[name] and name in cached:
            result[name] = cached[name]
            print(f"  {name}: cached", flush=True)
            continue
        scores = {m: ObjectScores() for m in _methods(model, marker_hs)}
        conf = ConfusionMatrix(model.num_channels)
        lut = np.full(256, IGNORE, np.uint8)
        lut[0] = 0
        for i, n in enumerate(consep_val.class_names if name == "CoNSeP" else [], start=1):
            lut[i] = model.channel_of(n) if n in model.class_names else IGNORE
        for it in items:
            cm, sep = _maps(model, it.image, device) if name == "MoNuSeg" else model.predict_maps(it.image, device)
            inst = truth(it) if truth else _consep_instances(it.name)
            for m, s in scores.items():
                s.update(inst, _instances(cm, m, min_px, sep))
            if name == "CoNSeP":
                conf.update(lut[it.labels], cm)
        result[name] = {m: s.summary() for m, s in scores.items()}
        if name == "CoNSeP":
            d = conf.dice()
            result[name]["class_dice"] = {n: float(d[model.channel_of(n)] * 100) for n in model.class_names}
        print(
            f"  {name}: "
            + json.dumps(
                {m: {k: round(v, 3) for k, v in result[name][m].items() if isinstance(v, float)} for m in scores}
            ),
            flush=True,
        )
    result["seconds"] = round(time.time() - t0, 1)
    return result


_CONSEP_ROOT: Path | None = None


def _consep_instances(stem: str) -> np.ndarray:
    from skimage import io as skio

    return skio.imread(_CONSEP_ROOT / "train" / "instances" / f"{stem}.png")


def cmd_measure(args) -> int:
    global _CONSEP_ROOT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = data_dir(args.data)
    _CONSEP_ROOT = root / "consep"
    (_, c_val), (_, m_val) = _splits(root, args.val_fraction, args.seed)
    print(
        f"validation: CoNSeP {len(c_val.items)} patches of {len(c_val.sources)} source images, "
        f"MoNuSeg {len(m_val.items)} slides",
        flush=True,
    )
    results = {}
    hs = [float(h) for h in args.marker_h.split(",")]
    for spec in args.models.split(","):
        path = BUNDLED_MODEL if spec == "bundled" else Path(spec)
        model = load_model(path)
        cache = out / f"measure-{model.id[:12]}.json"
        cached = json.loads(cache.read_text()) if cache.exists() else None
        wanted = _methods(model, hs)
        if cached and any(m not in cached.get(n, {}) for n in ("MoNuSeg", "CoNSeP") for m in wanted):
            cached = None  # measured with other instance methods: again
        if cached and cached.get("inference") == INFERENCE:
            results[spec] = cached
            print(f"{spec}: cached in {cache}")
            continue
        print(f"{spec} ({model.id[:8]}):", flush=True)
        r = measure_model(model, c_val, m_val, args.device, cached, hs)
        r.update(name=spec, file=str(path), file_mb=round(path.stat().st_size / 1e6, 1), machine=_machine())
        cache.write_text(json.dumps(r, indent=1))
        results[spec] = r
    print(table(results))
    return 0


def table(results: dict) -> str:
    rows = [
        "| model | instances | MoNuSeg Dice | F1@0.5 | AJI | PQ "
        "| CoNSeP Dice | F1@0.5 | AJI | PQ | CoNSeP class Dice Epi / Spindle |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        for m in [k for k in r["MoNuSeg"] if k != "class_dice"]:
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
