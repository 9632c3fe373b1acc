"""Issue 24: torchsde's ``sdeint`` call, picard against torchsde, forward + backward.

A latent-SDE-style model (torchsde's examples): drift and diffusion MLPs (4 → 32 → 4,
softplus/sigmoid), batch 64, ``ts`` at 11 points on [0, 1], ``dt`` 0.01 (100 steps), the
same `BrownianInterval` for both. For each method: the largest difference of picard's
path (no options) from torchsde's, the loss gradient's relative difference, and the median
seconds of 5 forward+backward runs of each, one thread, the two interleaved after a
warm-up round.

    python benchmarks/sdeint_torchsde.py [--out benchmarks/results/sdeint_torchsde]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchsde
from harness import interleaved, write_results

import picard

REPEATS = 5
CASES = [("ito", "euler"), ("ito", "milstein"), ("ito", "srk"), ("stratonovich", "midpoint"),
         ("stratonovich", "heun")]  # fmt: skip


class Latent(torch.nn.Module):
    """Drift and diagonal diffusion networks, as torchsde's latent SDE example has."""

    noise_type = "diagonal"

    def __init__(self, sde_type: str):
        super().__init__()
        self.sde_type = sde_type
        torch.manual_seed(0)
        self.drift = torch.nn.Sequential(
            torch.nn.Linear(5, 32), torch.nn.Softplus(), torch.nn.Linear(32, 4)
        )
        self.diffusion = torch.nn.Sequential(
            torch.nn.Linear(4, 32), torch.nn.Softplus(), torch.nn.Linear(32, 4), torch.nn.Sigmoid()
        )

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        time_feature = torch.sin(t) * torch.ones_like(y[:, :1])
        return self.drift(torch.cat([y, time_feature], dim=1))

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.3 * self.diffusion(y)


class Tape:
    """A Brownian object that replays increments drawn beforehand, one per step in order.

    Both solvers query each step once, in order, at fixed steps: this takes the
    `BrownianInterval`'s own cost (its dependency tree, see the table's caption) out of the
    comparison.
    """

    def __init__(self, steps: int, area: bool):
        gen = torch.Generator().manual_seed(11)
        self.shape = (64, 4)
        self.w = 0.1 * torch.randn(steps, 64, 4, generator=gen)
        self.u = 0.01 * torch.randn(steps, 64, 4, generator=gen) if area else None
        self.next = 0
        self.levy_area_approximation = "space-time" if area else "none"

    def __call__(self, ta: Any, tb: Any, return_U: bool = False) -> Any:
        k, self.next = self.next, self.next + 1
        scale = float(tb - ta) ** 0.5 / 0.1
        w = self.w[k] * scale
        return (w, self.u[k] * scale**3) if return_U else w


def run(sde_type: str, method: str, tape: bool) -> dict[str, Any]:
    """Both solvers on one method: differences and median seconds of forward + backward."""
    sde = Latent(sde_type)
    y0 = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    ts = torch.linspace(0, 1, 11)
    area = "space-time" if method == "srk" else "none"
    bm_name = "replayed increments" if tape else "BrownianInterval"
    row: dict[str, Any] = {"method": f"{method} ({sde_type})", "bm": bm_name}

    def brownian(label: str) -> Any:
        sde.zero_grad()
        if tape:
            return Tape(120, method == "srk")
        return torchsde.BrownianInterval(0.0, 1.0, (64, 4), entropy=11,
                                         levy_area_approximation=area)  # fmt: skip

    def solve(label: str) -> Callable[[Any], Any]:
        def call(bm: Any) -> Any:
            stats = None
            if label == "picard":
                ys, stats = picard.sdeint(sde, y0, ts, bm, method=method, dt=0.01,
                                          return_stats=True)  # fmt: skip
            else:
                ys = torchsde.sdeint(sde, y0, ts, bm, method=method, dt=0.01)
            ys.square().mean().backward()
            grads = torch.cat([p.grad.reshape(-1) for p in sde.parameters()])
            return ys.detach(), grads, stats

        return call

    medians, out = interleaved(
        {label: solve(label) for label in ("torchsde", "picard")}, REPEATS, setup=brownian
    )
    results = {label: (ys, grads) for label, (ys, grads, _) in out.items()}
    for label in results:
        row[f"{label}_seconds"] = medians[label]
    stats = out["picard"][2]
    row["sweeps"], row["steps"] = stats.iterations, stats.num_steps
    (a, ga), (b, gb) = results["torchsde"], results["picard"]
    row["difference"] = float((a - b).abs().max())
    row["gradient_difference"] = float((ga - gb).norm() / ga.norm())
    return row


