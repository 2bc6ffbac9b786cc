"""The report: Markdown tables and the summary lines."""

from __future__ import annotations

from .common import (
    FLAT_FACTOR,
    PARTS,
    TARGET_LATENESS_MS,
    TARGET_PEAK_MB,
    TARGET_TILING_RATIO,
    TARGET_TRAIN_RATIO,
    TRAIN_RATIO_FLOOR,
    busy_warning,
    machine_line,
)

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
        + (
            f" ({p['encoder']}, batch {p['batch_size']}, crop {p['crop_size']}) | **{p['ratio']:.2f}** "
            f"({p['cinuseg_seconds_per_iteration']:.3f} / {p['finetune_seconds_per_iteration']:.3f} s) "
            f"| ≤ {TARGET_TRAIN_RATIO} "
            f"(floor ≈ {TRAIN_RATIO_FLOOR}) | {p['status']} |"
            if not e
            else f" | {e} | ≤ {TARGET_TRAIN_RATIO} | – |"
        )
    )
    p, e = parts.get("tiling", {}), err("tiling")
    lines.append(
        "| Tiling overhead: MP/s segment ÷ bare forward"
        + (
            f" ({p['tiles']} tiles of {p['tile']} px, overlap {p['overlap']}) | **{p['ratio']:.2f}** "
            f"({p['segment_mp_per_s']:.3f} / {p['bare_forward_mp_per_s']:.3f} MP/s) "
            f"| ≥ {TARGET_TILING_RATIO} | {p['status']} |"
            if not e
            else f" | {e} | ≥ {TARGET_TILING_RATIO} | – |"
        )
    )
    p, e = parts.get("memory", {}), err("memory")
    if not e:
        peaks = " / ".join(f"{s['peak_rss_mb'] / 1024:.2f}" for s in p["sizes"])
        names = " / ".join(f"{s['size'] // 1024}k²" if s["size"] >= 1024 else f"{s['size']}²" for s in p["sizes"])
        rows = f", first {p['rows']} rows" if p["rows"] != "all" else ""
        lines.append(
            f"| Peak RSS segmenting {names}{rows} (GiB) | **{peaks}** (×{p['flat_ratio']:.2f}) "
            f"| flat (≤ ×{FLAT_FACTOR}), "
            f"< {TARGET_PEAK_MB / 1024:.0f} GiB | {p['status']} |"
        )
    else:
        lines.append(f"| Peak RSS segmenting synthetic slides | {e} | flat, < 2 GiB | – |")
    p, e = parts.get("gui", {}), err("gui")
    lines.append(
        "| Event-loop delay while training in napari, max / p99"
        + (
            f" ({p['iterations']} iterations, crop {p['crop']}) | **{p['training']['max_ms']:.0f}** / "
            f"{p['training']['p99_ms']:.0f} ms (idle {p['idle']['max_ms']:.0f} / {p['idle']['p99_ms']:.0f}) | "
            f"< {TARGET_LATENESS_MS:.0f} ms | {p['status']} |"
            if not e
            else f" | {e} | < {TARGET_LATENESS_MS:.0f} ms | – |"
        )
    )
    if not e and "export" in p:
        lines.append(
            f"| Event-loop delay while the panel exports a {p.get('export_side')}² class map, max / p99 | "
            f"**{p['export']['max_ms']:.0f}** / {p['export']['p99_ms']:.0f} ms "
            f"({p.get('export_seconds', float('nan')):.1f} s) | "
            f"< {TARGET_LATENESS_MS:.0f} ms | {p['status']} |"
        )

    p, e = parts.get("memory", {}), err("memory")
    if not e:
        lines += [
            "",
            "| Slide | Segmented | Peak RSS (MiB) | After imports + model load (MiB) | Added by segmenting (MiB) "
            "| Time (s) | MP/s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for s in p["sizes"]:
            lines.append(
                f"| {s['size']}² | {s['segmented']} | {s['peak_rss_mb']:.0f} | {s['rss_after_model_load_mb']:.0f} | "
                f"{s['segmentation_rss_mb']:.0f} | {s['seconds']:.1f} | {s['image_mp_per_s']:.3f} |"
            )
    p, e = parts.get("encoders", {}), err("encoders")
    if not e:
        lines += [
            "",
            "| Encoder | Training crops/s (batch × crop) | Inference MP/s (image) | Inference MP/s (tiles) "
            "| GPU util. train / infer |",
            "|---|---:|---:|---:|---:|",
        ]
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
            out.append(
                f"{name:9s} {p['status']}  ratio {p['ratio']:.3f} (target {p['target']}): "
                f"cinuseg {p['cinuseg_seconds_per_iteration']:.4f} s/it, "
                f"finetune {p['finetune_seconds_per_iteration']:.4f} s/it"
            )
        elif name == "tiling":
            out.append(
                f"{name:9s} {p['status']}  ratio {p['ratio']:.3f} (target {p['target']}): "
                f"segment {p['segment_mp_per_s']:.3f} MP/s, "
                f"bare forward {p['bare_forward_mp_per_s']:.3f} MP/s over {p['tiles']} tiles"
            )
        elif name == "memory":
            peaks = ", ".join(f"{s['size']}²: {s['peak_rss_mb']:.0f} MiB" for s in p["sizes"])
            out.append(
                f"{name:9s} {p['status']}  peak RSS {peaks} (×{p['flat_ratio']:.2f}; "
                f"under 2 GB {p['status_under_2gb']}, "
                f"flat {p['status_flat']}); {p['note']}"
            )
        elif name == "gui":
            out.append(
                f"{name:9s} {p['status']}  event-loop delay during training max {p['training']['max_ms']:.1f} ms, "
                f"p99 {p['training']['p99_ms']:.1f} ms, "
                f"during export max {p.get('export', {}).get('max_ms', float('nan')):.1f} ms "
                f"(idle max {p['idle']['max_ms']:.1f} ms); {p['display']}"
            )
        elif name == "encoders":
            for r in p["encoders"]:
                if "error" in r:
                    out.append(f"{name:9s} {r['encoder']}: ERROR {r['error']}")
                else:
                    out.append(
                        f"{name:9s} {r['encoder']}: {r['train_crops_per_s']:.2f} crops/s training, "
                        f"{r['infer_image_mp_per_s']:.3f} MP/s inference"
                    )
    return out
