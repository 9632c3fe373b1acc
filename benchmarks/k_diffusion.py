"""Issue 25, item 1: k-diffusion's samplers in parallel, against the sequential loop.

The shipped trained models (``moons``, ``digits``: ε-prediction on DDPM's schedule) and
the tiny Stable Diffusion UNet with guidance 7.5, wrapped as A1111 wraps a CompVis model
(``D(x; σ) = x - σ ε(x/√(σ² + 1), t(σ))``, t(σ) interpolated in log σ), sampled on a
Karras grid by each sampler of :data:`picard.adapters.k_diffusion.SAMPLERS` with its
defaults: picard's default call (no picard options) against the sequential reference —
k-diffusion's own function when installed (``sampling.py`` loaded alone), else picard at
``tol=0, window=1``. Sweeps against the sequential model-call rounds (two per step for
Heun/DPM-2/DPM++ 2S/SDE) and steps, evaluations, the worst sample's RMS error relative to
its RMS, and wall-clock: runs interleaved, medians, 1 thread.

    python benchmarks/k_diffusion.py [--models moons digits tiny-sd] [--steps 25 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import write_results

from picard.adapters import k_diffusion as kd
from picard.cli.bench import bench_model

BATCH = {"moons": 16, "digits": 4, "tiny-sd": 2}
QUICK = ("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde")  # tiny-sd: the four the UIs use most
HEADER = (
    "| model | sampler | steps | seq. rounds | sweeps | sweeps/rounds | sweeps/steps | "
    "evals vs seq. | worst rel. err | seq. median s | picard median s | wall-clock ratio |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def k_diffusion_reference() -> Any:
    """k-diffusion's ``sampling`` module (loaded alone, a stub ``utils``), or ``None``."""
    here = str(Path(__file__).resolve().parent)  # this script is also named k_diffusion
    path = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    spec = importlib.machinery.PathFinder.find_spec("k_diffusion", path)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = spec.submodule_search_locations[0]
    package, utils = types.ModuleType("_kd_ref"), types.ModuleType("_kd_ref.utils")
    package.__path__ = [root]
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules["_kd_ref"], sys.modules["_kd_ref.utils"] = package, utils
    loaded = importlib.util.spec_from_file_location("_kd_ref.sampling", f"{root}/sampling.py")
    module = importlib.util.module_from_spec(loaded)
    try:
        loaded.loader.exec_module(module)
    except ImportError:
        return None
    return module


def compvis_denoiser(name: str) -> tuple[Any, torch.Tensor, tuple[int, ...]]:
    """The model as a k-diffusion denoiser, and its training sigmas (ascending)."""
    eps, scheduler, shape = bench_model(name)
    ab = scheduler.alphas_cumprod.double()
    train = ((1 - ab) / ab).sqrt()
    log_train = train.log()

    def t_of(sigma: torch.Tensor) -> torch.Tensor:
        log_s = sigma.double().log().clamp(log_train[0], log_train[-1])
        hi = torch.searchsorted(log_train, log_s).clamp(1, len(log_train) - 1)
        lo = hi - 1
        w = (log_s - log_train[lo]) / (log_train[hi] - log_train[lo])
        return (lo + w).float()

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        scale = (sigma**2 + 1) ** 0.5
        view = (-1,) + (1,) * (x.ndim - 1)
        out = eps(x / scale.reshape(view), t_of(sigma))
        return x - sigma.reshape(view) * out

    return model, train.float(), shape


