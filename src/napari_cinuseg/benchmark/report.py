"""What a benchmark's results say (``results.json`` of run.py): each method's Old /
New / Mean per protocol, the paper's Table 1 layout with CiNuSeg's ratio to offline beside the
paper's, the share of old-class pixels kept above τ, and the per-step curves (Fig. 5 layout).
Reads only the results dictionary, so it also renders a snapshot of a run (scripts/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..datasets.protocols import Protocol


def summarize(protocol: Protocol, dice: dict[str, float]) -> dict[str, float]:
    """Old = mean over step 0's classes, New = mean over the classes added later, Mean = all."""

    def mean(names):
        vals = [dice[n] for n in names if n in dice and dice[n] == dice[n]]
        return float(np.mean(vals)) if vals else float("nan")

    return {"old": mean(protocol.base_classes), "new": mean(protocol.added_classes), "mean": mean(protocol.all_classes)}


def scored_classes(protocol_summary: dict) -> tuple[list[str], list[str]]:
    """(classes scored, classes with no test pixels) of one protocol's summary: a class without
    test pixels has Dice NaN for every method (analysis.metrics), so it is the same for all."""
    scored, absent = [], []
    for s in protocol_summary.values():
        for name, value in (s.get("per_class") or {}).items():
            target = scored if value == value else absent
            if name not in scored and name not in absent:
                target.append(name)
    return scored, absent


def seen_mean(dice: dict[str, float]) -> float:
    """One point of the per-step curve (Fig. 5): mean Dice over the classes the model knows at that
    step (classes without test pixels, NaN, left out)."""
    return float(np.mean([v for v in dice.values() if v == v]))


#: how evaluations are scored; a cached evaluation scored otherwise is computed again
SCORING = "dice, NaN for a class without test pixels"


def rescored(results: dict) -> dict:
    """A results dictionary scored as the benchmark scores now: a class without test pixels has
    Dice NaN for every method (``analysis.metrics``). Under the earlier rule such a class was 0 for
    a method that predicted some of it and NaN for one that did not, so a NaN anywhere in one
    protocol's evaluations marks a class without test pixels. Its Dice becomes NaN in every
    evaluation of that protocol, and the summaries and per-step curves are computed again; the
    other classes' figures are unchanged (the test set and models are the same)."""
    out = json.loads(json.dumps(results))  # a deep copy, NaN and all
    for protocol, per_method in out.get("summary", {}).items():
        evals = {k: v for k, v in out.get("evaluations", {}).items() if k.startswith(protocol + "/")}
        absent = {c for v in evals.values() for c, d in v["dice"].items() if d != d}
        for v in evals.values():
            v["dice"] = {c: (float("nan") if c in absent else d) for c, d in v["dice"].items()}
        steps = Protocol(protocol, tuple(tuple(x) for x in out["config"]["protocols"][protocol]))
        last = max(int(k.rsplit("step", 1)[1]) for k in evals)
        for method in per_method:
            key = f"{protocol}/{method}/step{0 if method == 'offline' else last}"
            if key not in evals:
                continue
            dice = evals[key]["dice"]
            per_method[method] = {**summarize(steps, dice), "per_class": dice}
            if method == "offline":
                curve = [per_method[method]["mean"]] * len(steps.steps)
            else:
                keys = [f"{protocol}/base/step0"] + [f"{protocol}/{method}/step{t}" for t in range(1, last + 1)]
                curve = [seen_mean(evals[k]["dice"]) for k in keys if k in evals]
            out.setdefault("curves", {}).setdefault(protocol, {})[method] = curve
    out.setdefault("config", {})["scoring"] = SCORING
    return out


