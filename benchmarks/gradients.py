"""Forward + backward of a neural ODE: picard against torchdiffeq, time and peak memory.

The field is torchdiffeq's own ``examples/ode_demo.py`` (``Linear(2, 50) - tanh -
Linear(50, 2)`` of ``y**3``), written as torchdiffeq users write it (one time, one state),
batch 16, N = 1000 Euler steps on t in [0, T]; the loss is the demo's mean absolute error
against a target trajectory at every step. Each solver runs the same call:

- ``torchdiffeq``: ``torchdiffeq.odeint`` + autograd through its loop;
- ``torchdiffeq adjoint``: ``torchdiffeq.odeint_adjoint`` (its continuous adjoint);
- ``picard``: ``picard.odeint`` with no options (``batched="auto"`` finds that the func is
  batch-agnostic; the state is small, so the backward pass solves the adjoint recursion
  from per-sample Jacobians, :mod:`picard.core.dense_adjoint`);
- ``picard, backward by sweeps``: the same with the Jacobians turned off
  (``DENSE_MAX = 0``): the backward pass is the adjoint recursion's parallel sweeps;
- ``picard adjoint``: ``picard.odeint_adjoint``, torchdiffeq's signature (same pass);
- ``picard window=W`` (``--window W``): ``picard.odeint(..., window=W, method="euler")``.

Wall-clock: medians of interleaved repeats, one torch thread. Peak memory: each solver
in a fresh process after a 10-step warm-up, the highest resident set during one forward +
backward above the set before it (sampled; CPU torch has no allocator statistics).
Gradient error: the largest relative difference from ``torchdiffeq``'s gradients.

    python benchmarks/gradients.py [--repeats 7] [--horizon 1] [--window 128]
        [--out benchmarks/results/gradients.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from harness.timing import SETTLE

import picard
from picard.ode.batching import batched_form

N, BATCH = 1000, 16
SOLVERS = (
    "torchdiffeq", "torchdiffeq adjoint", "picard", "picard adjoint", "picard, backward by sweeps"
)  # fmt: skip


class ODEFunc(torch.nn.Module):
    """torchdiffeq's ``ode_demo`` field: an MLP of ``y**3``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2)
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y**3)


