"""Issue 23: torchdiffeq's default call (dopri5, rtol 1e-7, atol 1e-9), picard against
torchdiffeq, on the issue's cases: a harmonic oscillator at 11 points over [0, 10],
torchdiffeq's ode_demo field (batch 16, 100 output points) on [0, 1] and [0, 25], and a
neural ODE (MLP on the cubed state) forward + backward on [0, 1] and [0, 25], by
``odeint`` and by ``odeint_adjoint`` (against torchdiffeq's own of each). Error: max
abs against torchdiffeq at rtol 1e-10 (the oscillator: against the exact solution);
time: median of 15, one thread, the two interleaved. Repeated calls learn which way is
fastest (:mod:`picard.ode.paths`: each way tried twice); the warm-up rounds
(``harness.timing.SETTLE``) cover those trials, so the median is the settled calls' that a
training loop sees. The columns after the speed-up are the last call's.

    python benchmarks/odeint_default.py [--out benchmarks/results/odeint_default]
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

REPEATS = 15


def cases() -> list[tuple[str, Callable[..., Any], torch.Tensor, torch.Tensor, bool]]:
    """``(name, func, y0, t, backward)``."""
    torch.manual_seed(0)
    osc = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    demo = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    y16 = torch.tensor([[2.0, 0.0]]) + 0.5 * torch.randn(16, 1, 2)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))

    def neural(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(y**3)

    yn = torch.tensor([[2.0, 0.0]]).repeat(16, 1) + 0.1 * torch.randn(16, 2)
    out = [("oscillator, [0, 10], float64", lambda t, y: y @ osc.T,
            torch.tensor([1.0, 0.0], dtype=torch.float64),
            torch.linspace(0, 10, 11, dtype=torch.float64), False)]  # fmt: skip
    for span in (1.0, 25.0):
        out.append((f"ode_demo field, [0, {span:g}]", lambda t, y: (y**3) @ demo, y16,
                    torch.linspace(0, span, 100), False))  # fmt: skip
    for span in (1.0, 25.0):
        out.append((f"neural ODE fwd+bwd, [0, {span:g}]", neural, yn,
                    torch.linspace(0, span, 100), True))  # fmt: skip
    for span in (1.0, 25.0):  # torchdiffeq's adjoint_params: a closure is no Module
        neural.adjoint_params = tuple(net.parameters())  # type: ignore[attr-defined]
        out.append((f"neural ODE fwd+bwd, odeint_adjoint, [0, {span:g}]", neural, yn,
                    torch.linspace(0, span, 100), True))  # fmt: skip
    return out


def run(name: str, func: Any, y0: torch.Tensor, t: torch.Tensor, backward: bool) -> dict:
    """Both solvers on one case: errors, median seconds, picard's sweeps."""
    if "oscillator" in name:
        ref = torch.stack([torch.cos(t), -torch.sin(t)], 1)
    else:  # in the case's dtype (float32: its rounding is far below the errors compared)
        ref = torchdiffeq.odeint(func, y0, t, rtol=1e-10, atol=1e-12).detach()
    row: dict[str, Any] = {"case": name}

    def solve(label: str) -> Callable[[torch.Tensor], Any]:
        def call(x: torch.Tensor) -> Any:
            if "odeint_adjoint" in name:
                params = func.adjoint_params
                if label == "picard":
                    ys, stats = picard.odeint_adjoint(func, x, t, adjoint_params=params,
                                                      return_stats=True)  # fmt: skip
                else:
                    ys, stats = torchdiffeq.odeint_adjoint(func, x, t, adjoint_params=params), None
            elif label == "picard":
                ys, stats = picard.odeint(func, x, t, return_stats=True)
            else:
                ys, stats = torchdiffeq.odeint(func, x, t), None
            if backward:
                ys.pow(2).sum().backward()
            return ys, stats

        return call

    medians, results = interleaved(
        {label: solve(label) for label in ("torchdiffeq", "picard")},
        REPEATS,
        setup=lambda label: y0.clone().requires_grad_(backward),
        warmup=SETTLE,
    )
    for label, (ys, _) in results.items():
        row[f"{label}_error"] = float((ys.detach().double() - ref.double()).abs().max())
        row[f"{label}_seconds"] = medians[label]
    stats = results["picard"][1]
    row["sweeps"], row["steps"], row["stepped"] = (
        stats.iterations, stats.num_steps, stats.sequential_steps,
    )  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/odeint_default"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (
        "| case | torchdiffeq error | picard error | torchdiffeq s | picard s | speed-up | "
        "picard sweeps | steps | stepped one by one |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    print(header, flush=True)
    rows, lines = [], []
    for case in cases():
        r = run(*case)
        rows.append(r)
        lines.append(
            f"| {r['case']} | {r['torchdiffeq_error']:.1e} | {r['picard_error']:.1e} | "
            f"{r['torchdiffeq_seconds']:.3f} | {r['picard_seconds']:.3f} | "
            f"{r['torchdiffeq_seconds'] / r['picard_seconds']:.2f}x | {r['sweeps']} | "
            f"{r['steps']} | {r['stepped']} |"
        )
        print(lines[-1], flush=True)
    text = (
        "**Issue 23: torchdiffeq's default call, `odeint(func, y0, t)` "
        "(`python benchmarks/odeint_default.py`)**\n\n" + header + "\n" + "\n".join(lines) + "\n"
    )
    write_results(args.out, rows, text)


if __name__ == "__main__":
    main()
