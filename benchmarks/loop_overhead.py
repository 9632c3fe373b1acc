"""The sweep loop's own cost per sweep, with drifts that cost next to nothing.

Public API only, so the same script times two trees (``PYTHONPATH=<tree> python
benchmarks/loop_overhead.py``); ``--pair A B`` runs two trees in turn, several rounds, and
prints each case's median microseconds per sweep and the ratio B/A. One thread.

Cases: a 4-element linear recursion (shared window of 32, tol 0: many sweeps of one step
each), the same with the secant, DDPM-200 (its noise re-seeded: every run the same) with a
linear denoiser in one shared window and per sample (batch 4), and the ODE front end (Euler, 2,000
steps, window 64). Each case's figure is its median over runs; ``--pair`` also gives the
ratio of the fastest rounds, which load on a shared machine disturbs least.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def _cases() -> dict:
    from diffusers import DDPMScheduler

    import picard
    from picard.adapters.diffusers import from_scheduler

    torch.set_num_threads(1)
    a = torch.full((4,), -1e-3, dtype=torch.float64)
    rule = picard.Recursion(lambda i, x: a * x, 2048)
    x0 = torch.ones(4, dtype=torch.float64)
    gen = torch.Generator()
    ddpm = from_scheduler(DDPMScheduler(), lambda x, t: 0.1 * x, 200, generator=gen)
    latent = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 1, 2001)

    def seeded(**options):  # the same noise every run
        gen.manual_seed(0)
        return picard.solve(ddpm, latent, window=50, tol=1e-6, accelerate=None, **options)

    return {
        "recursion, window 32, tol 0": lambda: picard.solve(
            rule, x0, window=32, tol=0, accelerate=None
        ),
        "recursion, window 32, secant": lambda: picard.solve(
            rule, x0, window=32, tol=1e-12, accelerate="secant"
        ),
        "DDPM-200, window 50, shared": lambda: seeded(),
        "DDPM-200, window 50, per sample": lambda: seeded(per_sample=True),
        "odeint Euler-2000, window 64": lambda: picard.odeint(
            lambda t, y: -y,
            torch.ones(4),
            t,
            window=64,
            tol=1e-7,
            return_stats=True,
            method="euler",
        )[1],
    }


def measure(repeats: int) -> dict:
    """``{case: (sweeps, median microseconds per sweep)}`` in this process."""
    out = {}
    for name, run in _cases().items():
        result = run()  # warm-up
        stats = getattr(result, "stats", result)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        out[name] = (stats.iterations, 1e6 * statistics.median(times) / stats.iterations)
    return out


def pair(a: str, b: str, rounds: int, repeats: int) -> None:
    """Run the trees ``a`` and ``b`` in turn and print medians and ratios."""
    got: dict[str, list] = {a: [], b: []}
    for _ in range(rounds):
        for tree in (a, b):
            env = dict(os.environ, PYTHONPATH=tree)
            cmd = [sys.executable, __file__, "--repeats", str(repeats)]
            text = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            got[tree].append(json.loads(text.stdout.splitlines()[-1]))
    print(f"A = {a}, B = {b}, {rounds} rounds in turn; µs per sweep, median of rounds")
    print("| case | sweeps A / B | A | B | B/A (medians) | B/A (fastest rounds) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in got[a][0]:
        ta = statistics.median(r[name][1] for r in got[a])
        tb = statistics.median(r[name][1] for r in got[b])
        fast = min(r[name][1] for r in got[b]) / min(r[name][1] for r in got[a])
        sweeps = f"{got[a][0][name][0]} / {got[b][0][name][0]}"
        print(f"| {name} | {sweeps} | {ta:.1f} | {tb:.1f} | {tb / ta:.3f} | {fast:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"), help="two trees to compare")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.pair:
        pair(*args.pair, args.rounds, args.repeats)
    else:
        print(json.dumps(measure(args.repeats)))


if __name__ == "__main__":
    main()
