#!/usr/bin/env python
"""Performance of napari-cinuseg on this machine: five measurements, one run, side by side.

1. training   time per iteration of a CiNuSeg step ÷ that of plain fine-tuning (target ≤ 1.5)
2. tiling     whole-slide ``segment`` throughput ÷ bare model forward on the same tiles (≥ 0.85)
3. memory     peak RSS segmenting synthetic pyramidal JPEG TIFFs of growing size (flat, < 2 GB)
4. gui        worst Qt event-loop delay while the napari panel trains (< 100 ms)
5. encoders   training crops/s and inference megapixels/s per ResNet encoder

Every figure is measured when the script runs; nothing is hard-coded. Each part is isolated: one
that fails records its error and the others still run. The headless parts never import Qt; the
memory part runs each slide size in a fresh subprocess, and the GUI part runs in its own
subprocess (under ``xvfb-run -a`` when there is no display).

    python benchmarks/performance.py --out runs/perf            # everything, full size
    python benchmarks/performance.py --quick --no-gui --out /tmp/perf   # a smoke run

See docs/performance-howto.md for what each number means and how it is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from napari_cinuseg.io.atomic import atomic_json

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
PARTS = ("training", "tiling", "memory", "gui", "encoders")
ENCODERS = ("resnet18", "resnet50", "resnet101")

# The targets of the issue. "flat" is this script's reading: the largest slide's peak is at
# most FLAT_FACTOR times the smallest's (the area grows 64x from 4k² to 32k²).
TARGET_TRAIN_RATIO = 1.5  # CiNuSeg s/it ÷ fine-tuning s/it, at most
TRAIN_RATIO_FLOOR = 1.35  # the frozen prior's forward alone costs about this much
TARGET_TILING_RATIO = 0.85  # segment MP/s ÷ bare forward MP/s, at least
TARGET_PEAK_MB = 2048.0  # peak RSS on the CPU, below
FLAT_FACTOR = 1.5
TARGET_LATENESS_MS = 100.0  # worst event-loop delay while training, below


# --------------------------------------------------------------------------------------------
# small helpers


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _vm_kb(field: str) -> float | None:
    """A field of /proc/self/status in kB (Linux), e.g. VmHWM: this process's peak RSS."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    VmHWM (Linux) is the high-water mark of this process's own address space. ru_maxrss is the
    fallback only: on Linux it survives exec, so a subprocess started from a big parent would
    report the parent's peak as its own."""
    hwm = _vm_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def rss_mb() -> float | None:
    kb = _vm_kb("VmRSS")
    return None if kb is None else kb / 1024


def _default_data() -> Path:
    env = os.environ.get("CINUSEG_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        kb = None
        try:
            with open("/proc/meminfo") as f:
                kb = float(f.readline().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return round(kb / 2**20, 1)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(dev) -> dict:
    import torch

    from napari_cinuseg import devices

    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": devices.describe(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": {
            d: _version(d)
            for d in ("napari-cinuseg", "torch", "torchvision", "numpy", "tifffile", "zarr", "imagecodecs", "napari", "PyQt6")
        },
    }
    return info


def busy_warning(m: dict) -> str | None:
    """Other work on the machine skews every figure (and oversubscribed torch threads can run
    many times slower): said when the load average was above half the usable cores."""
    cores = m.get("cpu_cores_usable") or m.get("cpu_cores") or 1
    loads = [x for k in ("load_average_at_start", "load_average_at_end") for x in (m.get(k) or [])[:1]]
    if loads and max(loads) > 0.5 * cores:
        return (f"WARNING: the machine was busy (1-minute load average {max(loads):.1f} on {cores} cores); "
                "run again when it is idle before quoting these figures")
    return None


def machine_line(m: dict) -> str:
    gpu = m.get("gpu") or "no GPU"
    v = m["versions"]
    return (
        f"{m['cpu']}, {m['cpu_cores']} cores ({m['cpu_cores_usable']} usable), {m.get('memory_gb')} GiB, "
        f"torch {m['torch_threads']} threads, {gpu}; device {m['device']}; torch {v.get('torch')}, "
        f"napari-cinuseg {v.get('napari-cinuseg')}, Python {m['python']}; "
        f"load average at start {m.get('load_average_at_start')}"
    )


class GpuUtilisation:
    """Samples ``torch.cuda.utilization()`` (NVML) in a thread while a block runs; on the CPU it
    does nothing. ``result()`` gives mean/max %, or why it could not be read."""

    def __init__(self, dev, every: float = 0.1):
        self.on = dev.type == "cuda"
        self.dev, self.every = dev, every
        self.samples: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = None

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append(float(torch.cuda.utilization(self.dev)))
            except Exception as exc:  # noqa: BLE001 - pynvml missing, no permission...
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.every)

    def __enter__(self):
        if self.on:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def result(self) -> dict | None:
        if not self.on:
            return None
        if self.error is not None and not self.samples:
            return {"error": self.error}
        if not self.samples:
            return {"error": "no sample taken (the block was shorter than one sampling interval)"}
        return {"mean_percent": round(statistics.fmean(self.samples), 1), "max_percent": max(self.samples), "samples": len(self.samples)}


