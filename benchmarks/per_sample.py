"""Issue 5, item 3: per-sample windows against the shared window, in one run.

For each model and sampler: picard's default (one window for the batch) and
``per_sample=True``, each also with a row budget ``max_rows = window × batch`` instead of
a fixed window (per-sample windows then grow as samples finish).
Sweeps, evaluations per step and sample, the final sample's error against the sequential
sample (RMS per sample, worst sample), and wall-clock: runs interleaved, medians, 1 thread.
Every picard run uses ParaDiGMS's test (``tol`` relative to each step's noise std,
``relative=False``), the semantics these figures were first measured under.

    python benchmarks/per_sample.py [--models gmm moons digits] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import seeded_start, write_results

from picard.cli.bench import bench_model
from picard.cli.runs import make_scheduler, sample_in_parallel, sample_sequentially

VARIANTS: dict[str, dict[str, Any]] = {
    "shared": {},
    "per_sample": {"per_sample": True},
    "shared+max_rows": {"max_rows": True},
    "per_sample+max_rows": {"per_sample": True, "max_rows": True},
}
CASES = {
    "gmm": [("ddpm", 1000, 64), ("ddim", 100, 32), ("dpmsolver++", 50, 25)],
    "moons": [("ddpm", 1000, 64), ("ddim", 100, 32), ("dpmsolver++", 50, 25)],
    "digits": [("ddpm", 1000, 64), ("ddim", 100, 32)],
}
BATCH = {"gmm": 16, "moons": 16, "digits": 4}

HEADER = (
    "| model | sampler | window | method | sweeps | evals/step/sample | worst RMS err | "
    "median s | wall-clock vs shared |\n|---|---|---:|---|---:|---:|---:|---:|---:|"
)


def _case(model: str, sampler: str, n: int, window: int, repeats: int, tol: float) -> list[dict]:
    den, base, shape = bench_model(model)
    b = BATCH[model]
    sched = make_scheduler(sampler, base)

    def start() -> tuple[torch.Tensor, torch.Generator]:
        return seeded_start(sched, n, (b, *shape))

    x, gen = start()
    ref = sample_sequentially(sched, den, n, x, gen)
    runs: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):  # interleaved: every variant once per round
        for name, opts in VARIANTS.items():
            opts = dict(opts)
            w: int | None = window
            if opts.get("max_rows"):  # the same rows per call, the window left to the budget
                opts["max_rows"], w = window * b, None
            x, gen = start()
            t0 = time.perf_counter()
            runs[name] = sample_in_parallel(
                sched, den, n, x, gen, window=w, tol=tol, relative=False, **opts
            )
            times[name].append(time.perf_counter() - t0)
    base_t = float(np.median(times["shared"]))
    rows = []
    for name, sol in runs.items():
        err = (sol.final - ref).double().pow(2).flatten(1).mean(1).sqrt().max()
        t = float(np.median(times[name]))
        rows.append(
            {
                "model": model,
                "sampler": f"{sampler}-{n}",
                "window": window,
                "method": name,
                "sweeps": sol.stats.iterations,
                "evals_per_step": sol.stats.evaluations / n / b,
                "worst_rms_error": float(err),
                "seconds": t,
                "speed_vs_shared": base_t / t,
            }
        )
    return rows


def _line(r: dict[str, Any]) -> str:
    return (
        f"| {r['model']} | {r['sampler']} | {r['window']} | {r['method']} | {r['sweeps']} | "
        f"{r['evals_per_step']:.2f} | {r['worst_rms_error']:.1e} | {r['seconds']:.3f} | "
        f"{r['speed_vs_shared']:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tol", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/per_sample"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(HEADER, flush=True)
    rows = []
    for model in args.models:
        for sampler, n, window in CASES[model]:
            case = _case(model, sampler, n, window, args.repeats, args.tol)
            for r in case:
                print(_line(r), flush=True)
            rows += case
    write_results(args.out, rows, "\n".join([HEADER, *map(_line, rows)]) + "\n")


if __name__ == "__main__":
    main()
