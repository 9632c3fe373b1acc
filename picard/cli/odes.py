"""``picard odes``: ODEs and an SDE solved sequentially and with picard, side by side."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import picard
from picard.cli.runs import median_time
from picard.ode.integrate import METHODS

__all__ = ["run_odes"]


@dataclass(frozen=True)
class Row:
    """One line of the demo table."""

    name: str
    steps: int
    sweeps: int
    evaluations: int
    sequential_s: float
    parallel_s: float
    deviation: float


def _rk_loop(func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t: Tensor, method: str):
    """The plain sequential Runge–Kutta loop: one call of one row per stage and step."""
    tab = METHODS[method]
    hs = (t[1:] - t[:-1]).tolist()
    stage_t = [[(t[i] + c * h).reshape(1) for c in tab.c] for i, h in enumerate(hs)]
    y = y0[None]
    for h, times in zip(hs, stage_t, strict=True):
        ks: list[Tensor] = []
        for tc, row in zip(times, tab.a, strict=True):
            yi = y
            for a, k in zip(row, ks, strict=False):
                if a:
                    yi = yi + (h * a) * k
            ks.append(func(tc, yi))
        for b, k in zip(tab.b, ks, strict=True):
            if b:
                y = y + (h * b) * k
    return y[0]


def _em_loop(f, g, y0: Tensor, t: Tensor, dW: Tensor) -> Tensor:
    """The plain sequential Euler–Maruyama loop."""
    hs, y = (t[1:] - t[:-1]).tolist(), y0[None]
    times = [t[i : i + 1] for i in range(len(hs))]
    for h, ti, dw in zip(hs, times, dW, strict=True):
        y = y + h * f(ti, y) + g(ti, y) * dw
    return y[0]


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 128),
        torch.nn.Tanh(),
        torch.nn.Linear(128, 128),
        torch.nn.Tanh(),
        torch.nn.Linear(128, 2),
    )


def _compare(
    name: str,
    sequential: Callable[[], Tensor],
    parallel: Callable[[], tuple[Tensor, picard.Stats]],
    repeats: int,
) -> Row:
    """Time a sequential loop and its picard counterpart; compare the final states."""
    ref, seq_s = median_time(sequential, repeats)
    (ys, stats), par_s = median_time(parallel, repeats)
    deviation = float((ys[-1] - ref).abs().max())
    return Row(name, stats.num_steps, stats.iterations, stats.evaluations, seq_s, par_s, deviation)


def _demo_rows(steps: int, window: int | str, tol: float, repeats: int, seed: int) -> list[Row]:
    net = _mlp(seed)

    def neural(t: Tensor, y: Tensor) -> Tensor:
        return net(torch.cat([y, t[:, None].to(y.dtype)], dim=-1))

    def van_der_pol(t: Tensor, y: Tensor) -> Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, (1 - x * x) * v - x], dim=-1)

    def noise(t: Tensor, y: Tensor) -> Tensor:
        return 0.3 * torch.ones_like(y)

    y0 = torch.tensor([0.5, -0.5])
    t = torch.linspace(0.0, 1.0, steps + 1)
    vdp0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    vdp_t = torch.linspace(0.0, 10.0, 2 * steps + 1, dtype=torch.float64)
    dW = torch.randn(steps, 2, generator=torch.Generator().manual_seed(seed)) / math.sqrt(steps)
    return [
        _compare(
            "neural ODE (MLP 3x128), Euler",
            lambda: _rk_loop(neural, y0, t, "euler"),
            lambda: picard.odeint(
                neural, y0, t, window=window, tol=tol, return_stats=True, method="euler"
            ),
            repeats,
        ),
        _compare(
            "Van der Pol (mu = 1), RK4",
            lambda: _rk_loop(van_der_pol, vdp0, vdp_t, "rk4"),
            lambda: picard.odeint(
                van_der_pol, vdp0, vdp_t, method="rk4", window=window, tol=tol, return_stats=True
            ),
            repeats,
        ),
        _compare(
            "neural SDE (MLP drift), Euler-Maruyama",
            lambda: _em_loop(neural, noise, y0, t, dW),
            lambda: picard.sdeint(
                neural, noise, y0, t, dW=dW, window=window, tol=tol, return_stats=True
            ),
            repeats,
        ),
    ]


def run_odes(args: argparse.Namespace) -> int:
    """Each problem sequentially and with picard, the same inputs; prints the table.

    Args:
        args: the options of ``picard odes``: ``steps`` (per problem; Van der Pol takes
            twice as many), ``window``, ``tol``, ``repeats`` (timing repeats, the median is
            kept), ``seed`` (of the MLP and the Brownian increments) and ``threads``
            (torch's thread count, set for the run).

    Returns:
        The exit status, 0.

    Example:
        >>> import argparse
        >>> args = argparse.Namespace(steps=20, window=8, tol=1e-4, repeats=1, seed=0,
        ...                           threads=torch.get_num_threads())
        >>> run_odes(args)
        picard ... odes: torch ..., window 8, tol 0.0001, median of 1 runs
        <BLANKLINE>
        problem  ...
        neural ODE (MLP 3x128), Euler  20  ...
        Van der Pol (mu = 1), RK4  40  ...
        neural SDE (MLP drift), Euler-Maruyama  20  ...
        <BLANKLINE>
        sweeps = sequential rounds of batched drift calls (the sequential solver needs ...
        0
    """
    torch.set_num_threads(args.threads)
    print(
        f"picard {picard.__version__} odes: torch {torch.__version__}, "
        f"{args.threads} thread(s), window {args.window}, tol {args.tol:g}, "
        f"median of {args.repeats} runs\n"
    )
    with torch.no_grad():
        rows = _demo_rows(args.steps, args.window, args.tol, args.repeats, args.seed)
    header = (
        "problem",
        "steps",
        "sweeps",
        "evals/step",
        "sequential",
        "picard",
        "speedup",
        "max |picard - sequential|",
    )
    lines = [header] + [
        (
            r.name,
            str(r.steps),
            str(r.sweeps),
            f"{r.evaluations / r.steps:.1f}",
            f"{1e3 * r.sequential_s:.1f} ms",
            f"{1e3 * r.parallel_s:.1f} ms",
            f"{r.sequential_s / r.parallel_s:.1f}x",
            f"{r.deviation:.1e}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for k, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print(
        "\nsweeps = sequential rounds of batched drift calls (the sequential solver needs "
        "one per step)."
    )
    return 0