def _sync(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------------------------
# a region of a slide, behind the interface ``segment`` accepts


def _band_class():
    """Defined lazily so that importing this script stays light (no torch import)."""
    from napari_cinuseg.inference.segmentation import ArraySlide

    class Band(ArraySlide):
        """The first ``rows`` pixel rows (and ``cols`` columns) of a :class:`Slide`, full width
        unless ``cols`` is given; only the regions asked for are read. ``segment`` accepts it
        because it is an :class:`ArraySlide` (the same ``shape`` / ``read`` / ``close``)."""

        def __init__(self, slide, rows: int | None = None, cols: int | None = None):
            self.slide = slide
            h, w = slide.shape
            self._shape = (min(rows or h, h), min(cols or w, w))

        @property
        def shape(self) -> tuple[int, int]:
            return self._shape

        def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
            h, w = self._shape
            out = self.slide.read(y0, x0, y1, x1)  # white past the slide's own edge
            if y1 > h:
                out[max(h - y0, 0) :] = 255  # and past the band's
            if x1 > w:
                out[:, max(w - x0, 0) :] = 255
            return out

        def close(self) -> None:
            pass  # the slide belongs to the caller

    return Band


# --------------------------------------------------------------------------------------------
# the run's shared inputs


class Context:
    def __init__(self, args, dev):
        self.args, self.dev = args, dev
        self._data = None
        self._pairs = None
        self._prior = None

    @property
    def data(self):
        if self._data is None:
            from napari_cinuseg.datasets.labelled import read_consep_patches

            self._data = read_consep_patches(self.args.data / "consep")
        return self._data

    @property
    def pairs(self):
        """Training pairs of a real incremental step: CoNSeP's 'Other' class."""
        if self._pairs is None:
            from napari_cinuseg.datasets.labelled import step_pairs

            self._pairs = step_pairs(self.data, ["Other"])
        return self._pairs

    def settings(self, arch=None):
        """The preset (with the run's overrides); with ``arch``, for that network."""
        from napari_cinuseg import preset

        a = self.args
        s = preset(a.preset, iterations=a.iterations, device=str(self.dev), log_every=1)
        if a.crop_size:
            s = s.replace(crop_size=a.crop_size)
        if a.batch_size:
            s = s.replace(batch_size=a.batch_size)
        return s.for_network(arch) if arch is not None else s

    @property
    def prior(self):
        """The prior model of parts 1-4: --prior, else the bundled base model when its network
        is the preset's, else a new (untrained) model with the preset's network: the timing
        depends on the network, not on its weights."""
        if self._prior is None:
            from napari_cinuseg import CiNuSegModel, load_model
            from napari_cinuseg.model_file import BUNDLED_MODEL

            a = self.args
            if a.prior:
                self._prior = load_model(a.prior)
                self.prior_source = str(a.prior)
            else:
                want = self.settings().architecture()
                bundled = load_model(BUNDLED_MODEL) if BUNDLED_MODEL.is_file() else None
                if bundled is not None and (bundled.arch.encoder, bundled.arch.decoder, tuple(bundled.arch.decoder_channels)) == (
                    want.encoder, want.decoder, tuple(want.decoder_channels)
                ):
                    self._prior, self.prior_source = bundled, f"bundled {BUNDLED_MODEL.name}"
                else:
                    self._prior = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], want)
                    self.prior_source = f"new untrained {want.encoder} model (preset {a.preset})"
        return self._prior

    def prior_file(self) -> Path:
        """The prior as a file, for the subprocesses."""
        from napari_cinuseg import save_model
        from napari_cinuseg.model_file import BUNDLED_MODEL

        prior = self.prior
        if self.args.prior:
            return Path(self.args.prior)
        if self.prior_source.startswith("bundled"):
            return BUNDLED_MODEL
        path = self.args.out / "work" / "prior.cinuseg.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        return save_model(prior, path)

    def image(self):
        """The whole-slide image of parts 2 and 5 (a path, or a Band of it in --quick)."""
        a = self.args
        if a.region_rows or a.region_cols:
            from napari_cinuseg.io.slides import Slide

            slide = Slide(a.slide)
            band = _band_class()(slide, a.region_rows, a.region_cols)
            return band, slide
        return str(a.slide), None


# --------------------------------------------------------------------------------------------
# 1. training overhead


def time_step(prior, pairs, settings, method: str, warmup: int) -> dict:
    """Seconds per iteration of one incremental step, from the end of iteration ``warmup`` to
    the end of the last (Progress.seconds counts from the step's start)."""
    from napari_cinuseg import drain, train_step
    from napari_cinuseg.events import MemoryReduced, Progress

    marks: dict[int, float] = {}
    notes: list[str] = []

    def on_event(ev):
        if isinstance(ev, Progress):
            marks[ev.iteration] = ev.seconds
        elif isinstance(ev, MemoryReduced):
            notes.append(ev.message)

    t0 = time.perf_counter()
    drain(train_step(prior, pairs, ["Other"], settings, method=method), on_event)
    wall = time.perf_counter() - t0
    last = max(marks) if marks else 0
    if last <= warmup or warmup not in marks:
        raise ValueError(f"{last} iteration(s) logged: --iterations must exceed the {warmup} warm-up iteration(s)")
    per_it = (marks[last] - marks[warmup]) / (last - warmup)
    return {
        "method": method,
        "iterations": last,
        "timed_iterations": last - warmup,
        "seconds_per_iteration": per_it,
        "warmup_seconds": marks[warmup],
        "wall_seconds": round(wall, 3),
        **({"memory_reduced": notes} if notes else {}),
    }


