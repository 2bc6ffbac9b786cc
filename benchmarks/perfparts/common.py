"""Shared by every measurement: targets, the machine, GPU sampling, the run's inputs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "performance.py"  # the runner (children start it again)
REPO = SCRIPT.parents[1]
PARTS = ("training", "tiling", "memory", "gui", "encoders")
ENCODERS = ("resnet18", "resnet50", "resnet101")

# The performance targets (docs/performance.md). "flat" is this script's reading: the largest slide's peak is at
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

    from napari_cinuseg.runtime import devices

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
            for d in (
                "napari-cinuseg",
                "torch",
                "torchvision",
                "numpy",
                "tifffile",
                "zarr",
                "imagecodecs",
                "napari",
                "PyQt6",
            )
        },
    }
    return info


def busy_warning(m: dict) -> str | None:
    """Other work on the machine skews every figure (and oversubscribed torch threads can run
    many times slower): said when the load average was above half the usable cores."""
    cores = m.get("cpu_cores_usable") or m.get("cpu_cores") or 1
    loads = [x for k in ("load_average_at_start", "load_average_at_end") for x in (m.get(k) or [])[:1]]
    if loads and max(loads) > 0.5 * cores:
        return (
            f"WARNING: the machine was busy (1-minute load average {max(loads):.1f} on {cores} cores); "
            "run again when it is idle before quoting these figures"
        )
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
        return {
            "mean_percent": round(statistics.fmean(self.samples), 1),
            "max_percent": max(self.samples),
            "samples": len(self.samples),
        }


def _sync(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------------------------
# a region of a slide, behind the interface ``segment`` accepts


def _band_class():
    """Defined lazily so that importing this script stays light (no torch import)."""
    from napari_cinuseg.io.slides import ArraySlide

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
            from napari_cinuseg.model.file import BUNDLED_MODEL

            a = self.args
            if a.prior:
                self._prior = load_model(a.prior)
                self.prior_source = str(a.prior)
            else:
                want = self.settings().architecture()
                bundled = load_model(BUNDLED_MODEL) if BUNDLED_MODEL.is_file() else None
                if bundled is not None and (
                    bundled.arch.encoder,
                    bundled.arch.decoder,
                    tuple(bundled.arch.decoder_channels),
                ) == (want.encoder, want.decoder, tuple(want.decoder_channels)):
                    self._prior, self.prior_source = bundled, f"bundled {BUNDLED_MODEL.name}"
                else:
                    self._prior = CiNuSegModel.new(["Epithelial", "Spindle-shaped"], want)
                    self.prior_source = f"new untrained {want.encoder} model (preset {a.preset})"
        return self._prior

    def prior_file(self) -> Path:
        """The prior as a file, for the subprocesses."""
        from napari_cinuseg import save_model
        from napari_cinuseg.model.file import BUNDLED_MODEL

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