def setup(horizon: float) -> tuple[ODEFunc, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The field, y0 (16 starts), the grid and the target (the demo's spiral, by Euler)."""
    func = ODEFunc()
    gen = torch.Generator().manual_seed(1)
    y0 = torch.randn(BATCH, 2, generator=gen)
    t = torch.linspace(0.0, horizon, N + 1)
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    with torch.no_grad():
        target = [y0]
        for i in range(N):
            target.append(target[-1] + (t[i + 1] - t[i]) * (target[-1] ** 3) @ a)
    return func, y0, t, torch.stack(target)


def run(name: str, func, y0, t, target) -> tuple[float, list[torch.Tensor], dict]:
    """One forward + backward: seconds, the gradients, picard's sweeps."""
    import torchdiffeq

    params = list(func.parameters())
    info: dict = {}
    start = time.perf_counter()
    if name == "torchdiffeq":
        ys = torchdiffeq.odeint(func, y0, t, method="euler")
    elif name == "torchdiffeq adjoint":
        ys = torchdiffeq.odeint_adjoint(func, y0, t, method="euler")
    elif name.startswith("picard window="):
        window = int(name.split("=")[1])
        ys, stats = picard.odeint(func, y0, t, return_stats=True, window=window, method="euler")
    elif name == "picard":
        ys, stats = picard.odeint(func, y0, t, return_stats=True, method="euler")
    elif name == "picard, backward by sweeps":  # the state is small: force the sweeps
        from harness import backward_by_sweeps

        with backward_by_sweeps():
            ys, stats = picard.odeint(func, y0, t, return_stats=True, method="euler")
            loss = (ys - target).abs().mean()
            grads = torch.autograd.grad(loss, params)
    else:
        ys, stats = picard.odeint_adjoint(func, y0, t, return_stats=True, method="euler")
    if name != "picard, backward by sweeps":
        loss = (ys - target).abs().mean()
        grads = torch.autograd.grad(loss, params)
    seconds = time.perf_counter() - start
    if name.startswith("picard") and stats.backward:
        (back,) = stats.backward
        info = {
            "forward_sweeps": stats.iterations,
            "forward_evaluations": stats.evaluations,
            "backward_sweeps": back.iterations,
            "backward_evaluations": back.evaluations,
        }
    elif name.startswith("picard"):  # a repeated call learned to step: autograd's backward
        info = {
            "forward_sweeps": f"{stats.iterations} stepped",
            "forward_evaluations": stats.evaluations,
            "backward_sweeps": "autograd",
            "backward_evaluations": stats.evaluations,
        }
    return seconds, grads, info


def resident_mib() -> float:
    """The process's resident set now (Linux ``/proc/self/statm``), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_during(fn) -> float:
    """MiB: the highest resident set while ``fn()`` runs, above the set before it (sampled
    every 0.2 ms from a thread; torch releases the GIL in its kernels)."""
    base, peak, done = resident_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(2e-4)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], resident_mib()) - base


def peak_memory(name: str, horizon: float) -> float:
    """MiB: the resident set's peak rise during one forward + backward, in a fresh process.

    A 10-step run first initialises what runs once (kernels, vmap); the heap then grows
    from there. Blocks of 64 KiB and more are mmapped, so freed ones leave the set.
    """
    code = (
        "import sys, torch; sys.path.insert(0, 'benchmarks'); torch.set_num_threads(1);"
        "import gradients as g;"
        f"f, y0, t, target = g.setup({horizon}); g.run({name!r}, f, y0, t[:11], target[:11]);"
        f"print(g.peak_during(lambda: g.run({name!r}, f, y0, t, target)))"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--horizon", type=float, default=1.0)
    parser.add_argument("--window", type=int, action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    solvers = (*SOLVERS, *(f"picard window={w}" for w in args.window))
    torch.set_num_threads(1)
    func, y0, t, target = setup(args.horizon)
    times: dict[str, list[float]] = {name: [] for name in solvers}
    grads: dict[str, list[torch.Tensor]] = {}
    info: dict[str, dict] = {}
    for _ in range(SETTLE):  # warm-up: picard's repeated calls try each way twice
        for name in solvers:
            run(name, func, y0, t, target)
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits all
        for name in solvers:
            seconds, g, i = run(name, func, y0, t, target)
            times[name].append(seconds)
            grads[name], info[name] = g, i
    probe = []
    with torch.no_grad():
        for _ in range(args.repeats):
            start = time.perf_counter()
            batched_form(func, "func", "auto", t, y0)
            probe.append(time.perf_counter() - start)
    ref = grads["torchdiffeq"]
    base = statistics.median(times["torchdiffeq"])
    lines = [
        f"**Neural ODE forward + backward: torchdiffeq's ode_demo field, batch {BATCH}, "
        f"N = {N} Euler steps on [0, {args.horizon:g}], 1 thread**",
        "",
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"median of {args.repeats} interleaved repeats; `python benchmarks/gradients.py "
        f"--horizon {args.horizon:g}" + "".join(f" --window {w}" for w in args.window) + "`.",
        "",
        "| solver | forward + backward (ms) | speedup vs torchdiffeq | peak memory rise (MiB) "
        "| sweeps (fwd / bwd) | evaluations (fwd / bwd) | gradient rel. error |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    results = {}
    for name in solvers:
        med = statistics.median(times[name])
        err = max(
            float((a - b).abs().max()) / float(b.abs().max())
            for a, b in zip(grads[name], ref, strict=True)
        )
        mem = peak_memory(name, args.horizon)
        i = info[name]
        sweeps = f"{i['forward_sweeps']} / {i['backward_sweeps']}" if i else f"{N} / {N}"
        evals = f"{i['forward_evaluations']} / {i['backward_evaluations']}" if i else ""
        lines.append(
            f"| {name} | {1e3 * med:.1f} | {base / med:.1f}x | {mem:.1f} | {sweeps} | {evals} "
            f"| {err:.1e} |"
        )
        results[name] = dict(median_seconds=med, speedup=base / med, peak_mib=mem,
                             gradient_rel_error=err, **i)  # fmt: skip
    probe_ms = 1e3 * statistics.median(probe)
    lines += [
        "",
        f'The `batched="auto"` probe (5 rows one at a time, vmapped and together) took '
        f"{probe_ms:.2f} ms, {100 * probe_ms / 1e3 / statistics.median(times['picard']):.1f}% "
        "of picard's forward + backward.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        results["probe_ms"] = probe_ms
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
