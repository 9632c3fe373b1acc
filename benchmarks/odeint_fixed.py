"""Issue 23: fixed-grid methods (euler, rk4) against torchdiffeq, sweeps only and learned.

A repeated fixed-grid call learns whether the sweeps, the steps or (a small state)
Newton's method is fastest (:mod:`picard.ode.paths`), as the adaptive methods do. Three
runs, interleaved, median of 15 after the warm-up rounds that cover the learning's trials
(``harness.timing.SETTLE``), one thread: torchdiffeq, picard held to the sweeps (within
``picard.ode.paths.sweeps_only()``: what every fixed-grid call ran before the learning),
and picard as a user calls it, settled. Difference: max abs against torchdiffeq's own
answer on the same grid (the same discretisation); the way is the last call's.

    python benchmarks/odeint_fixed.py [--out benchmarks/results/odeint_fixed]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchdiffeq
from harness import interleaved, write_results
from harness.timing import SETTLE

import picard
from picard.ode.paths import sweeps_only

REPEATS = 15
RUNS = ("torchdiffeq", "picard, sweeps only", "picard")


def cases() -> list[tuple[str, Callable[..., Any], torch.Tensor, torch.Tensor, str, bool]]:
    """``(name, func, y0, t, method, backward)``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    demo = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])

    def neural(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(y**3)

    def start(batch: int) -> torch.Tensor:
        return torch.tensor([[2.0, 0.0]]).repeat(batch, 1) + 0.1 * torch.randn(batch, 2)

    out = []
    for method, points in (("rk4", 100), ("euler", 1000)):
        for batch in (16, 256):
            name = f"neural ODE fwd+bwd, {method}, {points - 1} steps, batch {batch}"
            out.append((name, neural, start(batch), torch.linspace(0, 1, points), method, True))
    out.append(("ode_demo field, rk4, 99 steps, batch 16", lambda t, y: (y**3) @ demo,
                start(16), torch.linspace(0, 1, 100), "rk4", False))  # fmt: skip
    return out


def run(
    name: str, func: Any, y0: torch.Tensor, t: torch.Tensor, method: str, backward: bool
) -> dict[str, Any]:
    """The three runs on one case: differences from torchdiffeq, median seconds, the way."""
    row: dict[str, Any] = {"case": name}

    def solve(label: str) -> Callable[[torch.Tensor], Any]:
        def call(x: torch.Tensor) -> Any:
            if label == "torchdiffeq":
                ys, stats = torchdiffeq.odeint(func, x, t, method=method), None
            elif label == "picard":
                ys, stats = picard.odeint(func, x, t, method=method, return_stats=True)
            else:
                with sweeps_only():
                    ys, stats = picard.odeint(func, x, t, method=method, return_stats=True)
            if backward:
                ys.pow(2).sum().backward()
            return ys.detach(), stats

        return call

    medians, results = interleaved(
        {label: solve(label) for label in RUNS},
        REPEATS,
        setup=lambda label: y0.clone().requires_grad_(backward),
        warmup=SETTLE,
    )
    theirs = results["torchdiffeq"][0].double()
    for label in RUNS:
        row[f"{label} seconds"] = medians[label]
        if label != "torchdiffeq":
            row[f"{label} difference"] = float((results[label][0].double() - theirs).abs().max())
    stats = results["picard"][1]
    newton = "newton_steps" in stats.acceleration
    stepped = stats.sequential_steps == stats.num_steps
    row["way"] = "Newton" if newton else "steps" if stepped else "sweeps"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/odeint_fixed"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (
        "| case | torchdiffeq s | sweeps only: s, speed-up | learned: s, speed-up | "
        "learned way | difference from torchdiffeq (sweeps, learned) |\n"
        "|---|---:|---:|---:|---|---:|"
    )
    print(header, flush=True)
    rows, lines = [], []
    for case in cases():
        r = run(*case)
        rows.append(r)
        base = r["torchdiffeq seconds"]
        sweeps, learned = r["picard, sweeps only seconds"], r["picard seconds"]
        lines.append(
            f"| {r['case']} | {base:.4f} | {sweeps:.4f}, {base / sweeps:.2f}x | "
            f"{learned:.4f}, {base / learned:.2f}x | {r['way']} | "
            f"{r['picard, sweeps only difference']:.1e}, {r['picard difference']:.1e} |"
        )
        print(lines[-1], flush=True)
    text = (
        "**Issue 23: fixed-grid methods, repeated calls (`python benchmarks/odeint_fixed.py`)**"
        ": float32, one CPU thread, median of 15 interleaved calls.\n\n"
        + header + "\n" + "\n".join(lines) + "\n"
    )  # fmt: skip
    write_results(args.out, rows, text)


if __name__ == "__main__":
    main()
