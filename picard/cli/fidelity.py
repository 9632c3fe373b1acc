"""The fidelity benchmark: does a tolerance give the sample you asked for?

A 16-D Gaussian mixture with 4 well-separated modes (component variance 0.1, means drawn
N(0, 4I)) whose ε is exact (``picard.models.gmm``), 64 samples (one seed each), window 64.
Samplers: DDPM-100/1000, DDIM-50/200, DPM-Solver++ 2M-25, Euler-50 (VP ε-model), and
flow-matching Euler-50 (exact velocity). For each: the ParaDiGMS algorithm (plain
Picard, noise-scaled test) at tol 0.1 and 0.01, picard with the noise-scaled test at 0.1
(its default before the relative test), picard's default (tol 0.01 relative to each
state's RMS), and the default with ``verify=True``; first, the sequential sampler itself
with its noise multiplied by ``1 + 1e-15 ε`` (a few float64 ulps): how far rounding alone
moves its samples, the floor under every method's error.
Columns: sweeps, evaluations per step, the final samples' RMS distance to the sequential
ones relative to the samples' RMS (batch and worst sample), how many samples land in a
different mode than the sequential sampler puts them, and for ``verify``: the error
estimate against the true error of the solution it estimates (verify's next-to-last solve,
re-run here: the default run when one verification sufficed; worst sample, each relative
to its own RMS).
``clip_sample`` (on by default in diffusers' DDPM/DDIM configs, meant for data in [-1, 1])
is run both ways.

Run it with ``picard bench --fidelity`` or ``python benchmarks/fidelity.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

import picard
from picard.adapters.diffusers import from_scheduler
from picard.adapters.schedulers import schedules
from picard.core.verify import REFINEMENT, relative_error
from picard.models.gmm import GaussianMixture

SAMPLERS = [
    ("ddpm", DDPMScheduler, 100, {}),
    ("ddpm", DDPMScheduler, 1000, {}),
    ("ddim", DDIMScheduler, 50, {}),
    ("ddim", DDIMScheduler, 200, {}),
    ("dpmsolver++2m", DPMSolverMultistepScheduler, 25, {"solver_order": 2}),
    ("euler", EulerDiscreteScheduler, 50, {}),
    ("flow-euler", FlowMatchEulerDiscreteScheduler, 50, {}),
]
_PARADIGMS = {  # ParaDiGMS's algorithm, as picard options
    "predict": False,
    "relative": False,
    "accelerate": None,
    "acceptance": "first-unconverged",
}
METHODS: dict[str, dict[str, Any]] = {
    "ParaDiGMS tol 0.1": {"tol": 0.1, **_PARADIGMS},
    "ParaDiGMS tol 0.01": {"tol": 0.01, **_PARADIGMS},
    "picard noise-scaled tol 0.1": {"tol": 0.1, "relative": False},
    "picard default (tol 0.01)": {},
    "picard default + verify": {"verify": True},
}
ROUNDING = "sequential, noise × (1 + 1e-15 ε)"
"""The row of the sequential sampler itself, its noise perturbed by a few float64 ulps."""
HEADER = (
    "| clip_sample | sampler | method | sweeps | evals/step | rel. RMS err | worst sample | "
    "mode changes | estimate / true error |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
)


__all__ = ["METHODS", "SAMPLERS", "mixture", "run", "table", "write"]


def mixture(seed: int = 0) -> GaussianMixture:
    """The benchmark's mixture (seed 0; other seeds for other mixtures of the same kind).

    Args:
        seed: the seed the means are drawn with.

    Returns:
        A :class:`~picard.models.gmm.GaussianMixture` of 4 equal-weight components in 16-D,
        means drawn N(0, 4I) with ``seed``, variance 0.1 (float64).

    Example:
        >>> g = mixture()
        >>> g.means.shape, g.weights.tolist(), torch.equal(g.means, mixture().means)
        (torch.Size([4, 16]), [0.25, 0.25, 0.25, 0.25], True)
        >>> gaps = torch.cdist(g.means, g.means) + 1e9 * torch.eye(4, dtype=torch.float64)
        >>> bool(gaps.min() > 10 * g.stds.max())  # well-separated modes
        True
    """
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(4, 16, generator=g, dtype=torch.float64)
    stds = torch.full((4,), 0.1**0.5, dtype=torch.float64)
    return GaussianMixture(means, stds, torch.full((4,), 0.25, dtype=torch.float64))


def run(
    samples: int = 64,
    log: Callable[[str], None] = print,
    samplers: Sequence[tuple[str, Any, int, dict[str, Any]]] = SAMPLERS,
) -> list[dict[str, Any]]:
    """Every sampler × method × ``clip_sample``; one row each, logged as it comes.

    Args:
        samples: samples per run (one seed each: seeds ``0 .. samples - 1``).
        log: called with each row as a line of the markdown table.
        samplers: ``(name, scheduler class, steps, config overrides)`` to run (default
            :data:`SAMPLERS`).

    Returns:
        One dict per ``clip_sample``, sampler and method (flow matching runs without
        clipping only), with the keys ``clip_sample``, ``sampler``, ``method``,
        ``sweeps``, ``evals_per_step``, ``relative_rms_error``, ``worst_sample``,
        ``mode_changes``, ``error_estimate``, ``estimated_error`` (the true error of
        the solution the estimate is about; both ``None`` without ``verify``) and
        ``verifications``.

    Example:
        >>> rows = run(samples=2, log=lambda line: None, samplers=SAMPLERS[2:3])
        >>> len(rows), rows[0]["sampler"], rows[0]["mode_changes"]
        (12, 'ddim-50', 0)
        >>> sorted({r["method"] for r in rows}) == sorted([ROUNDING, *METHODS])
        True
        >>> {r["clip_sample"] for r in rows}
        {False, True}
    """
    gmm = mixture()
    rows = []
    for clip in (False, True):
        base = DDPMScheduler(clip_sample=clip)
        for name, cls, n, extra in samplers:
            if cls is FlowMatchEulerDiscreteScheduler:
                if clip:
                    continue  # flow matching does not clip
                sched, eps = cls(**extra), gmm.velocity()
            else:
                sched = cls.from_config(base.config, **extra)
                eps = gmm.denoiser(schedules.alphas_cumprod(base.config))

            def solve(
                sched: Any = sched, eps: Any = eps, n: int = n, perturb: float = 0.0, **kw: Any
            ) -> Any:
                gens = [torch.Generator().manual_seed(s) for s in range(samples)]
                x = torch.cat([torch.randn(1, 16, generator=g, dtype=torch.float64) for g in gens])
                if perturb:  # the sampler's own sensitivity to rounding
                    g = torch.Generator().manual_seed(samples)
                    x = x * (1 + perturb * torch.randn(x.shape, generator=g, dtype=x.dtype))
                problem = from_scheduler(sched, eps, n, generator=gens)
                sigma = float(getattr(problem.rule, "init_noise_sigma", 1.0))
                return picard.solve(problem, x * sigma, **kw)

            ref = solve(window=1, tol=0).final
            scale = ref.pow(2).mean().sqrt()
            floor = {ROUNDING: {"window": 1, "tol": 0, "perturb": 1e-15}}
            for method, opts in {**floor, **METHODS}.items():
                sol = solve(**{"window": min(n, 64), **opts})
                estimate = sol.stats.error_estimate
                if estimate is not None:  # the solve it estimates: verify's next to last
                    est = solve(window=min(n, 64), save=True)
                    for k in range(1, sol.stats.verifications):
                        tol = sol.stats.tol / REFINEMENT**k
                        est = solve(window=min(n, 64), tol=tol, init=est.ys, save=True)
                per = (sol.final - ref).pow(2).mean(1).sqrt() / scale
                row = {
                    "clip_sample": clip,
                    "sampler": f"{name}-{n}",
                    "method": method,
                    "sweeps": sol.stats.iterations,
                    "evals_per_step": sol.stats.evaluations / n / samples,
                    "relative_rms_error": float((sol.final - ref).pow(2).mean().sqrt() / scale),
                    "worst_sample": float(per.max()),
                    "mode_changes": int((gmm.component(sol.final) != gmm.component(ref)).sum()),
                    "error_estimate": estimate,
                    "verifications": sol.stats.verifications,
                    "estimated_error": None
                    if estimate is None
                    else relative_error(est.final, ref, 1),
                }
                rows.append(row)
                log(_line(row))
    return rows


def _line(r: dict[str, Any]) -> str:
    est, true = r.get("error_estimate"), r.get("estimated_error")
    ratio = "" if est is None else f"{est:.1e} / {true:.1e} = {est / max(true, 1e-300):.2f}"
    if est is not None and r.get("verifications", 1) > 1:
        ratio += f" ({r['verifications']} verifications)"
    return (
        f"| {r['clip_sample']} | {r['sampler']} | {r['method']} | {r['sweeps']} | "
        f"{r['evals_per_step']:.2f} | {r['relative_rms_error']:.1e} | {r['worst_sample']:.1e} | "
        f"{r['mode_changes']} | {ratio} |"
    )


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table.

    Args:
        rows: rows of :func:`run`.

    Returns:
        The table: :data:`HEADER` and one line per row, ending in a newline.

    Example:
        >>> row = {"clip_sample": False, "sampler": "ddim-50", "method": "picard default",
        ...        "sweeps": 7, "evals_per_step": 1.5, "relative_rms_error": 0.001,
        ...        "worst_sample": 0.002, "mode_changes": 0}
        >>> print(table([row]).splitlines()[-1])
        | False | ddim-50 | picard default | 7 | 1.50 | 1.0e-03 | 2.0e-03 | 0 |  |
    """
    return "\n".join([HEADER, *map(_line, rows)]) + "\n"


def write(rows: list[dict[str, Any]], out: Path) -> None:
    """``out.json`` and ``out.md`` (``out`` without suffix).

    Args:
        rows: rows of :func:`run`.
        out: the path of both files, without suffix (its folder is created if missing).

    Example:
        >>> import tempfile
        >>> row = {"clip_sample": True, "sampler": "ddpm-100", "method": "picard default",
        ...        "sweeps": 9, "evals_per_step": 2.0, "relative_rms_error": 0.01,
        ...        "worst_sample": 0.02, "mode_changes": 0}
        >>> out = Path(tempfile.mkdtemp()) / "results" / "fidelity"
        >>> write([row], out)
        >>> json.loads(out.with_suffix(".json").read_text()) == [row]
        True
        >>> out.with_suffix(".md").read_text() == table([row])
        True
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(table(rows))
