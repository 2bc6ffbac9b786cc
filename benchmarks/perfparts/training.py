"""1. training: a CiNuSeg step's time per iteration ÷ plain fine-tuning's."""

from __future__ import annotations

import statistics
import time

from .common import TARGET_TRAIN_RATIO, TRAIN_RATIO_FLOOR, Context, _status

# --------------------------------------------------------------------------------------------
# 1. training overhead


def time_step(prior, pairs, settings, method: str, warmup: int) -> dict:
    """Seconds per iteration of one incremental step, from the end of iteration ``warmup`` to
    the end of the last (Progress.seconds counts from the step's start)."""
    from napari_cinuseg import drain, train_step
    from napari_cinuseg.runtime.events import MemoryReduced, Progress

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
