"""Issue 17: which states a sweep declares final, on the fidelity benchmark's mixture.

Four mixtures (means drawn with seeds 1–4; the fidelity benchmark uses 0), 64 samples
each (seeds 100–163), clip off, window 64 (the samplers' steps when fewer), picard's
default tolerance (0.01 relative to each state's RMS). For each sampler: the ParaDiGMS
loop's algorithm at its tol 0.1 (plain Picard, noise-scaled test, first-unconverged rule)
and picard with ParaDiGMS's rule (``FirstUnconverged``) or the converged prefix only
(``ConvergedPrefix``), each with plain Picard and with the secant update. Columns: sweeps,
evaluations per step, the worst sample's relative RMS error against the sequential
sampler, and how many of the 64 samples land in another mode.

    python benchmarks/acceptance.py [--seeds 1 2 3 4] [--out benchmarks/results/acceptance]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import schedules
from picard.cli.fidelity import SAMPLERS, mixture

SAMPLES = 64
PARADIGMS = {
    "tol": 0.1,
    "predict": False,
    "relative": False,
    "accelerate": None,
    "acceptance": "first-unconverged",
}
RULES = {"first unconverged": "first-unconverged", "converged prefix": "converged-prefix"}


def run(seeds: list[int]) -> list[dict[str, Any]]:
    """One row per mixture, sampler and method."""
    rows = []
    for seed in seeds:
        gmm = mixture(seed)
        base = DDPMScheduler(clip_sample=False)
        for name, cls, n, extra in SAMPLERS:
            if cls is FlowMatchEulerDiscreteScheduler:
                sched, eps = cls(**extra), gmm.velocity()
            else:
                sched = cls.from_config(base.config, **extra)
                eps = gmm.denoiser(schedules.alphas_cumprod(base.config))

            def solve(sched: Any = sched, eps: Any = eps, n: int = n, **kw: Any) -> Any:
                gens = [torch.Generator().manual_seed(100 + s) for s in range(SAMPLES)]
                x = torch.cat([torch.randn(1, 16, generator=g, dtype=torch.float64) for g in gens])
                problem = from_scheduler(sched, eps, n, generator=gens)
                sigma = float(getattr(problem.rule, "init_noise_sigma", 1.0))
                return picard.solve(problem, x * sigma, **kw)

            ref = solve(window=1, tol=0).final
            scale = ref.pow(2).mean().sqrt()
            w = min(n, 64)
            runs = {"ParaDiGMS algorithm, tol 0.1": lambda w=w: solve(window=w, **PARADIGMS)}
            for rule_name, rule in RULES.items():
                for acc_name, acc in (("plain", None), ("secant", picard.Secant())):
                    runs[f"{rule_name}, {acc_name}"] = lambda w=w, rule=rule, acc=acc: solve(
                        window=w, accelerate=acc, acceptance=rule
                    )
            for method, fn in runs.items():
                sol = fn()
                per = (sol.final - ref).pow(2).mean(1).sqrt() / scale
                rows.append(
                    {
                        "mixture": seed,
                        "sampler": f"{name}-{n}",
                        "method": method,
                        "sweeps": sol.stats.iterations,
                        "evals_per_step": sol.stats.evaluations / n / SAMPLES,
                        "worst_sample": float(per.max()),
                        "mode_changes": int((gmm.component(sol.final) != gmm.component(ref)).sum()),
                    }
                )
                print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    return (
        f"| {r['mixture']} | {r['sampler']} | {r['method']} | {r['sweeps']} "
        f"| {r['evals_per_step']:.2f} | {r['worst_sample']:.1e} | {r['mode_changes']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--out", default="benchmarks/results/acceptance")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.seeds)
    totals = {}
    for r in rows:
        t = totals.setdefault(r["method"], [0, 0, 0])
        t[0] += r["sweeps"]
        t[1] += r["mode_changes"]
        t[2] += r["mode_changes"] > 0
    lines = [
        "**Acceptance rules on the mixture: 4 mixtures × 7 samplers, 64 samples each, window "
        "64, default tolerance (`python benchmarks/acceptance.py`)**",
        "",
        "| method | sweeps, all runs | samples in another mode | runs with a mode change |",
        "|---|---:|---:|---:|",
        *(f"| {m} | {t[0]} | {t[1]} | {t[2]} |" for m, t in totals.items()),
        "",
        "| mixture | sampler | method | sweeps | evals/step | worst sample | mode changes |",
        "|---:|---|---|---:|---:|---:|---:|",
        *(_line(r) for r in rows),
    ]
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