def karras(n: int, lo: float, hi: float) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    sig = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    return torch.cat([sig, sig.new_zeros(1)])


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def case(ref: Any, model_name: str, sampler: str, steps: int, repeats: int) -> dict[str, Any]:
    model, train, shape = compvis_denoiser(model_name)
    sigmas = karras(steps, float(train[0]), float(train[-1]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH[model_name], *shape, generator=g) * sigmas[0]
    picard_fn = kd.SAMPLERS[sampler]
    calls = {"n": 0}

    def counted(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return model(x, sigma)

    def sequential() -> torch.Tensor:
        torch.manual_seed(1)
        if ref is not None:
            return getattr(ref, f"sample_{sampler}")(counted, x, sigmas, disable=True)
        return picard_fn(counted, x, sigmas, disable=True, tol=0, window=1)

    def parallel() -> Any:
        torch.manual_seed(1)
        return picard_fn(model, x, sigmas, disable=True, return_solution=True)

    seq_times, par_times = [], []
    for _ in range(repeats):  # interleaved
        calls["n"] = 0
        exact, t = _timed(sequential)
        seq_times.append(t)
        rounds = calls["n"]
        sol, t = _timed(parallel)
        par_times.append(t)
    err = (sol.final - exact).flatten(1).pow(2).mean(1).sqrt()
    err = (err / exact.flatten(1).pow(2).mean(1).sqrt()).max().item()
    stats = sol.stats
    seq_s, par_s = float(np.median(seq_times)), float(np.median(par_times))
    return {
        "model": model_name,
        "sampler": sampler,
        "steps": steps,
        "sequential_rounds": rounds,
        "sweeps": stats.iterations,
        "sweeps_per_round": stats.iterations / rounds,
        "sweeps_per_step": stats.iterations / steps,
        "evaluations_ratio": stats.evaluations / (rounds * x.shape[0]),
        "worst_relative_error": err,
        "sequential_s": seq_s,
        "picard_s": par_s,
        "wallclock_ratio": seq_s / par_s,
        "reference": "k-diffusion" if ref is not None else "picard tol=0 window=1",
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["moons", "digits", "tiny-sd"])
    parser.add_argument("--steps", nargs="+", type=int, default=[25, 50])
    parser.add_argument("--samplers", nargs="+", default=list(kd.SAMPLERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "k_diffusion"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # torchsde's interval notices
    ref = k_diffusion_reference()
    rows = []
    for model_name in args.models:
        samplers = [s for s in args.samplers if model_name != "tiny-sd" or s in QUICK]
        for steps in args.steps:
            for sampler in samplers:
                row = case(ref, model_name, sampler, steps, args.repeats)
                rows.append(row)
                print(_line(row), flush=True)
    lines = [HEADER, *(_line(r) for r in rows)]
    single = [r["sweeps_per_round"] for r in rows if r["steps"] >= 25]
    note = (
        f"\nReference: {rows[0]['reference']}. Steps ≥ 25: sweeps per sequential round "
        f"median {np.median(single):.2f}, worst {max(single):.2f}; "
        f"{sum(s <= 0.6 for s in single)} of {len(single)} runs at ≤ 0.6.\n"
    )
    write_results(Path(args.out), rows, _intro() + "\n".join(lines) + "\n" + note)
    return rows


def _line(r: dict[str, Any]) -> str:
    return (
        f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['sequential_rounds']} | "
        f"{r['sweeps']} | {r['sweeps_per_round']:.2f} | {r['sweeps_per_step']:.2f} | "
        f"{r['evaluations_ratio']:.2f}x | {r['worst_relative_error']:.1e} | "
        f"{r['sequential_s']:.3f} | {r['picard_s']:.3f} | {r['wallclock_ratio']:.2f}x |"
    )


def _intro() -> str:
    return (
        "# k-diffusion samplers in parallel (issue 25, item 1)\n\n"
        "`python benchmarks/k_diffusion.py` (CPU, 1 thread; wall-clock ratio = sequential "
        "time / picard time, > 1 is faster). Sequential rounds: the model calls of the "
        "sequential loop, one after another; sweeps: picard's rounds of one batched call. "
        "picard's default call (tol 0.01 relative per sample, window auto). Evals vs seq.: "
        "picard's model evaluations over the sequential loop's. On one CPU thread a batched "
        "call costs about as much per row as separate calls, so picard's extra evaluations "
        "cost wall-clock there unless per-call overhead dominates (the tiny UNet); with an "
        "accelerator that has room for the window's rows, the sweeps are the latency. "
        "Timings on a shared machine vary by up to 2x between runs; sweeps and errors do not "
        "(window auto aside).\n\n"
    )


if __name__ == "__main__":
    main()
