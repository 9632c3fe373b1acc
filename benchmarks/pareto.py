"""Issue 17: sweeps against evaluations, at the final error each reaches, on the shipped models.

For each model and sampler, on one seed: the ParaDiGMS loop as published (tol 0.1 on the
noise std) and picard with plain Picard and with the secant update (tol 0.01 relative to
each state's RMS, picard's default test, and 0.1 and 0.001; the secant tests at a tenth
of each) across windows, and picard with no options (``window="auto"``,
``accelerate="auto"``). A run is *matched* when its final
error (worst sample, relative RMS against the sequential sample) is no larger than the
ParaDiGMS loop's at the same window. One thread; sweeps and evaluations do not depend on
timing, except for the automatic window's choice.

    python benchmarks/pareto.py [--out benchmarks/results/pareto]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from harness import seeded_start

from picard.cli import plots
from picard.cli.baselines import paradigms
from picard.cli.bench import bench_model
from picard.cli.runs import make_scheduler, sample_in_parallel, sample_sequentially

CASES = [  # model, sampler, steps, samples, windows
    ("moons", "ddpm", 1000, 16, [16, 64, 256, 1000]),
    ("gmm", "ddpm", 1000, 16, [16, 64, 256, 1000]),
    ("moons", "ddim", 200, 16, [16, 64, 200]),
    ("gmm", "ddim", 200, 16, [16, 64, 200]),
    ("moons", "ddim", 50, 16, [16, 50]),
    ("gmm", "ddim", 50, 16, [16, 50]),
    ("digits", "ddpm", 1000, 1, [16, 64, 256]),
]
PICARD = {  # name -> options
    "picard plain, tol 0.01": {"accelerate": None, "tol": 0.01},
    "picard secant, tol 0.1": {"accelerate": "secant", "tol": 0.1},
    "picard secant, tol 0.01": {"accelerate": "secant", "tol": 0.01},
    "picard secant, tol 0.001": {"accelerate": "secant", "tol": 0.001},
}


def _worst(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max())


def case(model: str, sampler: str, n: int, b: int, windows: list[int]) -> list[dict[str, Any]]:
    """Every run of one model and sampler."""
    den, base, shape = bench_model(model)
    sched = make_scheduler(sampler, base)

    def start() -> tuple[torch.Tensor, torch.Generator]:
        return seeded_start(sched, n, (b, *shape))

    rows = []

    def add(method: str, window: Any, final: torch.Tensor, sweeps: int, evals: int) -> None:
        rows.append(
            {
                "case": f"{model} {sampler.upper()}-{n}",
                "method": method,
                "window": window,
                "sweeps": sweeps,
                "evals_per_step": evals / n / b,
                "error": _worst(final, ref),
            }
        )

    with torch.no_grad():
        ref = sample_sequentially(sched, den, n, *start())
        for w in windows:
            x, gen = start()
            r = paradigms(sched, den, n, x, generator=gen, parallel=w, tolerance=0.1)
            add("ParaDiGMS loop, tol 0.1", w, r.final, r.sweeps, r.evaluations)
            for name, opts in PICARD.items():
                sol = sample_in_parallel(sched, den, n, *start(), window=w, **opts)
                add(name, w, sol.final, sol.stats.iterations, sol.stats.evaluations)
        sol = sample_in_parallel(sched, den, n, *start())
        add("picard, no options", f"auto ({sol.stats.window})", sol.final, sol.stats.iterations,
            sol.stats.evaluations)  # fmt: skip
    base_err = {r["window"]: r["error"] for r in rows if r["method"].startswith("ParaDiGMS")}
    base_sweeps = {r["window"]: r["sweeps"] for r in rows if r["method"].startswith("ParaDiGMS")}
    for r in rows:
        w = r["window"]
        r["matched"] = w in base_err and r["error"] <= base_err[w]
        r["sweeps_vs_paradigms"] = r["sweeps"] / base_sweeps[w] if w in base_sweeps else None
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table."""
    lines = [
        "| case | method | window | sweeps (vs ParaDiGMS) | evals/step | worst rel. error "
        "| error ≤ ParaDiGMS's |",
        "|---|---|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        ratio = "" if r["sweeps_vs_paradigms"] is None else f" ({r['sweeps_vs_paradigms']:.2f})"
        lines.append(
            f"| {r['case']} | {r['method']} | {r['window']} | {r['sweeps']}{ratio} "
            f"| {r['evals_per_step']:.2f} | {r['error']:.1e} | {'yes' if r['matched'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/pareto")
    parser.add_argument("--figure", default="docs/figures/pareto.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for spec in CASES:
        rows += case(*spec)
        print(table([r for r in rows if r["case"] == rows[-1]["case"]]), flush=True)
    text = (
        "**Sweeps against evaluations per step at the final error each reaches: one seed, "
        "one thread (`python benchmarks/pareto.py`)**\n\n" + table(rows)
    )
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    series = {}
    for method in ["ParaDiGMS loop, tol 0.1", *PICARD]:
        pts = [r for r in rows if r["case"] == "moons DDPM-1000" and r["method"] == method]
        series[method] = ([r["evals_per_step"] for r in pts], [r["sweeps"] for r in pts])
    plots.lines(series, "evaluations per step (windows 16, 64, 256, 1000)", "sweeps",
                Path(args.figure), logx=True, logy=True)  # fmt: skip


if __name__ == "__main__":
    main()