def write_table(results: dict, path: Path) -> None:
    """Markdown laid out like the paper's Table 1: Old / New / Mean per protocol, offline last."""
    summary = results.get("summary", {})
    protocols = list(summary)
    methods: list[str] = []
    for p in protocols:
        for m in summary[p]:
            if m not in methods:
                methods.append(m)
    first_seen = {m: i for i, m in enumerate(methods)}
    methods.sort(key=lambda m: (m == "offline", m == "cinuseg", first_seen[m]))
    head = "| Method | " + " | ".join(f"{p} Old | {p} New | {p} Mean" for p in protocols) + " |"
    rule = "|---|" + "---:|" * (3 * len(protocols))
    rows = [head, rule]

    def fmt(x):
        return "–" if x is None or x != x else f"{x:.2f}"

    for m in methods:
        cells = []
        for p in protocols:
            s = summary[p].get(m)
            cells += [fmt(s["old"]), fmt(s["new"]), fmt(s["mean"])] if s else ["–"] * 3
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    rows += _offline_ratios(results)
    rows += _confident_rows(results)
    cfg = results.get("config", {})
    mach = results.get("machine", {})
    rows += [
        "",
        f"Dice (%) on {cfg.get('test', '')} of {cfg.get('dataset', '')}, {cfg.get('test_images', '?')} images; "
        f"seed {cfg.get('settings', {}).get('seed')}, encoder {cfg.get('settings', {}).get('encoder')}, "
        f"{mach.get('device', '')}.",
    ]
    for p in protocols:
        scored, absent = scored_classes(summary[p])
        rows.append(
            f"{p}: scored {', '.join(scored) or 'none'}"
            + (f"; not scored (no test pixels) {', '.join(absent)}" if absent else "")
            + "."
        )
    rows += _split_rows(cfg.get("split") or {})
    if cfg.get("test_image_names"):
        rows.append("Test images: " + ", ".join(cfg["test_image_names"]) + ".")
    path.write_text("\n".join(rows) + "\n")


def _split_rows(split: dict) -> list[str]:
    """The split's name and the pixels of each class in the part scored (split.BenchmarkSplit.record)."""
    if not split:
        return []
    scored = {"val": "val", "tune": "tune"}.get(split.get("name"), "test")
    pixels = (split.get("class_pixels") or {}).get(scored) or {}
    counts = ", ".join(f"{c} {n:,}" for c, n in pixels.items())
    return [f"Split: {split.get('name')}" + (f"; pixels of each class scored: {counts}." if counts else ".")]


# The paper's Mean Dice of CiNuSeg and offline (Tables 1-2; ../shared/method/cinuseg-equations.md)
PAPER_MEANS = {
    ("monusac", "1-1"): {"cinuseg": 70.92, "offline": 74.61},
    ("consep", "1-1"): {"cinuseg": 69.15, "offline": 71.23},
    ("consep", "2-1"): {"cinuseg": 70.77, "offline": 71.23},
}


def offline_ratio(summary: dict) -> float | None:
    """CiNuSeg's Mean over offline's in one protocol's summary (None where either is missing)."""
    c, o = summary.get("cinuseg", {}).get("mean"), summary.get("offline", {}).get("mean")
    if c is None or o is None or c != c or o != o or o <= 0:
        return None
    return c / o


def _offline_ratios(results: dict) -> list[str]:
    """One line per protocol: CiNuSeg's Mean over offline's, beside the paper's."""
    dataset = results.get("config", {}).get("dataset", "")
    rows = []
    for protocol, summary in results.get("summary", {}).items():
        ratio = offline_ratio(summary)
        if ratio is None:
            continue
        paper = PAPER_MEANS.get((dataset, protocol))
        said = f" (the paper's: {paper['cinuseg'] / paper['offline']:.3f})" if paper else ""
        rows.append(f"- {protocol}: CiNuSeg's Mean / offline's = {ratio:.3f}{said}")
    return ["", "CiNuSeg against offline (joint) training:", ""] + rows if rows else []


def _confident_rows(results: dict) -> list[str]:
    """Per method and step, the share of the test set's pixels of each
    step-0 class that the model scores above τ (what the next step's eq. 1 keeps as that class)."""
    evals = results.get("evaluations", {})
    per: dict[tuple[str, str], dict[int, dict]] = {}
    for key, ev in evals.items():
        if "confident" not in ev:
            continue
        protocol, method, step = key.split("/")
        per.setdefault((protocol, method), {})[int(step.removeprefix("step"))] = ev["confident"]
    base = {p: per.get((p, "base"), {}).get(0, {}) for p, _ in per}
    if not any(base.values()):
        return []
    rows = ["", "Share of the test pixels of each step-0 class scored above τ, after each step (base = step 0):", ""]
    for (protocol, method), steps in sorted(per.items()):
        if method == "base":
            continue
        old = list(base.get(protocol, {}))
        cells = [f"{protocol} {method}"]
        for c in old:
            seq = [base[protocol].get(c)] + [steps[t].get(c) for t in sorted(steps)]
            cells.append(f"{c}: " + " → ".join("–" if v is None else f"{v:.2f}" for v in seq))
        rows.append("- " + "; ".join(cells))
    return rows


