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
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from napari_cinuseg.io.atomic import atomic_json
from perfparts.common import ENCODERS, PARTS, Context, _default_data, busy_warning, machine_info, machine_line
from perfparts.encoders import part_encoders
from perfparts.gui import child_gui, part_gui
from perfparts.memory import child_memory, part_memory
from perfparts.report import markdown, summary_lines
from perfparts.tiling import part_tiling
from perfparts.training import part_training

# --------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="performance.py",
        description="Performance of napari-cinuseg on this machine (see docs/performance-howto.md).",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the shared data folder (default $CINUSEG_DATA, else ../shared/data beside the repository)",
    )
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--out", type=Path, default=Path("runs") / "performance", help="folder for results.json and performance.md"
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (numbers are not meaningful)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument(
        "--sizes", default=None, help="synthetic slide sizes in px, e.g. 4096,16384,32768 (default; --quick 512,1024)"
    )
    ap.add_argument(
        "--rows",
        type=int,
        default=None,
        help="segment only the first N pixel rows of each full-width synthetic slide; 0 = whole slides "
        "(default: 2048 on the CPU, whole on CUDA; --quick: whole)",
    )
    ap.add_argument("--encoders", default=None, help=f"default {','.join(ENCODERS)} (--quick: resnet18)")
    ap.add_argument(
        "--no-gui", action="store_true", help="skip the napari event-loop measurement (it needs a display or xvfb-run)"
    )
    ap.add_argument("--iterations", type=int, default=None, help="training iterations per run (default 30; --quick 6)")
    ap.add_argument("--warmup", type=int, default=None, help="iterations left out of the timing (default 3)")
    ap.add_argument(
        "--repeats", type=int, default=1, help="runs of parts 1 and 2, alternating order; the median is reported"
    )
    ap.add_argument("--preset", default="cpu", help="training preset (cpu, paper)")
    ap.add_argument(
        "--prior",
        type=Path,
        default=None,
        help="prior model file (default: the bundled base model if the preset's network)",
    )
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's; --quick 4)")
    ap.add_argument("--crop-size", type=int, default=None, help="training crop (default: the preset's; --quick 64)")
    ap.add_argument(
        "--slide",
        type=Path,
        default=None,
        help="real slide for parts 2, 4, 5 (default DATA/slides/CMU-1-Small-Region.svs)",
    )
    ap.add_argument(
        "--region-rows",
        type=int,
        default=None,
        help="parts 2 and 5 use only these rows of --slide (default all; --quick 480)",
    )
    ap.add_argument("--region-cols", type=int, default=None, help="... and these columns (default all; --quick 960)")
    ap.add_argument("--tile", type=int, default=None, help="segmentation tile (default 512; --quick 256)")
    ap.add_argument("--overlap", type=int, default=None, help="tile overlap (default 64; --quick 32)")
    ap.add_argument("--infer-batch", type=int, default=4, help="tiles per forward in segmentation")
    ap.add_argument("--gui-crop", type=int, default=None, help="crop size set in the panel (default 128; --quick 64)")
    ap.add_argument("--timer-ms", type=float, default=10.0, help="QTimer interval of the lateness probe")
    ap.add_argument(
        "--idle-seconds", type=float, default=None, help="idle baseline before training starts (default 3; --quick 1)"
    )
    ap.add_argument(
        "--settle-seconds",
        type=float,
        default=None,
        help="wait after the window opens, not measured (default 2; --quick 0.5)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument(
        "--slides-dir",
        type=Path,
        default=None,
        help="where synthetic slides are written and reused (default OUT/slides)",
    )
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

    from napari_cinuseg.runtime import devices

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
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
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
    funcs = {
        "training": part_training,
        "tiling": part_tiling,
        "memory": part_memory,
        "gui": part_gui,
        "encoders": part_encoders,
    }
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
    results["machine"]["load_average_at_end"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    results["qt_imported_by_headless_parts"] = any(
        m.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy") for m in sys.modules
    )
    results["busy_warning"] = busy_warning(results["machine"])
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
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