def part_training(ctx: Context) -> dict:
    a = ctx.args
    prior = ctx.prior
    settings = ctx.settings(prior.arch)
    pairs = ctx.pairs
    runs: dict[str, list[dict]] = {"cinuseg": [], "finetune": []}
    for r in range(a.repeats):
        order = ("cinuseg", "finetune") if r % 2 == 0 else ("finetune", "cinuseg")
        for method in order:
            runs[method].append(time_step(prior, pairs, settings, method, a.warmup))
    s_cin = statistics.median(x["seconds_per_iteration"] for x in runs["cinuseg"])
    s_ft = statistics.median(x["seconds_per_iteration"] for x in runs["finetune"])
    ratio = s_cin / s_ft
    return {
        "what": "seconds per iteration, CiNuSeg step ÷ fine-tuning step, same prior, batch, crops and device",
        "prior": ctx.prior_source,
        "encoder": prior.arch.encoder,
        "batch_size": settings.batch_size,
        "crop_size": settings.crop_size,
        "iterations": a.iterations,
        "warmup_iterations": a.warmup,
        "repeats": a.repeats,
        "training_images": len(pairs),
        "cinuseg_seconds_per_iteration": s_cin,
        "finetune_seconds_per_iteration": s_ft,
        "ratio": ratio,
        "target": f"<= {TARGET_TRAIN_RATIO} (floor ~{TRAIN_RATIO_FLOOR})",
        "status": _status(ratio <= TARGET_TRAIN_RATIO),
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------
# 2. tiling overhead


def bare_forward_seconds(model, batches, dev, amp: bool) -> float:
    """Seconds for the bare network forward over ``batches`` (uint8 NCHW tensors in host
    memory): upload, normalise, forward, in eval mode under inference_mode (with the model's
    AMP and channels_last on CUDA, as ``segment`` uses). The logits stay on the device."""
    import torch

    from napari_cinuseg import devices

    dtype = devices.amp_dtype(dev, amp)
    net = model.network
    _sync(dev)
    t0 = time.perf_counter()
    with torch.inference_mode(), devices.autocast(dev, dtype):
        for b in batches:
            x = b.to(dev, non_blocking=True)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            _ = net(model.normalize(x)).logits
    _sync(dev)
    return time.perf_counter() - t0


def _tiles_of(image, tile: int, overlap: int):
    from napari_cinuseg.io.slides import Slide
    from napari_cinuseg.inference.tiling import tile_origins

    own = isinstance(image, str)
    slide = Slide(image) if own else image
    try:
        h, w = slide.shape
        ys, xs = tile_origins(h, tile, overlap), tile_origins(w, tile, overlap)
        tiles = [slide.read(y, x, y + tile, x + tile) for y in ys for x in xs]
    finally:
        if own:
            slide.close()
    return (h, w), tiles


def time_segment(model, image, ctx: Context, settings) -> dict:
    from napari_cinuseg import drain
    from napari_cinuseg.inference.segmentation import MemoryReduced, SegmentFinished, segment

    a = ctx.args
    info: dict = {}

    def on_event(ev):
        if isinstance(ev, SegmentFinished):
            info.update(tiles=ev.tiles, skipped=ev.skipped)
        elif isinstance(ev, MemoryReduced):
            info.setdefault("memory_reduced", []).append(ev.message)

    t0 = time.perf_counter()
    result = drain(
        segment(model, image, tile=a.tile, overlap=a.overlap, batch_size=a.infer_batch, device=str(ctx.dev),
                amp=settings.amp, min_tissue=0),
        on_event,
    )
    info["seconds"] = time.perf_counter() - t0
    info["result_shape"] = list(np.shape(result))
    return info


def part_tiling(ctx: Context) -> dict:
    import torch

    a = ctx.args
    model, dev = ctx.prior, ctx.dev
    settings = ctx.settings(model.arch)
    image, slide = ctx.image()
    try:
        (h, w), tiles = _tiles_of(image, a.tile, a.overlap)
        n = len(tiles)
        tile_mp = n * a.tile * a.tile / 1e6  # what both throughputs count
        batches = [
            torch.from_numpy(np.stack(tiles[i : i + a.infer_batch])).permute(0, 3, 1, 2)
            for i in range(0, n, a.infer_batch)
        ]
        del tiles
        net = model.network
        was_training = net.training

        def ready():  # segment hands the network back on the CPU: bring it to the device again
            net.eval().to(dev)
            if dev.type == "cuda":
                net.to(memory_format=torch.channels_last)

        try:
            ready()
            bare_forward_seconds(model, batches[:1], dev, settings.amp)  # warm-up, not timed
            bare_s, seg_runs = [], []
            for r in range(a.repeats):  # alternating order, the median of each
                for what in (("bare", "segment") if r % 2 == 0 else ("segment", "bare")):
                    if what == "bare":
                        ready()
                        bare_s.append(bare_forward_seconds(model, batches, dev, settings.amp))
                    else:
                        seg_runs.append(time_segment(model, image, ctx, settings))
        finally:
            net.train(was_training).cpu()
            if dev.type == "cuda":
                net.to(memory_format=torch.contiguous_format)
        del batches
    finally:
        if slide is not None:
            slide.close()
    seg_s = statistics.median(r["seconds"] for r in seg_runs)
    bare = statistics.median(bare_s)
    if seg_runs[0].get("tiles") != n:
        raise RuntimeError(f"segment used {seg_runs[0].get('tiles')} tiles, the bare forward {n}: not the same pixels")
    seg_mps, bare_mps = tile_mp / seg_s, tile_mp / bare
    ratio = seg_mps / bare_mps
    return {
        "what": "megapixels/s of segment() ÷ of the bare network forward on the same tiles held in memory",
        "pixels_counted": "tiles × tile² (the tiles' area including overlap), the same in both",
        "image": str(a.slide),
        "region": {"rows": h, "cols": w},
        "tile": a.tile,
        "overlap": a.overlap,
        "batch_size": a.infer_batch,
        "tiles": n,
        "tile_megapixels": tile_mp,
        "image_megapixels": h * w / 1e6,
        "amp": settings.amp and dev.type == "cuda",
        "segment_seconds": seg_s,
        "bare_forward_seconds": bare,
        "segment_mp_per_s": seg_mps,
        "bare_forward_mp_per_s": bare_mps,
        "segment_image_mp_per_s": h * w / 1e6 / seg_s,
        "ratio": ratio,
        "target": f">= {TARGET_TILING_RATIO}",
        "status": _status(ratio >= TARGET_TILING_RATIO),
        "repeats": a.repeats,
        "runs": {"segment": seg_runs, "bare_forward_seconds": bare_s},
    }


# --------------------------------------------------------------------------------------------
# 3. memory: synthetic pyramidal JPEG TIFFs, each size segmented in a fresh process


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def write_synthetic_slide(path: Path, size: int, patches: list[np.ndarray], tile: int = 256, seed: int = 0) -> dict:
    """A size×size pyramidal, tiled, JPEG-compressed RGB TIFF: a mosaic of real H&E patches
    (each ``tile`` px), written tile by tile (the slide is never in memory). Level L halves
    level L-1 (each patch box-averaged), down to the last level of at least one tile; levels
    are SubIFDs of level 0, as tifffile writes pyramids."""
    import tifffile

    p0 = np.stack([p[:tile, :tile] for p in patches if p.shape[0] >= tile and p.shape[1] >= tile])
    if not len(p0):
        raise ValueError(f"no patch of at least {tile}×{tile} px to build a slide from")
    n0 = _ceil_div(size, tile)  # level-0 tiles per side
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(p0), size=(n0, n0))  # the patch of each level-0 tile
    levels = [0]
    while (size >> (levels[-1] + 1)) >= tile and (tile >> (levels[-1] + 1)) >= 1:
        levels.append(levels[-1] + 1)
    scaled = {}
    for lv in levels:
        f = 2**lv
        s = tile // f
        scaled[lv] = p0[:, : s * f, : s * f].reshape(len(p0), s, f, s, f, 3).mean(axis=(2, 4)).astype(np.uint8)

    def tiles(lv: int):
        f, s = 2**lv, tile // 2**lv
        n = _ceil_div(_ceil_div(size, f), tile)
        for ty in range(n):
            for tx in range(n):
                idx = which[ty * f : (ty + 1) * f, tx * f : (tx + 1) * f]
                a, b = idx.shape
                block = scaled[lv][idx].transpose(0, 2, 1, 3, 4).reshape(a * s, b * s, 3)
                out = np.full((tile, tile, 3), 255, np.uint8)
                out[: block.shape[0], : block.shape[1]] = block
                yield out

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    t0 = time.perf_counter()
    opts = {"dtype": np.uint8, "tile": (tile, tile), "compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb"}
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(tiles(0), shape=(size, size, 3), subifds=len(levels) - 1, **opts)
        for lv in levels[1:]:
            side = _ceil_div(size, 2**lv)
            tif.write(tiles(lv), shape=(side, side, 3), subfiletype=1, **opts)
    os.replace(tmp, path)
    return {"seconds_to_write": round(time.perf_counter() - t0, 2), "levels": len(levels), "bytes": path.stat().st_size}