def write_curves(results: dict, out: Path) -> None:
    """The per-step curve (paper's Fig. 5): mean Dice over the classes seen so far."""
    import matplotlib  # noqa: PLC0415 - matplotlib (+680 ms) loads only when a figure is drawn, and its Agg backend is
    # chosen only then: importing the report leaves a caller's backend (napari's) alone

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - see matplotlib above

    for protocol, curves in results.get("curves", {}).items():
        # one colour per method, however many (the default cycle repeats after 10), the legend
        # beside the axes so that it hides no line
        fig, ax = plt.subplots(figsize=(6.5, 3.5), dpi=120)
        colours = plt.get_cmap("tab20").colors
        for i, (method, ys) in enumerate(curves.items()):
            style = "--" if method == "offline" else "-o"
            width = 2.5 if method == "cinuseg" else 1.2
            colour = "black" if method == "cinuseg" else colours[i % len(colours)]
            ax.plot(range(len(ys)), ys, style, label=method, color=colour, lw=width, ms=4)
        ax.set_xlabel("step")
        ax.set_ylabel("mean Dice over seen classes (%)")
        ax.set_title(f"{results.get('config', {}).get('dataset', '')} {protocol}")
        ax.set_xticks(range(max(len(v) for v in curves.values())))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        fig.savefig(out / f"curve-{protocol}.png")
        plt.close(fig)


def _model_title(key: str) -> str:
    """``models/seed0/2-1/base.cinuseg.pt`` → ``2-1 base, seed 0``; an offline model's file →
    ``offline, seed 0``."""
    parts = key.removesuffix(".cinuseg.pt").split("/")[1:]
    seed = parts[0].removeprefix("seed") if parts and parts[0].startswith("seed") else "?"
    what = "offline" if parts[-1].startswith("offline") else " ".join(parts[1:])
    return f"{what}, seed {seed}"


