"""Issue 23: every torchdiffeq method through ``picard.odeint``, against torchdiffeq.

A damped oscillator with a time-dependent stiffness (batch 16, float64) on [0, 10] at
201 output points. Fixed-grid methods step on the output times; the Adams methods take
their defaults; the adaptive ones rtol 1e-7, atol 1e-9. For each method: picard's answer
at its default against torchdiffeq's answer (or, for the methods the installed
torchdiffeq lacks, against picard's own sequential loop, ``window=1``, ``tol=0``), the
error against a dopri8 reference at rtol 1e-12, and the median wall-clock of 7 runs of
each, one thread, the two interleaved after the warm-up rounds in which picard's repeated
calls try each way twice (:mod:`picard.ode.paths`; ``harness.timing.SETTLE``). Then
events: ``event_fn`` (the first sample's position falls to half its start) with dopri5
and with rk4 at ``step_size`` 0.01.

    python benchmarks/odeint_methods.py [--out benchmarks/results/odeint_methods]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchdiffeq
from harness import interleaved, write_results
from harness.timing import SETTLE
from torchdiffeq._impl.odeint import SOLVERS

import picard
from picard.ode.implicit import IMPLICIT

REPEATS = 7
METHODS = [
    "euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams",
    *IMPLICIT, "dopri5", "tsit5", "bosh3", "dopri8", "scipy_solver",
]  # fmt: skip


def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x'' = -(1 + 0.5 sin t) x - 0.2 x'``, batched over samples."""
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, -(1 + 0.5 * torch.sin(t)) * x - 0.2 * v], -1)


def timed(theirs: Callable[[], Any], ours: Callable[[], Any]) -> tuple[Any, float, Any, float]:
    """Both calls' results and median seconds over :data:`REPEATS` interleaved rounds."""
    runs = {"theirs": lambda _: theirs(), "ours": lambda _: ours()}
    medians, out = interleaved(runs, REPEATS, warmup=SETTLE)
    return out["theirs"], medians["theirs"], out["ours"], medians["ours"]


def method_rows(y0: torch.Tensor, t: torch.Tensor, ref: torch.Tensor) -> list[dict]:
    """One row per method."""
    rows = []
    for method in METHODS:
        theirs_known = method in SOLVERS or method == "tsit5"
        known = method if method in SOLVERS else "dopri5"  # 0.2.5 predates tsit5
        if theirs_known:
            reference = partial(torchdiffeq.odeint, field, y0, t, method=known)
        else:
            reference = partial(picard.odeint, field, y0, t, method=method, window=1, tol=0)
        theirs, their_s, (ours, stats), our_s = timed(
            reference, partial(picard.odeint, field, y0, t, method=method, return_stats=True)
        )
        rows.append({
            "method": method,
            "against": (f"torchdiffeq {known}" if known != method else "torchdiffeq")
            if theirs_known
            else "picard window=1, tol=0",
            "difference": float((ours - theirs).abs().max()),
            "error": float((ours - ref).abs().max()),
            "their_error": float((theirs - ref).abs().max()),
            "their_s": their_s,
            "our_s": our_s,
            "sweeps": stats.iterations,
            "steps": stats.num_steps,
            "sequential": stats.sequential_steps,
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def event_rows(y0: torch.Tensor) -> list[dict]:
    """``event_fn``: the first time the first sample's position falls to half its start."""
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def event(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y[0, 0] - 0.5 * y0[0, 0]

    rows = []
    for method, options in (("dopri5", {}), ("rk4", {"step_size": 0.01})):
        kw = {"method": method, "options": options, "event_fn": event}
        (their_t, theirs), their_s, (our_t, ours, stats), our_s = timed(
            partial(torchdiffeq.odeint, field, y0, t, **kw),
            partial(picard.odeint, field, y0, t, return_stats=True, **kw),
        )
        rows.append({
            "method": f"event_fn, {method}" + (" (step 0.01)" if options else ""),
            "against": "torchdiffeq",
            "difference": max(abs(float(our_t - their_t)), float((ours - theirs).abs().max())),
            "error": float("nan"),
            "their_error": float("nan"),
            "their_s": their_s,
            "our_s": our_s,
            "sweeps": stats.iterations,
            "steps": stats.num_steps,
            "sequential": stats.sequential_steps,
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/odeint_methods"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64) + 0.3 * torch.randn(
        16, 2, dtype=torch.float64
    )
    t = torch.linspace(0, 10, 201, dtype=torch.float64)
    ref = torchdiffeq.odeint(field, y0, t, method="dopri8", rtol=1e-12, atol=1e-12)
    rows = method_rows(y0, t, ref) + event_rows(y0)
    header = (
        "| method | compared with | picard − it | picard error | its error | its s | "
        "picard s | speed-up | sweeps | steps | stepped one by one |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r['method']} | {r['against']} | {r['difference']:.1e} | {r['error']:.1e} | "
        f"{r['their_error']:.1e} | {r['their_s']:.3f} | {r['our_s']:.3f} | "
        f"{r['their_s'] / r['our_s']:.2f}x | {r['sweeps']} | {r['steps']} | "
        f"{r['sequential']} |"
        for r in rows
    ]
    text = (
        "**Issue 23: every torchdiffeq method (`python benchmarks/odeint_methods.py`)**: "
        "a damped oscillator with time-dependent stiffness, batch 16, float64, [0, 10] at "
        "201 points; errors max abs against dopri8 at rtol 1e-12.\n\n"
        + header
        + "\n"
        + "\n".join(lines)
        + "\n"
    )
    write_results(args.out, rows, text)


if __name__ == "__main__":
    main()
