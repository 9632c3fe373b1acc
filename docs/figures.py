"""Make the documentation's figures (shipped 2-D model, 1 thread): ``python docs/figures.py``.

Writes into ``docs/figures`` (or ``--out``): ``sweeps.png`` (steps done against rounds of
model calls: sequential, the ParaDiGMS algorithm, picard's default), ``convergence.png``
(window start and residual per sweep), ``window.png`` and ``tol.png`` (sweeps, evaluations
and error against the window and the tolerance). Every picard run uses ParaDiGMS's test
(``tol`` relative to each step's noise std, ``relative=False``), the semantics the
figures compare with ParaDiGMS under.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from picard.cli import plots
from picard.cli.runs import make_scheduler, sample_in_parallel, sample_sequentially, start_latent
from picard.models import load

N = 1000


def _run(sampler: str, n: int, window: int | None, tol: float, **options):
    model = load("moons")
    sched = make_scheduler(sampler, model.scheduler)
    gen = torch.Generator().manual_seed(0)
    x = start_latent(sched, n, (16, 2), gen)
    options = {"relative": False, **options}
    sol = sample_in_parallel(sched, model.denoiser, n, x, gen, window=window, tol=tol, **options)
    gen = torch.Generator().manual_seed(0)
    x = start_latent(sched, n, (16, 2), gen)
    ref = sample_sequentially(sched, model.denoiser, n, x, gen)
    return sol, float((sol.final - ref).pow(2).mean().sqrt())


def _done(stats) -> tuple[list[int], list[int]]:
    """Rounds of model calls (0 … sweeps) and the steps final after each."""
    done = [*stats.window_starts[1:], stats.num_steps]
    return list(range(stats.iterations + 1)), [0, *done]


def main(argv: list[str] | None = None) -> list[Path]:
    """Make every figure; returns their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("figures"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    plain, _ = _run(
        "ddpm", N, 64, 0.1, predict=False, accelerate=None, acceptance="first-unconverged"
    )
    default, _ = _run("ddpm", N, 64, 0.1)
    paths = [
        plots.lines(
            {
                "sequential (one step per round)": ([0, N], [0, N]),
                f"ParaDiGMS algorithm ({plain.stats.iterations} rounds)": _done(plain.stats),
                f"picard default ({default.stats.iterations} rounds)": _done(default.stats),
            },
            "rounds of model calls",
            "steps done (DDPM, N = 1000)",
            args.out / "sweeps.png",
        ),
        plots.convergence(
            {"plain Picard": plain.stats, "picard default": default.stats},
            args.out / "convergence.png",
        ),
    ]
    windows = [8, 16, 32, 64, 128, 256]
    series = {}
    for sampler, n in (("ddpm", 1000), ("ddim", 100)):
        runs = [_run(sampler, n, w, 0.1)[0].stats for w in windows]
        series[f"{sampler.upper()}-{n}: sweeps"] = (windows, [s.iterations for s in runs])
        per_step = [s.evaluations / s.num_steps / 16 for s in runs]
        series[f"{sampler.upper()}-{n}: evaluations per step x 10"] = (
            windows,
            [10 * e for e in per_step],
        )
    paths.append(plots.lines(series, "window", "count", args.out / "window.png", logx=True))
    tols = [1e-3, 1e-2, 3e-2, 0.1, 0.3]
    series = {}
    for sampler, n in (("ddpm", 1000), ("ddim", 100)):
        runs = [_run(sampler, n, 64, tol) for tol in tols]
        series[f"{sampler.upper()}-{n}: RMS error vs sequential"] = (tols, [e for _, e in runs])
    paths.append(
        plots.lines(series, "tol", "final RMS error", args.out / "tol.png", logx=True, logy=True)
    )
    return paths


if __name__ == "__main__":
    for path in main():
        print(path)
