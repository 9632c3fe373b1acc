"""Issue 22: ``verify=True`` by Newton's check against re-solving, on the 16-D mixture.

For memoryless samplers on the mixture (exact score, 64 samples, 16 numbers each): the
default solve, ``verify=True`` as this machine chooses (:func:`picard.core.newton.newton_pays`),
and ``verify=True`` with Newton's check forced. Sweeps, median seconds of 3 interleaved
runs on one thread, the estimate against the default's true error, and the verified
worst sample against the sequential one.

    python benchmarks/newton_verify.py [--out benchmarks/results/newton_verify]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from harness import newton_check, write_results

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import schedules
from picard.cli import fidelity
from picard.core.verify import relative_errors

CASES = [(DDIMScheduler, 50), (DDIMScheduler, 200), (DDPMScheduler, 100), (DDPMScheduler, 1000),
         (EulerDiscreteScheduler, 50)]  # fmt: skip


def forced(run: Any) -> Any:
    """``run()`` with Newton's check taken whatever its modeled cost."""
    with newton_check():
        return run()


def case(cls: Any, n: int) -> dict[str, Any]:
    gmm = fidelity.mixture()
    base = DDPMScheduler(clip_sample=False)
    sched = cls.from_config(base.config)
    den = gmm.denoiser(schedules.alphas_cumprod(base.config))

    def solve(**kw: Any) -> Any:
        gens = [torch.Generator().manual_seed(s) for s in range(64)]
        x = torch.cat([torch.randn(1, 16, generator=g, dtype=torch.float64) for g in gens])
        problem = from_scheduler(sched, den, n, generator=gens)
        return picard.solve(problem, x * float(getattr(problem.rule, "init_noise_sigma", 1)), **kw)

    ref = solve(window=1, tol=0).final
    runs = {"default": lambda: solve(), "verify": lambda: solve(verify=True),
            "verify, Newton": lambda: forced(lambda: solve(verify=True))}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in runs}
    out: dict[str, Any] = {}
    for _ in range(3):
        for k, run in runs.items():
            t0 = time.perf_counter()
            out[k] = run()
            times[k].append(time.perf_counter() - t0)
    row: dict[str, Any] = {"sampler": f"{cls.__name__.removesuffix('Scheduler')}-{n}"}
    true = float(relative_errors(out["default"].final, ref, 1).max())
    for k, sol in out.items():
        row[k] = {
            "sweeps": sol.stats.iterations,
            "seconds": statistics.median(times[k]),
            "worst": float(relative_errors(sol.final, ref, 1).max()),
            "estimate": sol.stats.error_estimate,
            "newton": "newton_steps" in sol.stats.acceleration,
        }
    row["true"] = true
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/newton_verify"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (
        "| sampler | default: sweeps, s, worst | verify here: how, sweeps, s, worst | "
        "verify, Newton: sweeps, s, worst | estimate / default's true error |\n"
        "|---|---|---|---|---:|"
    )
    print(header, flush=True)
    rows, lines = [], []
    for cls, n in CASES:
        r = case(cls, n)
        rows.append(r)
        d, v, w = r["default"], r["verify"], r["verify, Newton"]
        how = "Newton" if v["newton"] else "re-solve"
        lines.append(
            f"| {r['sampler']} | {d['sweeps']}, {d['seconds']:.3f}, {d['worst']:.1e} | "
            f"{how}, {v['sweeps']} ({v['sweeps'] / d['sweeps']:.2f}x), {v['seconds']:.3f}, "
            f"{v['worst']:.1e} | {w['sweeps']} ({w['sweeps'] / d['sweeps']:.2f}x), "
            f"{w['seconds']:.3f} ({w['seconds'] / d['seconds']:.1f}x), {w['worst']:.1e} | "
            f"{w['estimate']:.2e} / {r['true']:.2e} |"
        )
        print(lines[-1], flush=True)
    text = (
        "**Issue 22: `verify=True` by Newton's check or by re-solving (`python benchmarks/"
        "newton_verify.py`)**: the 16-D mixture, 64 samples, one CPU thread; sweeps (and "
        "their ratio to the default's), median seconds of 3 interleaved runs, the worst "
        "sample's relative distance from its sequential sample.\n\n" + header + "\n"
        + "\n".join(lines) + "\n"
    )  # fmt: skip
    write_results(args.out, rows, text)


if __name__ == "__main__":
    main()
