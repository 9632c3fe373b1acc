"""Issue 17: ``window="auto"`` (no options) against fixed windows and the sequential loop.

The shipped digits UNet, DDPM-1000, 1 and 8 images; the 2-D moons model (16 samples)
against the ParaDiGMS loop at its fastest window. Default tolerance, one thread; every run
of a round is interleaved with the others and the medians of ``--repeats`` rounds are
compared. "auto, first solve" clears the stored sweep times before each run (what a fresh
process pays); "auto, stored" runs right after it with the times it stored.

    python benchmarks/auto_window.py [--repeats 3] [--out benchmarks/results/auto_window]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import seeded_start

import picard.core.window
from picard.cli.baselines import paradigms
from picard.cli.runs import make_scheduler, sample_in_parallel, sample_sequentially
from picard.models import load

STEPS = 1000


def _rounds(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    times: dict[str, list[float]] = {k: [] for k in runs}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            if name.startswith("auto, first"):
                picard.core.window._CURVES.clear()
            t0 = time.perf_counter()
            with torch.no_grad():
                last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), last[k]) for k, v in times.items()}


def _digits(images: int, repeats: int, windows: list[Any]) -> list[dict]:
    m = load("digits")
    sched = make_scheduler("ddpm", m.scheduler)
    shape = (images, *m.sample_shape)

    def start() -> tuple[torch.Tensor, torch.Generator]:
        return seeded_start(sched, STEPS, shape, seed=3)

    def par(window: Any) -> Callable[[], Any]:
        return lambda: sample_in_parallel(sched, m.denoiser, STEPS, *start(), window=window)

    runs: dict[str, Callable[[], Any]] = {
        "sequential loop": lambda: sample_sequentially(sched, m.denoiser, STEPS, *start())
    }
    runs |= {f"window {'all' if w is None else w}": par(w) for w in windows}
    runs |= {"auto, first solve": par("auto"), "auto, stored": par("auto")}
    out = _rounds(runs, repeats)
    ref = out["sequential loop"][1]
    base = out["sequential loop"][0]
    best = min(t for k, (t, _) in out.items() if k.startswith("window"))
    rows = []
    for name, (t, r) in out.items():
        final = r if isinstance(r, torch.Tensor) else r.final
        stats = None if isinstance(r, torch.Tensor) else r.stats
        rows.append(
            {
                "case": f"digits UNet, {images} image{'s' * (images > 1)}",
                "run": name,
                "seconds": t,
                "vs_sequential": base / t,
                "vs_best_fixed": best / t,
                "sweeps": STEPS if stats is None else stats.iterations,
                "evals_per_step": 1.0 if stats is None else stats.evaluations / STEPS / images,
                "window": 1 if stats is None else stats.window,
                "rel_err": float((final - ref).norm() / ref.norm()),
            }
        )
    return rows


def _paradigms(sched: Any, denoiser: Any, window: int, x: torch.Tensor, gen: Any) -> Any:
    return paradigms(sched, denoiser, STEPS, x, generator=gen, parallel=window)


def _moons(repeats: int, windows: list[int]) -> list[dict]:
    m = load("moons")
    sched = make_scheduler("ddpm", m.scheduler)
    shape = (16, *m.sample_shape)

    def start() -> tuple[torch.Tensor, torch.Generator]:
        return seeded_start(sched, STEPS, shape)

    ref = sample_sequentially(sched, m.denoiser, STEPS, *start())
    runs: dict[str, Callable[[], Any]] = {
        f"ParaDiGMS loop, window {w}": lambda w=w: _paradigms(sched, m.denoiser, w, *start())
        for w in windows
    }
    runs["picard, auto, first solve"] = lambda: sample_in_parallel(
        sched, m.denoiser, STEPS, *start()
    )
    runs["picard, auto, stored"] = lambda: sample_in_parallel(sched, m.denoiser, STEPS, *start())
    out = _rounds({k.replace("picard, ", ""): v for k, v in runs.items()}, repeats)
    best = min(t for k, (t, _) in out.items() if k.startswith("ParaDiGMS"))
    rows = []
    for name, (t, r) in out.items():
        final = r.final
        sweeps = r.sweeps if hasattr(r, "sweeps") else r.stats.iterations
        rows.append(
            {
                "case": "moons 2-D, 16 samples",
                "run": name if name.startswith("ParaDiGMS") else f"picard, {name}",
                "seconds": t,
                "vs_best_paradigms": best / t,
                "sweeps": sweeps,
                "window": getattr(getattr(r, "stats", None), "window", None),
                "rel_err": float((final - ref).norm() / ref.norm()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/auto_window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = _digits(1, args.repeats, [4, 16, 64, None])
    rows += _digits(8, args.repeats, [4, 16, 64])
    rows += _moons(args.repeats, [16, 32, 64, 128])
    lines = [
        f"**window='auto' against fixed windows: DDPM-{STEPS}, default tolerance, one "
        f"thread, medians of {args.repeats} interleaved rounds**",
        "",
        "| case | run | window | sweeps | evals/step | median s | vs sequential "
        "| vs best fixed | rel. error vs sequential |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "vs_sequential" not in r:
            continue
        lines.append(
            f"| {r['case']} | {r['run']} | {r['window']} | {r['sweeps']} "
            f"| {r['evals_per_step']:.1f} | {r['seconds']:.3f} | {r['vs_sequential']:.2f}x "
            f"| {r['vs_best_fixed']:.2f}x | {r['rel_err']:.1e} |"
        )
    lines += [
        "",
        "| case | run | window | sweeps | median s | vs the fastest ParaDiGMS loop "
        "| rel. error vs sequential |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "vs_best_paradigms" not in r:
            continue
        w = r["window"] if r["window"] is not None else r["run"].rsplit(" ", 1)[-1]
        lines.append(
            f"| {r['case']} | {r['run']} | {w} | {r['sweeps']} | {r['seconds']:.3f} "
            f"| {r['vs_best_paradigms']:.2f}x | {r['rel_err']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
