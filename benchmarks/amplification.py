"""Issue 22 groundwork: how much does a sampler amplify an error downstream, and can the
sweeps' own secant slopes tell?

On the fidelity benchmark's mixtures (exact score, 64 samples, deterministic samplers),
for each step ``i`` and sample: the true amplification ``G(i) = |δx_N| / |δx_i|`` of a
small random perturbation of the sequential state ``x_i`` (the sequential loop run again
with it injected; multistep history and everything else as in the sequential run), against
two estimates that cost no model call: the product of the per-step secant slopes of the
last two sweeps of a whole-grid plain Picard solve, ``Π_{j>=i} |1 + a_j|`` with ``a_j =
<δΔ_j, δx_j> / |δx_j|²``, and the same product of the Gaussian-data slopes
(``Problem.traits().slopes``). Also: the final error picard's default gives each sample,
and the per-step change it accepted, so that ``Σ_i G(i) · change_i`` can be held against
the true error.

    python benchmarks/amplification.py [--seeds 0 1 2] [--out benchmarks/results/amplification]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import schedules
from picard.cli.fidelity import mixture

SAMPLES = 64
SAMPLERS = [
    ("dpmsolver++2m-25", DPMSolverMultistepScheduler, 25, {"solver_order": 2}),
    ("ddim-50", DDIMScheduler, 50, {}),
]


class Perturbed(picard.Problem):
    """``problem`` with ``delta`` added to state ``at`` (through step ``at - 1``'s increment)."""

    def __init__(self, problem: picard.Problem, at: int, delta: torch.Tensor):
        self.p, self.at, self.delta = problem, at, delta
        self.num_steps, self.batch_ndim, self.memory = problem.num_steps, 1, problem.memory

    def init(self, x0: torch.Tensor) -> Any:
        return self.p.init(x0)

    def increments(self, x: torch.Tensor, start: Any, state: Any, history: Any) -> Any:
        inc, out = self.p.increments(x, start, state, history)
        if start == self.at - 1:
            inc = inc + self.delta[None]
        return inc, out


class Recorder:
    """Plain Picard that keeps, per step, its state and increment in the last two sweeps."""

    def __init__(self) -> None:
        self.last: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def begin(self, columns: int) -> Any:
        outer = self

        class Run:
            def update(self, sweep: Any, stride: Any) -> None:
                start, w = int(sweep.starts[0]), sweep.x.shape[0]
                x = np.array(sweep.ops.tensor(sweep.x)).reshape(w, SAMPLES, -1)
                inc = np.array(sweep.ops.tensor(sweep.inc)).reshape(w, SAMPLES, -1)
                for j in range(w):
                    seen = outer.last.setdefault(start + j, [])
                    seen.append((x[j].copy(), inc[j].copy()))
                    del seen[:-2]

            def counters(self) -> dict[str, int]:
                return {}

        return Run()


def _problem(gmm: Any, cls: Any, n: int, extra: dict[str, Any]) -> tuple[Any, torch.Tensor]:
    base = DDPMScheduler(clip_sample=False)
    sched = cls.from_config(base.config, **extra)
    eps = gmm.denoiser(schedules.alphas_cumprod(base.config))
    gens = [torch.Generator().manual_seed(100 + s) for s in range(SAMPLES)]
    x = torch.cat([torch.randn(1, 16, generator=g, dtype=torch.float64) for g in gens])
    problem = from_scheduler(sched, eps, n, generator=gens)
    return problem, x * float(getattr(problem.rule, "init_noise_sigma", 1.0))


def true_amplification(problem: Any, x: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
    """``(N, samples)``: ``|δx_N| / |δx_i|`` for a random perturbation of state ``i``."""
    n, gen = problem.num_steps, torch.Generator().manual_seed(0)
    out = np.zeros((n, SAMPLES))
    for i in range(1, n + 1):
        direction = torch.randn(ys[i].shape, generator=gen, dtype=torch.float64)
        size = 1e-6 * ys[i].flatten(1).norm(dim=1).clamp_min(1e-12)
        direction = direction / direction.flatten(1).norm(dim=1)[:, None] * size[:, None]
        end = picard.sequential(Perturbed(problem, i, direction), x).final
        out[i - 1] = ((end - ys[-1]).flatten(1).norm(dim=1) / size).numpy()
    return out  # row i - 1: a perturbation of state i


def downstream(slopes: np.ndarray) -> np.ndarray:
    """``(N, samples)``: row ``i - 1`` the product ``Π_{j>=i} |1 + a_j|`` (state i's)."""
    factors = np.abs(1 + slopes)
    prod = np.cumprod(factors[::-1], axis=0)[::-1]
    return np.vstack([prod[1:], np.ones((1, slopes.shape[1]))])


def secant_slopes(last: dict[int, list[tuple[np.ndarray, np.ndarray]]], n: int) -> np.ndarray:
    """``(N, samples)`` per-step slopes from the last two sweeps that evaluated each step."""
    out = np.zeros((n, SAMPLES))
    for j in range(n):
        seen = last.get(j, [])
        if len(seen) < 2:
            continue
        (x0, d0), (x1, d1) = seen
        dx, dd = x1 - x0, d1 - d0
        den = (dx * dx).sum(-1)
        out[j] = np.divide((dx * dd).sum(-1), den, out=np.zeros_like(den), where=den > 0)
    return out


def study(seed: int, name: str, cls: Any, n: int, extra: dict[str, Any]) -> dict[str, Any]:
    """One mixture and sampler: the amplification, its estimates, and picard's errors."""
    gmm = mixture(seed)
    problem, x = _problem(gmm, cls, n, extra)
    with torch.no_grad():
        ys = picard.sequential(problem, x, save=True).ys
        g_true = true_amplification(problem, x, ys)
        rec = Recorder()
        problem, x = _problem(gmm, cls, n, extra)
        picard.solve(problem, x, window=n, tol=1e-3, accelerate=rec, predict=False)
        problem, x = _problem(gmm, cls, n, extra)
        default = picard.solve(problem, x)
    slopes = secant_slopes(rec.last, n)
    g_secant = downstream(slopes)
    prior = problem.traits().slopes
    g_prior = downstream(np.repeat(np.asarray(prior)[:, None], SAMPLES, axis=1))
    err = (default.final - ys[-1]).flatten(1).norm(dim=1) / ys[-1].flatten(1).norm(dim=1)
    worst = int(err.argmax())
    ratio = g_secant / g_true
    log_r = np.log10(ratio[g_true > 0])
    return {
        "mixture": seed,
        "sampler": name,
        "max_true_amplification": float(g_true.max()),
        "worst_sample": worst,
        "worst_sample_error": float(err[worst]),
        "worst_sample_max_amplification": float(g_true[:, worst].max()),
        "median_sample_max_amplification": float(np.median(g_true.max(0))),
        "secant_over_true_median": float(10 ** np.median(log_r)),
        "secant_over_true_p10": float(10 ** np.percentile(log_r, 10)),
        "secant_over_true_p90": float(10 ** np.percentile(log_r, 90)),
        "prior_max_amplification": float(g_prior.max()),
        "rank_corr_secant_true": float(
            np.corrcoef(
                np.argsort(np.argsort(g_secant.max(0))), np.argsort(np.argsort(g_true.max(0)))
            )[0, 1]
        ),
        "sweeps_default": default.stats.iterations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/amplification")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        for name, cls, n, extra in SAMPLERS:
            row = study(seed, name, cls, n, extra)
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| mixture | sampler | max G (all) | worst sample: error, max G | median sample max G |"
        " secant G / true G: p10, median, p90 | rank corr. | Gaussian-prior max G |",
        "|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mixture']} | {r['sampler']} | {r['max_true_amplification']:.3g} | "
            f"{r['worst_sample_error']:.2e}, {r['worst_sample_max_amplification']:.3g} | "
            f"{r['median_sample_max_amplification']:.3g} | {r['secant_over_true_p10']:.2g}, "
            f"{r['secant_over_true_median']:.2g}, {r['secant_over_true_p90']:.2g} | "
            f"{r['rank_corr_secant_true']:.2f} | {r['prior_max_amplification']:.3g} |"
        )
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
