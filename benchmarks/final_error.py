"""Issue 22: is every final sample within ``tol`` of its sequential sample, with no options?

Each sample's RMS distance to its sequential sample relative to its RMS (the worst of 64
samples, one seed each), the samples that end in another mode, and the sweeps, for
picard with no options (``window="auto"``) and at window 64, against the ParaDiGMS
algorithm at its tol 0.1 (window 64). Mixtures with an exact score, float64:

- ``tuned``: the 16-D, 4-mode mixtures 0–4 (variance 0.1) the amplification allowance
  (:data:`picard.adapters.rule.DIFFUSION_AMPLIFICATION`) was chosen on, with sample seeds
  ``1000 m + s``;
- ``held-out``: mixtures of other dimensions, mode counts, variances and seeds (see
  :data:`HELD_OUT`), with sample seeds ``7000 + s``, never run while choosing it.

Samplers: DPM-Solver++ 2M-25 and 2M-50, UniPC-25, DDIM-50 and DDIM-200 (diffusers' DDPM
betas, no clipping). ``per_sample=True`` gives each sample its own window, so each sample's
iterates are those of solving it alone (a batch of one): no other sample holds its
window back.

    python benchmarks/final_error.py [--sets tuned held-out] [--out benchmarks/results/final_error]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from harness import write_results

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import schedules
from picard.cli.fidelity import METHODS, mixture
from picard.models.gmm import GaussianMixture

SAMPLES = 64
SAMPLERS = [
    ("dpmsolver++2m-25", DPMSolverMultistepScheduler, 25, {"solver_order": 2}),
    ("dpmsolver++2m-50", DPMSolverMultistepScheduler, 50, {"solver_order": 2}),
    ("unipc-25", UniPCMultistepScheduler, 25, {}),
    ("ddim-50", DDIMScheduler, 50, {}),
    ("ddim-200", DDIMScheduler, 200, {}),
]
HELD_OUT = [  # (dimension, modes, variance, seed of the means)
    (8, 3, 0.05, 101),
    (32, 8, 0.1, 102),
    (16, 6, 0.2, 103),
    (64, 4, 0.1, 104),
]
RUNS: dict[str, dict[str, Any]] = {
    "ParaDiGMS tol 0.1, window 64": METHODS["ParaDiGMS tol 0.1"] | {"window": 64},
    "picard, no options": {},
    "picard, window 64": {"window": 64},
    "picard, per sample (each as if alone)": {"per_sample": True},
}
HEADER = (
    "| set | mixture | sampler | run | sweeps | sweeps / steps | evals/step | worst sample | "
    "mode changes |\n|---|---|---|---|---:|---:|---:|---:|---:|"
)


def held_out(dim: int, modes: int, variance: float, seed: int) -> GaussianMixture:
    """A mixture of ``modes`` equal-weight components in ``dim``-D, means drawn N(0, 4I)."""
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(modes, dim, generator=g, dtype=torch.float64)
    stds = torch.full((modes,), variance**0.5, dtype=torch.float64)
    return GaussianMixture(means, stds, torch.full((modes,), 1 / modes, dtype=torch.float64))


def cases(sets: list[str]) -> list[tuple[str, str, GaussianMixture, int]]:
    """``(set, name, mixture, first sample seed)`` for each mixture of ``sets``."""
    out = []
    if "tuned" in sets:
        out += [("tuned", f"16-D 4 modes #{m}", mixture(m), 1000 * m) for m in range(5)]
    if "held-out" in sets:
        for dim, modes, var, seed in HELD_OUT:
            name = f"{dim}-D {modes} modes var {var} #{seed}"
            out.append(("held-out", name, held_out(dim, modes, var, seed), 7000))
    return out


def solver(gmm: GaussianMixture, first: int, sampler: tuple) -> Callable[..., picard.Solution]:
    """``solve(**options)`` for one of :data:`SAMPLERS` on ``gmm``: ``SAMPLES`` samples, sample
    ``s`` drawn (and its noise) from its own generator seeded ``first + s``, float64."""
    _, cls, n, extra = sampler
    base = DDPMScheduler(clip_sample=False)
    sched = cls.from_config(base.config, **extra)
    eps = gmm.denoiser(schedules.alphas_cumprod(base.config))
    dim = gmm.means.shape[1]

    def solve(**kw: Any) -> picard.Solution:
        gens = [torch.Generator().manual_seed(first + s) for s in range(SAMPLES)]
        x = torch.cat([torch.randn(1, dim, generator=g, dtype=torch.float64) for g in gens])
        return picard.solve(from_scheduler(sched, eps, n, generator=gens), x, **kw)

    return solve


def study(label: str, name: str, gmm: GaussianMixture, first: int) -> list[dict[str, Any]]:
    """Every sampler and run on one mixture; one row each."""
    rows = []
    for case in SAMPLERS:
        sampler, n, solve = case[0], case[2], solver(gmm, first, case)
        ref = solve(window=1, tol=0).final
        for run, opts in RUNS.items():
            sol = solve(**opts)
            per = (sol.final - ref).norm(dim=1) / ref.norm(dim=1)
            rows.append({
                "set": label,
                "mixture": name,
                "sampler": sampler,
                "run": run,
                "sweeps": sol.stats.iterations,
                "steps": n,
                "evals_per_step": sol.stats.evaluations / n / SAMPLES,
                "worst_sample": float(per.max()),
                "mode_changes": int((gmm.component(sol.final) != gmm.component(ref)).sum()),
            })  # fmt: skip
    return rows


def line(r: dict[str, Any]) -> str:
    """One row of the markdown table."""
    return (
        f"| {r['set']} | {r['mixture']} | {r['sampler']} | {r['run']} | {r['sweeps']} | "
        f"{r['sweeps'] / r['steps']:.2f} | {r['evals_per_step']:.2f} | "
        f"{r['worst_sample']:.1e} | {r['mode_changes']} |"
    )


def summary(rows: list[dict[str, Any]]) -> str:
    """Per run and set: the worst sample of all, mode changes, worst sweeps / steps."""
    out = [
        "| set | run | worst sample of all | mode changes | max sweeps / steps |",
        "|---|---|---:|---:|---:|",
    ]
    for label in dict.fromkeys(r["set"] for r in rows):
        for run in RUNS:
            sel = [r for r in rows if r["set"] == label and r["run"] == run]
            out.append(
                f"| {label} | {run} | {max(r['worst_sample'] for r in sel):.1e} | "
                f"{sum(r['mode_changes'] for r in sel)} | "
                f"{max(r['sweeps'] / r['steps'] for r in sel):.2f} |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["tuned", "held-out"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/final_error"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(HEADER, flush=True)
    rows = []
    for label, name, gmm, first in cases(args.sets):
        for row in study(label, name, gmm, first):
            rows.append(row)
            print(line(row), flush=True)
    text = (
        f"**Issue 22: each final sample against its sequential sample, tol 0.01 "
        f"(`python benchmarks/final_error.py`)**\n\n{summary(rows)}\n"
        + HEADER
        + "\n"
        + "\n".join(line(r) for r in rows)
        + "\n"
    )
    write_results(args.out, rows, text)


if __name__ == "__main__":
    main()
