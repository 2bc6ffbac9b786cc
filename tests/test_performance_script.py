"""benchmarks/performance.py runs end to end on the real data: its --quick --no-gui smoke path."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "performance.py"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_run_reports_every_part(shared_data, tmp_path):
    out = tmp_path / "perf"
    # One torch thread: a smoke run must not crawl when other jobs hold the cores (two
    # oversubscribed threads can be many times slower than one).
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--no-gui",
        "--threads",
        "1",
        "--data",
        str(shared_data),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r = json.loads((out / "results.json").read_text())
    assert r["quick"] is True
    m = r["machine"]
    assert m["cpu"] and m["cpu_cores"] >= 1 and m["torch_threads"] == 1 and m["versions"]["torch"]
    assert set(r["parts"]) == {"training", "tiling", "memory", "gui", "encoders"}
    for name, part in r["parts"].items():
        assert "error" not in part, f"{name}: {part.get('error')}"
    assert r["qt_imported_by_headless_parts"] is False

    t = r["parts"]["training"]
    assert (
        _positive(t["ratio"])
        and _positive(t["cinuseg_seconds_per_iteration"])
        and _positive(t["finetune_seconds_per_iteration"])
    )
    assert t["ratio"] == t["cinuseg_seconds_per_iteration"] / t["finetune_seconds_per_iteration"]
    assert t["status"] in ("PASS", "MISS")

    g = r["parts"]["tiling"]
    assert (
        g["tiles"] > 0
        and _positive(g["ratio"])
        and _positive(g["segment_mp_per_s"])
        and _positive(g["bare_forward_mp_per_s"])
    )
    assert g["status"] in ("PASS", "MISS")

    mem = r["parts"]["memory"]
    assert [s["size"] for s in mem["sizes"]] == [512, 1024]
    for s in mem["sizes"]:
        assert _positive(s["peak_rss_mb"]) and s["peak_rss_mb"] >= s["rss_after_model_load_mb"] > 0
        assert s["class_map_shape"] == [s["size"], s["size"]]  # whole slides in a smoke run
    assert mem["status"] in ("PASS", "MISS")

    assert "skipped" in r["parts"]["gui"] and "--no-gui" in r["parts"]["gui"]["skipped"]

    (enc,) = r["parts"]["encoders"]["encoders"]
    assert enc["encoder"] == "resnet18"
    assert (
        _positive(enc["train_crops_per_s"])
        and _positive(enc["infer_image_mp_per_s"])
        and _positive(enc["infer_tile_mp_per_s"])
    )

    md = (out / "performance.md").read_text()
    for words in ("Training overhead", "Tiling overhead", "Peak RSS", "Event-loop delay", "resnet18", m["cpu"]):
        assert words in md
    assert "ratio" in proc.stdout and ("PASS" in proc.stdout or "MISS" in proc.stdout)