def ensure_slide(ctx: Context, size: int) -> tuple[Path, dict]:
    from napari_cinuseg.io.slides import Slide

    path = ctx.args.slides_dir / f"synthetic-consep-{size}.tif"
    if path.exists():
        try:
            with Slide(path) as s:
                if tuple(s.shape) == (size, size):
                    return path, {"reused": True, "levels": len(s.levels), "bytes": path.stat().st_size}
        except Exception:  # noqa: BLE001, S110 - a broken leftover: write it again
            pass
        path.unlink()
    patches = [it.image for it in ctx.data.items[:: max(1, len(ctx.data.items) // 64)]]
    return path, {"reused": False, **write_synthetic_slide(path, size, patches)}


def run_child(kind: str, payload: dict, prefix: list[str] | None = None, timeout: float | None = None) -> dict:
    """Run this script's ``--child KIND`` in a fresh Python process; its result comes back as JSON."""
    work = Path(payload["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    result = work / f"{kind}-result.json"
    if result.exists():
        result.unlink()
    payload = {**payload, "result": str(result)}
    args_file = work / f"{kind}-args.json"
    args_file.write_text(json.dumps(payload))
    cmd = [*(prefix or []), sys.executable, str(SCRIPT), "--child", kind, str(args_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout or "").strip()[-3000:]
        raise RuntimeError(f"the {kind} subprocess failed (exit {proc.returncode}): {tail}")
    return json.loads(result.read_text())


def part_memory(ctx: Context) -> dict:
    a = ctx.args
    settings = ctx.settings(ctx.prior.arch)
    prior_file = ctx.prior_file()
    rows_asked = a.rows
    sizes = []
    for size in a.sizes:
        path, made = ensure_slide(ctx, size)
        rows = rows_asked if rows_asked and rows_asked < size else None
        res = run_child(
            "memory",
            {
                "slide": str(path),
                "rows": rows,
                "prior": str(prior_file),
                "tile": a.tile,
                "overlap": a.overlap,
                "batch_size": a.infer_batch,
                "device": str(ctx.dev),
                "amp": settings.amp,
                "threads": a.threads,
                "workdir": str(a.out / "work" / f"memory-{size}"),
            },
        )
        res.update(size=size, slide=str(path), slide_file=made)
        sizes.append(res)
        print(f"   {size}² ({res['segmented']}): peak RSS {res['peak_rss_mb']:.0f} MiB, {res['seconds']:.1f} s", flush=True)
    peaks = [s["peak_rss_mb"] for s in sizes]
    under = max(peaks) < TARGET_PEAK_MB if dev_is_cpu(ctx) else None
    flat_ratio = peaks[-1] / peaks[0] if len(peaks) > 1 else 1.0
    flat = flat_ratio <= FLAT_FACTOR
    ok = (under is not False) and flat
    return {
        "what": "peak resident memory (VmHWM) of a fresh process segmenting each synthetic slide to a zarr on disk",
        "rows": rows_asked or "all",
        "note": (
            f"only the first {rows_asked} pixel rows of each full-width slide were segmented (--rows): "
            "the logits band spans one column strip (8192 px) of the full width and a tile's height, so "
            "further rows add time, not memory"
            if rows_asked
            else "every slide was segmented whole"
        ),
        "tile": a.tile,
        "overlap": a.overlap,
        "batch_size": a.infer_batch,
        "sizes": sizes,
        "peak_rss_mb_max": max(peaks),
        "flat_ratio": flat_ratio,
        "target": f"flat (largest <= {FLAT_FACTOR}x smallest) and < {TARGET_PEAK_MB:.0f} MiB on the CPU",
        "status_under_2gb": _status(under),
        "status_flat": _status(flat),
        "status": _status(ok),
    }


def dev_is_cpu(ctx: Context) -> bool:
    return ctx.dev.type == "cpu"


def child_memory(p: dict) -> dict:
    import torch

    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    from napari_cinuseg import drain, load_model
    from napari_cinuseg.inference.segmentation import (
        MemoryReduced,
        SegmentFinished,
        SegmentStarted,
        segment,
    )
    from napari_cinuseg.io.slides import Slide

    model = load_model(p["prior"])
    before = peak_rss_mb()
    out = Path(p["workdir"]) / "x.zarr"
    if out.exists():
        shutil.rmtree(out)
    info: dict = {}
    samples: list[float] = []
    stop = threading.Event()

    def sample():  # the current RSS over time, to see whether it creeps up
        while not stop.is_set():
            r = rss_mb()
            if r is not None:
                samples.append(r)
            stop.wait(0.25)

    def on_event(ev):
        if isinstance(ev, SegmentStarted):
            info.update(height=ev.height, width=ev.width, tiles=ev.tiles)
        elif isinstance(ev, SegmentFinished):
            info.update(skipped=ev.skipped)
        elif isinstance(ev, MemoryReduced):
            info.setdefault("memory_reduced", []).append(ev.message)

    dev = torch.device(p["device"])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    slide = Slide(p["slide"])
    h, w = slide.shape
    image = _band_class()(slide, p["rows"]) if p["rows"] else slide
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        drain(
            segment(model, image, tile=p["tile"], overlap=p["overlap"], batch_size=p["batch_size"],
                    device=p["device"], amp=p["amp"], min_tissue=0, out=out),
            on_event,
        )
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        watcher.join(timeout=5)
        slide.close()
    peak = peak_rss_mb()
    import zarr

    written = list(zarr.open_array(str(out), mode="r").shape)
    shutil.rmtree(out, ignore_errors=True)
    rows = p["rows"] or h
    res = {
        "segmented": f"first {rows} of {h} rows × {w} px" if p["rows"] else f"whole {h} × {w}",
        "rows_segmented": rows,
        "width": w,
        "class_map_shape": written,
        "seconds": seconds,
        "image_mp_per_s": rows * w / 1e6 / seconds,
        "rss_after_model_load_mb": before,
        "peak_rss_mb": peak,
        "segmentation_rss_mb": peak - before,  # what segmenting added on top of torch + the model
        "rss_samples_mb": {"first": samples[0] if samples else None, "max": max(samples) if samples else None,
                           "last": samples[-1] if samples else None, "count": len(samples)},
        **info,
    }
    if dev.type == "cuda":
        res["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return res


# --------------------------------------------------------------------------------------------
# 4. GUI responsiveness (a subprocess: the headless parts never import Qt)


def part_gui(ctx: Context) -> dict:
    a = ctx.args
    if a.no_gui:
        return {"skipped": "--no-gui: the event-loop measurement was not run", "status": "n/a"}
    prefix: list[str] = []
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if not display and sys.platform.startswith("linux"):
        if shutil.which("xvfb-run") is None:
            return {"skipped": "no display and no xvfb-run: run under `xvfb-run -a` or with a display", "status": "n/a"}
        prefix = ["xvfb-run", "-a"]
    res = run_child(
        "gui",
        {
            "prior": str(ctx.prior_file()),
            "slide": str(a.slide),
            "iterations": a.iterations,
            "crop": a.gui_crop,
            "interval_ms": a.timer_ms,
            "idle_s": a.idle_seconds,
            "settle_s": a.settle_seconds,
            "threads": a.threads,
            "workdir": str(a.out / "work" / "gui"),
        },
        prefix=prefix,
        timeout=3600,
    )
    res["display"] = "xvfb-run -a (virtual X server)" if prefix else f"existing display {display}"
    late = res["training"]["max_ms"]
    res["target"] = f"max < {TARGET_LATENESS_MS:.0f} ms"
    res["status"] = _status(late < TARGET_LATENESS_MS)
    return res


def _lateness(ticks: list[float], interval_ms: float) -> dict:
    if len(ticks) < 2:
        return {"max_ms": float("nan"), "p99_ms": float("nan"), "p50_ms": float("nan"), "ticks": len(ticks)}
    t = np.asarray(ticks)
    late = np.maximum(np.diff(t) * 1000 - interval_ms, 0.0)
    worst = int(late.argmax())
    return {
        "max_ms": float(late.max()),
        "max_at_s": float(t[worst] - t[0]),  # when the worst stall began, from the phase's start
        "over_target": int((late >= TARGET_LATENESS_MS).sum()),  # stalls of 100 ms or more
        "p99_ms": float(np.percentile(late, 99)),
        "p50_ms": float(np.percentile(late, 50)),
        "ticks": len(ticks),
        "seconds": ticks[-1] - ticks[0],
    }


def child_gui(p: dict) -> dict:
    import torch

    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    import napari
    from qtpy.QtCore import QSettings, Qt, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_cinuseg.io.slides import Slide
    from napari_cinuseg.ui.panel import CiNuSegWidget
    from napari_cinuseg.workflows import Storage

    work = Path(p["workdir"])
    (work / "models").mkdir(parents=True, exist_ok=True)
    # as tests/test_widget.py does: new models and remembered settings go to a scratch folder
    storage = Storage(work / "models", work / "results")
    settings = QSettings(str(work / "settings.ini"), QSettings.IniFormat)

    viewer = napari.Viewer(show=True)
    with Slide(p["slide"]) as s:
        viewer.add_image(s.read(1000, 800, 1320, 1120), name="he", rgb=True)
    w = CiNuSegWidget(viewer, storage=storage, settings=settings)
    viewer.window.add_dock_widget(w)
    w.load_model(p["prior"])
    w.class_name.setText("Neutrophil")
    layer = w.add_annotation_layer()
    if layer is None:
        raise RuntimeError(f"no annotation layer: {w.status.text()}")
    layer.data[40:60, 40:60] = 1  # a few strokes of the new class
    layer.data[200:230, 150:170] = 2  # and of background
    layer.refresh()
    w.iterations.setValue(int(p["iterations"]))
    w.crop.setValue(int(p["crop"]))

    app = QApplication.instance()
    interval = float(p["interval_ms"])
    phase = {"name": "settle"}  # the window's first paints are not counted
    ticks: dict[str, list[float]] = {"idle": [], "training": []}
    out: dict = {"timer_interval_ms": interval}

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(int(interval))
    timer.timeout.connect(lambda: ticks[phase["name"]].append(time.perf_counter()) if phase["name"] in ticks else None)

    def finished():
        out["training_seconds"] = time.perf_counter() - out.pop("_t0")
        phase["name"] = "done"
        out.update(  # read now: quitting the application deletes the widgets
            preset=w.preset_combo.currentText(),
            device_label=w.device_label.text(),
            status_text=w.status.text(),
            trained_classes=list(w.model.class_names) if w.model is not None else None,
        )
        QTimer.singleShot(100, app.quit)

    def start():
        phase["name"] = "training"
        ticks["training"].append(time.perf_counter())
        t0 = time.perf_counter()
        out["_t0"] = t0
        worker = w.start_training()
        out["start_training_call_ms"] = (time.perf_counter() - t0) * 1000
        if worker is None:
            out["error"] = f"training did not start: {w.status.text()}"
            QTimer.singleShot(0, app.quit)
            return
        worker.finished.connect(finished)

    def give_up():
        if phase["name"] != "done":
            out["error"] = "training did not finish within the time limit"
            app.quit()

    timer.start()
    settle_ms = int(float(p["settle_s"]) * 1000)
    QTimer.singleShot(settle_ms, lambda: phase.update(name="idle"))
    QTimer.singleShot(settle_ms + int(float(p["idle_s"]) * 1000), start)
    QTimer.singleShot(3_000_000, give_up)
    app.exec()
    timer.stop()
    if "error" in out:
        raise RuntimeError(out["error"])
    out.update(
        idle=_lateness(ticks["idle"], interval),
        training=_lateness(ticks["training"], interval),
        iterations=int(p["iterations"]),
        crop=int(p["crop"]),
    )
    try:
        viewer.close()
    except RuntimeError:  # already closed with the application
        pass
    return out


# --------------------------------------------------------------------------------------------
# 5. throughput per encoder


def part_encoders(ctx: Context) -> dict:
    from napari_cinuseg import CiNuSegModel

    a = ctx.args
    rows = []
    for enc in a.encoders:
        row: dict = {"encoder": enc}
        try:
            settings = ctx.settings().replace(encoder=enc)
            model = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], settings.architecture())
            settings = settings.for_network(model.arch)
            with GpuUtilisation(ctx.dev) as gpu:
                step = time_step(model, ctx.pairs, settings, "cinuseg", a.warmup)
            row.update(
                batch_size=settings.batch_size,
                crop_size=settings.crop_size,
                train_seconds_per_iteration=step["seconds_per_iteration"],
                train_crops_per_s=settings.batch_size / step["seconds_per_iteration"],
                train_gpu_utilisation=gpu.result(),
            )
            image, slide = ctx.image()
            try:
                with GpuUtilisation(ctx.dev) as gpu:
                    seg = time_segment(model, image, ctx, settings)
            finally:
                if slide is not None:
                    slide.close()
            h, w = seg["result_shape"][:2]
            row.update(
                infer_seconds=seg["seconds"],
                infer_tiles=seg.get("tiles"),
                infer_image_mp_per_s=h * w / 1e6 / seg["seconds"],
                infer_tile_mp_per_s=(seg.get("tiles") or 0) * a.tile * a.tile / 1e6 / seg["seconds"],
                infer_gpu_utilisation=gpu.result(),
                amp=settings.amp and ctx.dev.type == "cuda",
            )
        except Exception as exc:  # noqa: BLE001 - one encoder failing leaves the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
        rows.append(row)
        print(f"   {enc}: " + (row.get("error") or
              f"{row['train_crops_per_s']:.2f} crops/s training, {row['infer_image_mp_per_s']:.3f} MP/s inference"), flush=True)
    errors = [r for r in rows if "error" in r]
    res = {
        "what": "CiNuSeg step crops/s (batch × iterations ÷ s, after warm-up) and segment() megapixels/s of image per encoder; untrained models (weights do not change the time)",
        "image": str(a.slide),
        "tile": a.tile,
        "overlap": a.overlap,
        "infer_batch_size": a.infer_batch,
        "encoders": rows,
        "status": "n/a",
    }
    if errors and len(errors) == len(rows):
        raise RuntimeError("; ".join(f"{r['encoder']}: {r['error']}" for r in errors))
    return res


# --------------------------------------------------------------------------------------------
# report


def _f(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    parts = results["parts"]
    lines = [
        f"<!-- benchmarks/performance.py, {results['finished']}; {' '.join(results['command'])} -->",
        "",
        f"**Machine:** {machine_line(m)}.",
        "",
        *([f"**{busy_warning(m)}**", ""] if busy_warning(m) else []),
        *(["**Smoke run (--quick): tiny sizes, not a measurement.**", ""] if results.get("quick") else []),
        "| Measure | Result | Target | Status |",
        "|---|---:|---:|:-:|",
    ]

    def err(name):
        p = parts.get(name)
        if p is None:
            return "not run"
        if "error" in p:
            return f"failed: {p['error']}"
        if "skipped" in p:
            return f"skipped: {p['skipped']}"
        return None

    p = parts.get("training", {})
    e = err("training")
    lines.append(
        "| Training overhead: s/iteration CiNuSeg ÷ fine-tuning"
        + (f" ({p['encoder']}, batch {p['batch_size']}, crop {p['crop_size']}) | **{p['ratio']:.2f}** "
           f"({p['cinuseg_seconds_per_iteration']:.3f} / {p['finetune_seconds_per_iteration']:.3f} s) | ≤ {TARGET_TRAIN_RATIO} "
           f"(floor ≈ {TRAIN_RATIO_FLOOR}) | {p['status']} |" if not e else f" | {e} | ≤ {TARGET_TRAIN_RATIO} | – |")
    )
    p, e = parts.get("tiling", {}), err("tiling")
    lines.append(
        "| Tiling overhead: MP/s segment ÷ bare forward"
        + (f" ({p['tiles']} tiles of {p['tile']} px, overlap {p['overlap']}) | **{p['ratio']:.2f}** "
           f"({p['segment_mp_per_s']:.3f} / {p['bare_forward_mp_per_s']:.3f} MP/s) | ≥ {TARGET_TILING_RATIO} | {p['status']} |"
           if not e else f" | {e} | ≥ {TARGET_TILING_RATIO} | – |")
    )
    p, e = parts.get("memory", {}), err("memory")
    if not e:
        peaks = " / ".join(f"{s['peak_rss_mb'] / 1024:.2f}" for s in p["sizes"])
        names = " / ".join(f"{s['size'] // 1024}k²" if s["size"] >= 1024 else f"{s['size']}²" for s in p["sizes"])
        rows = f", first {p['rows']} rows" if p["rows"] != "all" else ""
        lines.append(
            f"| Peak RSS segmenting {names}{rows} (GiB) | **{peaks}** (×{p['flat_ratio']:.2f}) | flat (≤ ×{FLAT_FACTOR}), "
            f"< {TARGET_PEAK_MB / 1024:.0f} GiB | {p['status']} |"
        )
    else:
        lines.append(f"| Peak RSS segmenting synthetic slides | {e} | flat, < 2 GiB | – |")
    p, e = parts.get("gui", {}), err("gui")
    lines.append(
        "| Event-loop delay while training in napari, max / p99"
        + (f" ({p['iterations']} iterations, crop {p['crop']}) | **{p['training']['max_ms']:.0f}** / "
           f"{p['training']['p99_ms']:.0f} ms (idle {p['idle']['max_ms']:.0f} / {p['idle']['p99_ms']:.0f}) | "
           f"< {TARGET_LATENESS_MS:.0f} ms | {p['status']} |" if not e else f" | {e} | < {TARGET_LATENESS_MS:.0f} ms | – |")
    )

    p, e = parts.get("memory", {}), err("memory")
    if not e:
        lines += ["", "| Slide | Segmented | Peak RSS (MiB) | After imports + model load (MiB) | Added by segmenting (MiB) | Time (s) | MP/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for s in p["sizes"]:
            lines.append(
                f"| {s['size']}² | {s['segmented']} | {s['peak_rss_mb']:.0f} | {s['rss_after_model_load_mb']:.0f} | "
                f"{s['segmentation_rss_mb']:.0f} | {s['seconds']:.1f} | {s['image_mp_per_s']:.3f} |"
            )
    p, e = parts.get("encoders", {}), err("encoders")
    if not e:
        lines += ["", "| Encoder | Training crops/s (batch × crop) | Inference MP/s (image) | Inference MP/s (tiles) | GPU util. train / infer |",
                  "|---|---:|---:|---:|---:|"]
        for r in p["encoders"]:
            if "error" in r:
                lines.append(f"| {r['encoder']} | failed: {r['error']} | | | |")
                continue

            def util(u):
                if u is None:
                    return "–"
                return f"{u['mean_percent']:.0f} %" if "mean_percent" in u else "n/a"

            lines.append(
                f"| {r['encoder']} | {r['train_crops_per_s']:.2f} ({r['batch_size']} × {r['crop_size']}²) | "
                f"{r['infer_image_mp_per_s']:.3f} | {r['infer_tile_mp_per_s']:.3f} | "
                f"{util(r['train_gpu_utilisation'])} / {util(r['infer_gpu_utilisation'])} |"
            )
    return "\n".join(lines) + "\n"


def summary_lines(results: dict) -> list[str]:
    out = [f"Machine: {machine_line(results['machine'])}"]
    for name in PARTS:
        p = results["parts"].get(name)
        if p is None:
            continue
        if "error" in p:
            out.append(f"{name:9s} ERROR {p['error']}")
        elif "skipped" in p:
            out.append(f"{name:9s} skipped ({p['skipped']})")
        elif name == "training":
            out.append(f"{name:9s} {p['status']}  ratio {p['ratio']:.3f} (target {p['target']}): "
                       f"cinuseg {p['cinuseg_seconds_per_iteration']:.4f} s/it, finetune {p['finetune_seconds_per_iteration']:.4f} s/it")
        elif name == "tiling":
            out.append(f"{name:9s} {p['status']}  ratio {p['ratio']:.3f} (target {p['target']}): "
                       f"segment {p['segment_mp_per_s']:.3f} MP/s, bare forward {p['bare_forward_mp_per_s']:.3f} MP/s over {p['tiles']} tiles")
        elif name == "memory":
            peaks = ", ".join(f"{s['size']}²: {s['peak_rss_mb']:.0f} MiB" for s in p["sizes"])
            out.append(f"{name:9s} {p['status']}  peak RSS {peaks} (×{p['flat_ratio']:.2f}; under 2 GB {p['status_under_2gb']}, "
                       f"flat {p['status_flat']}); {p['note']}")
        elif name == "gui":
            out.append(f"{name:9s} {p['status']}  event-loop delay during training max {p['training']['max_ms']:.1f} ms, "
                       f"p99 {p['training']['p99_ms']:.1f} ms (idle max {p['idle']['max_ms']:.1f} ms); {p['display']}")
        elif name == "encoders":
            for r in p["encoders"]:
                if "error" in r:
                    out.append(f"{name:9s} {r['encoder']}: ERROR {r['error']}")
                else:
                    out.append(f"{name:9s} {r['encoder']}: {r['train_crops_per_s']:.2f} crops/s training, "
                               f"{r['infer_image_mp_per_s']:.3f} MP/s inference")
    return out


# --------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="performance.py",
        description="Performance of napari-cinuseg on this machine (see docs/performance-howto.md).",
    )
    ap.add_argument("--data", type=Path, default=None, help="the shared data folder (default $CINUSEG_DATA, else ../shared/data beside the repository)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", type=Path, default=Path("runs") / "performance", help="folder for results.json and performance.md")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (numbers are not meaningful)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--sizes", default=None, help="synthetic slide sizes in px, e.g. 4096,16384,32768 (default; --quick 512,1024)")
    ap.add_argument("--rows", type=int, default=None,
                    help="segment only the first N pixel rows of each full-width synthetic slide; 0 = whole slides "
                         "(default: 2048 on the CPU, whole on CUDA; --quick: whole)")
    ap.add_argument("--encoders", default=None, help=f"default {','.join(ENCODERS)} (--quick: resnet18)")
    ap.add_argument("--no-gui", action="store_true", help="skip the napari event-loop measurement (it needs a display or xvfb-run)")
    ap.add_argument("--iterations", type=int, default=None, help="training iterations per run (default 30; --quick 6)")
    ap.add_argument("--warmup", type=int, default=None, help="iterations left out of the timing (default 3)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of parts 1 and 2, alternating order; the median is reported")
    ap.add_argument("--preset", default="cpu", help="training preset (cpu, paper)")
    ap.add_argument("--prior", type=Path, default=None, help="prior model file (default: the bundled base model if the preset's network)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's; --quick 4)")
    ap.add_argument("--crop-size", type=int, default=None, help="training crop (default: the preset's; --quick 64)")
    ap.add_argument("--slide", type=Path, default=None, help="real slide for parts 2, 4, 5 (default DATA/slides/CMU-1-Small-Region.svs)")
    ap.add_argument("--region-rows", type=int, default=None, help="parts 2 and 5 use only these rows of --slide (default all; --quick 480)")
    ap.add_argument("--region-cols", type=int, default=None, help="... and these columns (default all; --quick 960)")
    ap.add_argument("--tile", type=int, default=None, help="segmentation tile (default 512; --quick 256)")
    ap.add_argument("--overlap", type=int, default=None, help="tile overlap (default 64; --quick 32)")
    ap.add_argument("--infer-batch", type=int, default=4, help="tiles per forward in segmentation")
    ap.add_argument("--gui-crop", type=int, default=None, help="crop size set in the panel (default 128; --quick 64)")
    ap.add_argument("--timer-ms", type=float, default=10.0, help="QTimer interval of the lateness probe")
    ap.add_argument("--idle-seconds", type=float, default=None, help="idle baseline before training starts (default 3; --quick 1)")
    ap.add_argument("--settle-seconds", type=float, default=None, help="wait after the window opens, not measured (default 2; --quick 0.5)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--slides-dir", type=Path, default=None, help="where synthetic slides are written and reused (default OUT/slides)")
    a = ap.parse_args(argv)

    q = a.quick
    a.data = (a.data or _default_data()).resolve()
    a.out = a.out.resolve()
    a.slides_dir = (a.slides_dir or a.out / "slides").resolve()
    a.slide = (a.slide or a.data / "slides" / "CMU-1-Small-Region.svs").resolve()
    a.parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = set(a.parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    a.sizes = [int(s) for s in (a.sizes or ("512,1024" if q else "4096,16384,32768")).split(",")]
    a.encoders = [e.strip() for e in (a.encoders or ("resnet18" if q else ",".join(ENCODERS))).split(",") if e.strip()]
    a.iterations = a.iterations or (6 if q else 30)
    a.warmup = a.warmup if a.warmup is not None else 3
    if a.iterations <= a.warmup:
        ap.error(f"--iterations ({a.iterations}) must exceed --warmup ({a.warmup})")
    if q:
        a.batch_size = a.batch_size or 4
        a.crop_size = a.crop_size or 64
        a.region_rows = a.region_rows or 480
        a.region_cols = a.region_cols or 960
    a.tile = a.tile or (256 if q else 512)
    a.overlap = a.overlap if a.overlap is not None else (32 if q else 64)
    a.gui_crop = a.gui_crop or (64 if q else 128)
    a.idle_seconds = a.idle_seconds if a.idle_seconds is not None else (1.0 if q else 3.0)
    a.settle_seconds = a.settle_seconds if a.settle_seconds is not None else (0.5 if q else 2.0)
    a.repeats = max(1, a.repeats)
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1], Path(argv[2]))
    a = parse_args(argv)
    import torch

    from napari_cinuseg import devices

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        dev = devices.resolve_device(a.device)
    except RuntimeError as exc:
        print(f"performance.py: {exc}", file=sys.stderr)
        return 2
    if a.rows is None:  # whole slides in a smoke run and on CUDA; a 2048-row band on the CPU
        a.rows = 0 if (a.quick or dev.type == "cuda") else 2048
    a.out.mkdir(parents=True, exist_ok=True)
    results = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["benchmarks/performance.py", *argv],
        "quick": a.quick,
        "machine": machine_info(dev),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "parts": {},
    }
    results["config"]["data"] = str(a.data)
    ctx = Context(a, dev)
    json_path, md_path = a.out / "results.json", a.out / "performance.md"
    print(f"Machine: {machine_line(results['machine'])}", flush=True)
    funcs = {"training": part_training, "tiling": part_tiling, "memory": part_memory, "gui": part_gui, "encoders": part_encoders}
    for name in PARTS:
        if name not in a.parts:
            continue
        print(f"== {name} …", flush=True)
        t0 = time.perf_counter()
        try:
            res = funcs[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one part failing leaves the others
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(), "status": "error"}
            print(f"   failed: {res['error']}", flush=True)
        res["part_seconds"] = round(time.perf_counter() - t0, 2)
        results["parts"][name] = res
        atomic_json(json_path, results, default=str)  # what is done so far survives a later crash
    ctx_prior = getattr(ctx, "prior_source", None)
    results["prior"] = ctx_prior
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    results["qt_imported_by_headless_parts"] = any(m.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy") for m in sys.modules)
    results["busy_warning"] = busy_warning(results["machine"])
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_json(json_path, results, default=str)
    md_path.write_text(markdown(results))
    print()
    for line in summary_lines(results):
        print(line)
    if busy_warning(results["machine"]):
        print(busy_warning(results["machine"]))
    if a.quick:
        print("(--quick: tiny sizes for a smoke run; these figures are not the measurement)")
    print(f"\nwrote {json_path} and {md_path}")
    return 1 if any("error" in p for p in results["parts"].values()) else 0


def _child(kind: str, args_file: Path) -> int:
    p = json.loads(args_file.read_text())
    res = {"memory": child_memory, "gui": child_gui}[kind](p)
    atomic_json(Path(p["result"]), res, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
