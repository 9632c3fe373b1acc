"""Issue 5 wall-clock check on the 2-D model: ParaDiGMS loop vs picard plain vs default.

moons DDPM-1000, 16 samples, window 64, tol 0.1 relative to the noise std (ParaDiGMS's test,
``relative=False``, for every run), 1 thread; the three runs interleaved,
medians of ``--repeats`` rounds.   python benchmarks/wallclock_2d.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from harness import seeded_start

from picard.cli.baselines import paradigms
from picard.cli.runs import make_scheduler, sample_in_parallel, sample_sequentially
from picard.models import load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    m = load("moons")
    sched = make_scheduler("ddpm", m.scheduler)
    n, shape = 1000, (16, *m.sample_shape)

    def start():
        return seeded_start(sched, n, shape)

    x, g = start()
    ref = sample_sequentially(sched, m.denoiser, n, x, g)
    runs = {
        "ParaDiGMS loop": lambda x, g: paradigms(sched, m.denoiser, n, x, generator=g, parallel=64),
        "picard plain": lambda x, g: sample_in_parallel(
            sched,
            m.denoiser,
            n,
            x,
            g,
            window=64,
            predict=False,
            relative=False,
            accelerate=None,
            acceptance="first-unconverged",
        ),
        "picard default": lambda x, g: sample_in_parallel(
            sched, m.denoiser, n, x, g, window=64, tol=0.1, relative=False
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    out = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            x, g = start()
            t0 = time.perf_counter()
            with torch.no_grad():
                out[name] = fn(x, g)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["ParaDiGMS loop"])
    print("| run | sweeps | max abs err | median s | speed vs ParaDiGMS loop |")
    print("|---|---:|---:|---:|---:|")
    for name, r in out.items():
        final = r.final
        sweeps = r.sweeps if hasattr(r, "sweeps") else r.stats.iterations
        t = statistics.median(times[name])
        err = float((final - ref).abs().max())
        print(f"| {name} | {sweeps} | {err:.1e} | {t:.3f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
