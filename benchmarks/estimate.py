"""Issue 22, item 2: each sample's estimated error (``Stats.estimated_errors``) against the truth.

The estimate comes from the sweeps' own changes at no model call
(:mod:`picard.core.estimate`). For every case, each sample's true RMS distance from its
sequential sample relative to its RMS, against its estimate: the worst true error, the
worst estimate, the worst underestimate (the largest true / estimate over the samples)
and the median overestimate (estimate / true). Cases:

- the Gaussian mixtures of ``benchmarks/final_error.py`` (64 samples, float64; ``tuned``
  and ``held-out``), five samplers, with no options, at window 64 and per sample;
- the project's trained networks (``picard.models``): the moons MLP (DDPM-1000, DDIM-50,
  64 samples) and the digits UNet (DDIM-50, DPM-Solver++ 2M-25, 16 samples), no options.

    python benchmarks/estimate.py [--sets tuned held-out nets] [--out benchmarks/results/estimate]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from final_error import SAMPLERS, cases, solver
from harness import write_results

import picard
from picard.adapters.diffusers import from_scheduler
from picard.models import load

RUNS: dict[str, dict[str, Any]] = {
    "no options": {},
    "window 64": {"window": 64},
    "per sample": {"per_sample": True},
}
NETS = [  # (model, sampler, scheduler class, steps, extra config, samples)
    ("moons", "ddpm-1000", DDPMScheduler, 1000, {}, 64),
    ("moons", "ddim-50", DDIMScheduler, 50, {}, 64),
    ("digits", "ddim-50", DDIMScheduler, 50, {}, 16),
    ("digits", "dpmsolver++2m-25", DPMSolverMultistepScheduler, 25, {"solver_order": 2}, 16),
]
HEADER = (
    "| set | case | sampler | run | sweeps | worst true | worst estimate | worst true / estimate "
    "| median estimate / true |\n|---|---|---|---|---:|---:|---:|---:|---:|"
)


def compare(sol: picard.Solution, ref: torch.Tensor) -> dict[str, Any]:
    """The true per-sample errors of ``sol`` against ``ref`` and its estimates, summarised."""
    flat, exact = sol.final.flatten(1), ref.flatten(1)
    true = ((flat - exact).norm(dim=1) / exact.norm(dim=1)).numpy()
    est = np.asarray(sol.stats.estimated_errors)
    tiny = np.finfo(np.float64).tiny
    return {
        "sweeps": sol.stats.iterations,
        "worst_true": float(true.max()),
        "worst_estimate": float(est.max()),
        "under": float((true / np.maximum(est, tiny)).max()),
        "over": float(np.median(est / np.maximum(true, tiny))),
    }


def mixtures(sets: list[str]) -> list[dict[str, Any]]:
    """The mixture cases of ``sets``, one row per mixture, sampler and run."""
    rows = []
    for label, name, gmm, first in cases([s for s in sets if s != "nets"]):
        for case in SAMPLERS:
            sampler, solve = case[0], solver(gmm, first, case)
            ref = solve(window=1, tol=0).final
            for run, opts in RUNS.items():
                row = {"set": label, "case": name, "sampler": sampler, "run": run}
                rows.append(row | compare(solve(**opts), ref))
                print(line(rows[-1]), flush=True)
    return rows


def nets() -> list[dict[str, Any]]:
    """The trained networks' cases, with no options."""
    rows = []
    for model_name, sampler, cls, n, extra, samples in NETS:
        model = load(model_name)
        sched = cls.from_config(model.scheduler.config, **extra)

        def solve(sched: Any = sched, model: Any = model, n: int = n, k: int = samples, **kw: Any):
            gen = torch.Generator().manual_seed(7)
            x = torch.randn(k, *model.sample_shape, generator=gen)
            rule = from_scheduler(sched, model.denoiser, n, generator=gen)
            return picard.solve(rule, x, **kw)

        ref = solve(window=1, tol=0).final
        row = {"set": "nets", "case": model_name, "sampler": sampler, "run": "no options"}
        rows.append(row | compare(solve(), ref))
        print(line(rows[-1]), flush=True)
    return rows


def line(r: dict[str, Any]) -> str:
    """One row of the markdown table."""
    return (
        f"| {r['set']} | {r['case']} | {r['sampler']} | {r['run']} | {r['sweeps']} | "
        f"{r['worst_true']:.1e} | {r['worst_estimate']:.1e} | {r['under']:.2f} | "
        f"{r['over']:.1f} |"
    )


def summary(rows: list[dict[str, Any]]) -> str:
    """Per set and run: the worst underestimate, how many cases underestimate, the median."""
    out = [
        "| set | run | cases | worst true / estimate | cases with true > estimate | "
        "median of the cases' median estimate / true |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label in dict.fromkeys(r["set"] for r in rows):
        for run in dict.fromkeys(r["run"] for r in rows if r["set"] == label):
            sel = [r for r in rows if r["set"] == label and r["run"] == run]
            out.append(
                f"| {label} | {run} | {len(sel)} | {max(r['under'] for r in sel):.2f} | "
                f"{sum(r['under'] > 1 for r in sel)} | "
                f"{float(np.median([r['over'] for r in sel])):.1f} |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["tuned", "held-out", "nets"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/estimate"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(HEADER, flush=True)
    rows = mixtures(args.sets) + (nets() if "nets" in args.sets else [])
    text = (
        "**Issue 22, item 2: each sample's estimated error against its true error, default "
        "tol 0.01 (`python benchmarks/estimate.py`)**\n\n"
        + summary(rows)
        + "\n"
        + HEADER
        + "\n"
        + "\n".join(line(r) for r in rows)
        + "\n"
    )
    write_results(args.out, rows, text)


if __name__ == "__main__":
    main()