def write_training_curves(results: dict, out: Path) -> None:
    """Dice on the test images against iterations of each base and offline model trained with a
    curve (``training-curve.png``): one panel per model, its classes and their mean."""
    curves = {k: v for k, v in results.get("training_curves", {}).items() if v}
    if not curves:
        return
    import matplotlib  # noqa: PLC0415 - matplotlib (+680 ms) loads only when a figure is drawn, and its Agg backend is
    # chosen only then: importing the report leaves a caller's backend (napari's) alone

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - see matplotlib above

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), dpi=120, squeeze=False)
    for ax, (key, points) in zip(axes[0], curves.items()):
        its = [p["iteration"] for p in points]
        for name in points[-1]["dice"]:
            ax.plot(its, [p["dice"].get(name, float("nan")) for p in points], "-", lw=1, label=name)
        ax.plot(its, [p["mean"] for p in points], "k-o", lw=2, ms=3, label="mean")
        ax.set_title(_model_title(key), fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("Dice on the test images (%)")
    fig.suptitle(
        f"{results.get('config', {}).get('dataset', '')}: base and offline models while they train", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(out / "training-curve.png")
    plt.close(fig)


#: what runs of one protocol at several seeds must share: all but the seed
_SAME_BUT_SEED = ("dataset", "protocols", "test", "test_image_names", "base_iterations", "scoring")


def across_seeds(runs: list[dict]) -> dict:
    """Several results dictionaries of one benchmark that differ only in ``--seed``, as one:
    per protocol and method, the mean and sample standard deviation over the seeds of Old, New,
    Mean, each class and CiNuSeg's ratio to offline, with the seeds each figure stands on (a
    method missing at a seed is averaged over the seeds it has, and says so).

    Refuses runs that differ in anything but the seed (data, split, settings), or share a seed."""
    if not runs:
        raise ValueError("give at least one results.json")

    def _settings(run):
        return {k: v for k, v in run.get("config", {}).get("settings", {}).items() if k != "seed"}

    first = runs[0].get("config", {})
    seeds = [r.get("config", {}).get("settings", {}).get("seed") for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two runs have the same seed ({seeds}): give each seed's run once")
    for run, seed in zip(runs[1:], seeds[1:]):
        cfg = run.get("config", {})
        for key in _SAME_BUT_SEED:
            if cfg.get(key) != first.get(key):
                raise ValueError(f"the run of seed {seed} differs from seed {seeds[0]}'s in {key!r}: not one benchmark")
        if _settings(run) != _settings(runs[0]):
            raise ValueError(f"the run of seed {seed} was trained with other settings than seed {seeds[0]}'s")

    def _stats(values: list[float]) -> dict:
        vals = [v for v in values if v is not None and v == v]
        if not vals:
            return {"mean": float("nan"), "sd": float("nan"), "n": 0}
        sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        return {"mean": float(np.mean(vals)), "sd": sd, "n": len(vals)}

    out: dict = {
        "seeds": seeds,
        "config": {k: first.get(k) for k in (*_SAME_BUT_SEED, "split", "methods")},
        "summary": {},
    }
    protocols = [p for p in runs[0].get("summary", {})]
    for protocol in protocols:
        methods: list[str] = []
        for run in runs:
            methods += [m for m in run.get("summary", {}).get(protocol, {}) if m not in methods]
        order = [c for step in (first.get("protocols") or {}).get(protocol, []) for c in step]
        per_method = {}
        for m in methods:
            have = [
                (s, r["summary"][protocol][m])
                for s, r in zip(seeds, runs)
                if m in r.get("summary", {}).get(protocol, {})
            ]
            classes = sorted(
                have[0][1].get("per_class", {}), key=lambda c: order.index(c) if c in order else len(order)
            )
            per_method[m] = {
                "seeds": [s for s, _ in have],
                **{k: _stats([x[k] for _, x in have]) for k in ("old", "new", "mean")},
                "per_class": {c: _stats([x.get("per_class", {}).get(c) for _, x in have]) for c in classes},
            }
        if "cinuseg" in per_method:
            ratios = [offline_ratio(r.get("summary", {}).get(protocol, {})) for r in runs]
            per_method["cinuseg"]["offline_ratio"] = _stats(ratios)
        out["summary"][protocol] = per_method
    return out


def write_seed_table(seeded: dict, path: Path) -> None:
    """Markdown of :func:`across_seeds`: per protocol, each method's Old / New / Mean and classes as
    mean ± sd over the seeds, best Mean first, offline last; CiNuSeg's ratio to offline beside the
    paper's."""

    def fmt(s, digits=2):
        if s is None or s["n"] == 0:
            return "–"
        return f"{s['mean']:.{digits}f}" + (f" ± {s['sd']:.{digits}f}" if s["n"] > 1 else "")

    def best_first(m):
        mean = per_method[m]["mean"]
        return (m == "offline", -mean["mean"] if mean["n"] else float("inf"))

    seeds = seeded["seeds"]
    dataset = seeded.get("config", {}).get("dataset", "")
    scored = seeded.get("config", {}).get("test")
    rows = [f"Scored on the {scored}.", ""] if scored else []
    for protocol, per_method in seeded["summary"].items():
        classes = []
        for s in per_method.values():
            classes += [c for c in s["per_class"] if c not in classes]
        order = sorted(per_method, key=best_first)
        rows += [f"{protocol}, seeds {', '.join(map(str, seeds))} (mean ± sd):", ""]
        rows.append("| Method | Old | New | Mean | " + " | ".join(classes) + " | seeds |")
        rows.append("|---|" + "---:|" * (3 + len(classes)) + "---|")
        for m in order:
            s = per_method[m]
            cells = [fmt(s["old"]), fmt(s["new"]), fmt(s["mean"])] + [fmt(s["per_class"].get(c)) for c in classes]
            rows.append(f"| {m} | " + " | ".join(cells) + f" | {', '.join(map(str, s['seeds']))} |")
        ratio = (per_method.get("cinuseg") or {}).get("offline_ratio")
        if ratio and ratio["n"]:
            paper = PAPER_MEANS.get((dataset, protocol))
            said = f" (the paper's: {paper['cinuseg'] / paper['offline']:.3f})" if paper else ""
            rows += ["", f"CiNuSeg's Mean / offline's: {fmt(ratio, 3)}{said}"]
        rows.append("")
    path.write_text("\n".join(rows))
