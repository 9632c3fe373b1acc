"""picard.odeint vs the sequential loop on a 3-layer width-128 MLP drift (2-D state).

N = 1000 Euler steps on t in [0, 1], tol = 1e-4, torch on one thread. Reports, measured
side by side in one run (medians of interleaved repeats): wall-clock ratio to the plain
sequential loop, sweeps, evaluations, the deviation from the sequential result, and the
solver's own overhead per sweep (time not spent in the drift) as a fraction of one drift
call of that window.

    python benchmarks/odeint_mlp.py [--repeats 7] [--json benchmarks/results/odeint_mlp.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import picard

N = 1000
TOL = 1e-4
WINDOWS = (32, 128, 1000)


class MLP(torch.nn.Module):
    """f(t, y) = MLP([y, t]): 3 linear layers, width 128, tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 128),
            torch.nn.Tanh(),
            torch.nn.Linear(128, 128),
            torch.nn.Tanh(),
            torch.nn.Linear(128, 2),
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, t[:, None]], dim=-1))


class Timed:
    """Wrap a drift: add up the time spent inside it, note the first and last call."""

    def __init__(self, fn: MLP) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0
        self.first = self.last = 0.0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.fn(t, y)
        self.last = time.perf_counter()
        self.first = self.first or t0
        self.seconds += self.last - t0
        self.calls += 1
        return out


def sequential_loop(f: MLP, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The plain sequential Euler loop, one drift call of one row per step."""
    ts = [t[i : i + 1] for i in range(N)]
    hs = (t[1:] - t[:-1]).tolist()
    y = y0[None]
    for ti, h in zip(ts, hs, strict=True):
        y = y + h * f(ti, y)
    return y[0]


def _print_table(rows: list[tuple[str, dict]], repeats: int) -> None:
    """The results as a markdown table, after a two-line heading."""
    print(f"# odeint, MLP 3x128 drift, 2-D state, N={N} Euler steps, tol={TOL}, 1 thread")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"median of {repeats}"
    )
    print(
        "| solver | sweeps | evaluations | wall-clock (ms) | speedup vs sequential "
        "| max abs error | drift call (µs) | solver overhead per sweep (µs) "
        "| overhead / drift call |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, e in rows:
        extra = "| | | |"
        if "drift_call_us" in e:
            loop, fixed = e["loop_overhead_us_per_sweep"], e["fixed_overhead_us_per_solve"]
            extra = (
                f"| {e['drift_call_us']:.0f} | {loop + fixed / e['sweeps']:.0f} "
                f"({loop:.0f} loop + {fixed:.0f} per solve / {e['sweeps']}) "
                f"| {100 * e['overhead_per_sweep_vs_drift_call']:.0f}% |"
            )
        print(
            f"| {name} | {e['sweeps']} | {e['evaluations']} | {1e3 * e['median_seconds']:.2f} "
            f"| {e['speedup']:.1f}x | {e['max_abs_error']:.1e} {extra}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    f = MLP()
    y0 = torch.tensor([0.5, -0.5])
    t = torch.linspace(0.0, 1.0, N + 1)

    import torchdiffeq

    runs: dict[str, list[float]] = {"sequential": [], "torchdiffeq": []}
    runs.update({f"picard W={w}": [] for w in WINDOWS})
    overhead: dict[int, list[float]] = {w: [] for w in WINDOWS}
    loop_us: dict[int, list[float]] = {w: [] for w in WINDOWS}
    fixed_us: dict[int, list[float]] = {w: [] for w in WINDOWS}
    call_us: dict[int, list[float]] = {w: [] for w in WINDOWS}
    results: dict[str, dict] = {}
    with torch.no_grad():
        reference = sequential_loop(f, y0, t)
        for _ in range(args.repeats):  # interleaved, so drift in machine speed hits all
            t0 = time.perf_counter()
            sequential_loop(f, y0, t)
            runs["sequential"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torchdiffeq.odeint(lambda s, y: f(s.reshape(1), y), y0[None], t, method="euler")
            runs["torchdiffeq"].append(time.perf_counter() - t0)
            for w in WINDOWS:
                timed = Timed(f)
                t0 = time.perf_counter()
                ys, stats = picard.odeint(
                    timed, y0, t, window=w, tol=TOL, return_stats=True, method="euler"
                )
                end = time.perf_counter()
                total = end - t0
                runs[f"picard W={w}"].append(total)
                per_call = timed.seconds / timed.calls
                overhead[w].append((total - timed.seconds) / stats.iterations / per_call)
                # Between the first and the last drift call: the steady per-sweep loop.
                between = timed.last - timed.first - timed.seconds
                loop_us[w].append(1e6 * between / (stats.iterations - 1))
                fixed_us[w].append(1e6 * (total - timed.seconds - between))
                call_us[w].append(1e6 * per_call)
                results[f"picard W={w}"] = {
                    "sweeps": stats.iterations,
                    "evaluations": stats.evaluations,
                    "max_abs_error": float((ys[-1] - reference).abs().max()),
                }
    seq = statistics.median(runs["sequential"])
    rows = []
    for name, times in runs.items():
        med = statistics.median(times)
        entry = results.setdefault(name, {"sweeps": N, "evaluations": N, "max_abs_error": 0.0})
        entry.update(median_seconds=med, speedup=seq / med)
        if name.startswith("picard"):
            w = int(name.split("=")[1])
            entry["overhead_per_sweep_vs_drift_call"] = statistics.median(overhead[w])
            entry["loop_overhead_us_per_sweep"] = statistics.median(loop_us[w])
            entry["fixed_overhead_us_per_solve"] = statistics.median(fixed_us[w])
            entry["drift_call_us"] = statistics.median(call_us[w])
        rows.append((name, entry))
    _print_table(rows, args.repeats)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"N": N, "tol": TOL, "results": results}, indent=2))


if __name__ == "__main__":
    main()
