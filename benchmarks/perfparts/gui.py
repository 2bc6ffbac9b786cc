"""4. gui: the Qt event loop's worst delay while the napari panel trains (its live preview on,
then the step's review on the painted region) and exports. ``CINUSEG_GUI_PREVIEW=0`` turns the
preview off, to compare the two under the same conditions."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .common import TARGET_LATENESS_MS, Context, _status, run_child

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
            "export_side": 2048 if a.quick else 8192,
            "preview": os.environ.get("CINUSEG_GUI_PREVIEW", "1") != "0",
        },
        prefix=prefix,
        timeout=3600,
    )
    res["display"] = "xvfb-run -a (virtual X server)" if prefix else f"existing display {display}"
    late = max(res["training"]["max_ms"], res.get("export", {}).get("max_ms", 0.0))
    res["target"] = f"max < {TARGET_LATENESS_MS:.0f} ms, while training and while exporting"
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
    from napari_cinuseg.session.storage import Storage
    from napari_cinuseg.ui.panel import CiNuSegWidget

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
    w.class_section.name.setText("Neutrophil")
    layer = w.add_annotation_layer()
    if layer is None:
        raise RuntimeError(f"no annotation layer: {w.status.text()}")
    # as a user paints: enough nuclei of the new class that the panel gives no "paint more" advice
    # (a notification, whose popup costs the viewer's thread on its own), and some background
    from napari_cinuseg.annotations import MIN_EXAMPLES

    yy, xx = np.mgrid[:320, :320]
    for i in range(MIN_EXAMPLES):
        cy, cx = 40 + 45 * (i % 3), 40 + 45 * (i // 3)
        layer.data[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = 1  # a nucleus of about 8 px radius
    layer.data[200:230, 150:170] = 2  # and background
    layer.refresh()
    w.train_section.iterations.setValue(int(p["iterations"]))
    w.train_section.crop.setValue(int(p["crop"]))
    w.train_section.preview.setChecked(
        bool(p.get("preview", True))
    )  # the live preview of the painted region, on by default

    from napari_cinuseg.runtime.events import Preview
    from napari_cinuseg.session.preview import PREVIEW_EVERY_S

    previews = {"n": 0, "every_s": PREVIEW_EVERY_S}
    app = QApplication.instance()
    interval = float(p["interval_ms"])
    phase = {"name": "settle"}  # the window's first paints are not counted
    ticks: dict[str, list[float]] = {"idle": [], "training": [], "export": []}
    out: dict = {"timer_interval_ms": interval}

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(int(interval))
    stalls: list[dict] = []  # where the other threads were when a tick came 100 ms late or more

    def tick():
        if phase["name"] not in ticks:
            return
        now, seen = time.perf_counter(), ticks[phase["name"]]
        if seen and (now - seen[-1]) * 1000 - interval >= TARGET_LATENESS_MS:
            import threading
            import traceback

            names = {t.ident: t.name for t in threading.enumerate()}
            main = threading.main_thread().ident
            stacks = {
                names.get(ident, str(ident)): " <- ".join(
                    f"{f.name} ({Path(f.filename).name}:{f.lineno})"
                    for f in reversed(traceback.extract_stack(frame)[-4:])
                )
                for ident, frame in sys._current_frames().items()
                if ident != main
            }
            stalls.append(
                {
                    "phase": phase["name"],
                    "at_s": now - seen[0],
                    "late_ms": (now - seen[-1]) * 1000 - interval,
                    "threads": stacks,
                }
            )
        seen.append(now)

    timer.timeout.connect(tick)

    def finished():
        out["training_seconds"] = time.perf_counter() - out.pop("_t0")
        out["keep_question_shown"] = w.train_section.review.isVisibleTo(w)
        phase["name"] = "between"  # the harness builds its export test layer: counted in neither phase
        out.update(  # read now: quitting the application deletes the widgets
            preset=w.train_section.preset.currentText(),
            device_label=w.train_section.device.text(),
            status_text=w.status.text(),
            trained_classes=list(w.candidate.model.class_names) if w.candidate is not None else None,
            preview=w.train_section.preview.isChecked(),
            previews=previews["n"],
            preview_every_s=previews["every_s"],
        )
        QTimer.singleShot(100, export)

    def export():
        """Export a large class map through the panel (a worker with progress), timed like training."""
        from napari_cinuseg.plugin.layer_metadata import RESULT_KEY, result_metadata

        side = int(p["export_side"])
        cm = np.zeros((side, side), np.uint8)
        rng = np.random.default_rng(0)
        for y, x in rng.integers(0, side - 16, (side * side // 4000, 2)):
            cm[y : y + 10, x : x + 12] = 1 + (x % 2)
        m = w.model
        layer = viewer.add_labels(
            cm,
            name="export test",
            metadata={RESULT_KEY: result_metadata(m.class_names, [c.colour for c in m.classes], m.id)},
        )
        phase["name"] = "export"
        ticks["export"].append(time.perf_counter())
        t0 = time.perf_counter()
        worker = w.export_to(work / "export.masks.tif", layer)
        out["export_call_ms"] = (time.perf_counter() - t0) * 1000
        out["export_side"] = side

        def done():
            out["export_seconds"] = time.perf_counter() - t0
            phase["name"] = "done"
            QTimer.singleShot(100, app.quit)

        worker.finished.connect(done)

    def start():
        phase["name"] = "training"
        ticks["training"].append(time.perf_counter())
        t0 = time.perf_counter()
        out["_t0"] = t0
        worker = w.start_training()
        out["start_training_call_ms"] = (time.perf_counter() - t0) * 1000
        out["start_status"] = w.status.text()  # says "Note: …" where the panel advised painting more
        if worker is None:
            out["error"] = f"training did not start: {w.status.text()}"
            QTimer.singleShot(0, app.quit)
            return
        worker.yielded.connect(lambda ev: previews.update(n=previews["n"] + isinstance(ev, Preview)))
        worker.finished.connect(finished)

    def give_up():
        if phase["name"] != "done":
            out["error"] = "training did not finish within the time limit"
            app.quit()

    # the garbage collector's pauses per phase (a full collection of a napari process holds the GIL)
    import gc

    gc_pauses: dict[str, list] = {k: [] for k in ticks}
    gc_start = {}

    def on_gc(what, info):
        if what == "start":
            gc_start["t"] = time.perf_counter()
        elif phase["name"] in gc_pauses and "t" in gc_start:
            gc_pauses[phase["name"]].append((info["generation"], (time.perf_counter() - gc_start["t"]) * 1000))

    gc.callbacks.append(on_gc)
    timer.start()
    settle_ms = int(float(p["settle_s"]) * 1000)
    QTimer.singleShot(settle_ms, lambda: phase.update(name="idle"))
    QTimer.singleShot(settle_ms + int(float(p["idle_s"]) * 1000), start)
    QTimer.singleShot(3_000_000, give_up)
    app.exec()
    timer.stop()
    gc.callbacks.remove(on_gc)
    if "error" in out:
        raise RuntimeError(out["error"])
    out.update(
        idle=_lateness(ticks["idle"], interval),
        training=_lateness(ticks["training"], interval),
        export=_lateness(ticks["export"], interval),
        iterations=int(p["iterations"]),
        crop=int(p["crop"]),
        gc_pauses={
            k: {
                "collections": len(v),
                "full": sum(g == 2 for g, _ in v),
                "max_ms": max((ms for _, ms in v), default=0.0),
            }
            for k, v in gc_pauses.items()
        },
        gc_tracked_objects=len(gc.get_objects()),
        stalls=stalls,
    )
    try:
        viewer.close()
    except RuntimeError:  # already closed with the application
        pass
    return out