def adaptive(sde_type: str, method: str) -> dict[str, Any]:
    """``adaptive=True`` (rtol = atol = 1e-3) in both: errors against ``dt`` 1e-4, seconds."""
    sde = Latent(sde_type)
    y0 = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    ts = torch.linspace(0, 1, 11)
    area = "space-time" if method == "srk" else "none"
    row: dict[str, Any] = {"method": f"{method} ({sde_type}), adaptive"}
    calls = {
        "reference": (torchsde.sdeint, {"dt": 1e-4}),
        "torchsde": (torchsde.sdeint, {"dt": 0.05, "adaptive": True}),
        "picard": (picard.sdeint, {"dt": 0.05, "adaptive": True, "return_stats": True}),
    }

    def brownian(label: str) -> Any:
        return torchsde.BrownianInterval(0.0, 1.0, (64, 4), entropy=11,
                                         levy_area_approximation=area)  # fmt: skip

    def solve(label: str) -> Callable[[Any], Any]:
        fn, kw = calls[label]

        def call(bm: Any) -> Any:
            with torch.no_grad():
                return fn(sde, y0, ts, bm, method=method, rtol=1e-3, atol=1e-3, **kw)

        return call

    _, reference = interleaved({"reference": solve("reference")}, 1, brownian, warmup=0)
    medians, paths = interleaved(
        {label: solve(label) for label in ("torchsde", "picard")}, REPEATS, setup=brownian
    )
    paths["reference"] = reference["reference"]
    paths["picard"], stats = paths["picard"]
    row["sweeps"], row["steps"] = stats.iterations, stats.num_steps
    for label in ("torchsde", "picard"):
        row[f"{label}_seconds"] = medians[label]
    for label in ("torchsde", "picard"):
        row[f"{label}_error"] = float((paths[label] - paths["reference"]).abs().max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sdeint_torchsde"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for tape in (False, True):
        for sde_type, method in CASES:
            rows.append(run(sde_type, method, tape))
            print(rows[-1], flush=True)
    adaptive_rows = [adaptive("ito", "euler"), adaptive("ito", "srk")]
    for r in adaptive_rows:
        print(r, flush=True)
    header = (
        "| method | bm | picard − torchsde (path) | gradient, relative | torchsde s | picard s | "
        "speed-up | sweeps | steps |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r['method']} | {r['bm']} | {r['difference']:.1e} | {r['gradient_difference']:.1e} | "
        f"{r['torchsde_seconds']:.3f} | {r['picard_seconds']:.3f} | "
        f"{r['torchsde_seconds'] / r['picard_seconds']:.2f}x | {r['sweeps']} | {r['steps']} |"
        for r in rows
    ]
    text = (
        "**Issue 24: torchsde's call, forward + backward (`python benchmarks/"
        "sdeint_torchsde.py`)**: a latent-SDE-style model, batch 64, 100 steps of 0.01, "
        "the same Brownian object for both: torchsde's `BrownianInterval` or increments drawn "
        "beforehand and replayed. With the `BrownianInterval` both spend over a second in it: "
        "one query 6.6e-7 long (the float32 output times against the steps of 0.01, a step "
        "torchsde takes and picard repeats) makes it build its dependency tree down to that "
        "size, about 52,000 splits.\n\n"
        + header
        + "\n"
        + "\n".join(lines)
        + "\n\n**`adaptive=True`, rtol = atol = 1e-3** (forward only; errors against torchsde at "
        "`dt` 1e-4 on the same `BrownianInterval`):\n\n"
        "| method | torchsde error | picard error | torchsde s | picard s | speed-up | sweeps "
        "| steps |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(
            f"| {r['method']} | {r['torchsde_error']:.1e} | {r['picard_error']:.1e} | "
            f"{r['torchsde_seconds']:.3f} | {r['picard_seconds']:.3f} | "
            f"{r['torchsde_seconds'] / r['picard_seconds']:.2f}x | {r['sweeps']} | {r['steps']} |"
            for r in adaptive_rows
        )
        + "\n"
    )
    write_results(args.out, rows + adaptive_rows, text)


if __name__ == "__main__":
    main()
