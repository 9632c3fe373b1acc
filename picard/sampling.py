"""Sampling a model both ways — diffusers' sequential loop and picard — with one seed.

Shared by ``picard demo``, ``picard sample`` and ``picard bench``: the starting latent
and then the sampler's noise come from one generator, in that order (as pipelines draw
them), so the sequential and the parallel sample are the same sample.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from picard.adapters.diffusers import from_scheduler
from picard.solution import Solution
from picard.solver import solve

__all__ = [
    "SCHEDULERS",
    "make_scheduler",
    "median_time",
    "parallel",
    "sequential",
    "start_latent",
]

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmsolver++3": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
}
"""Sampler names of the command line: a diffusers scheduler class and its overrides."""


def make_scheduler(name: str, base: Any) -> Any:
    """The scheduler ``name`` with the noise schedule of ``base`` (a model's scheduler).

    Example:
        >>> from diffusers import DDPMScheduler
        >>> type(make_scheduler("euler", DDPMScheduler())).__name__
        'EulerDiscreteScheduler'
    """
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    keys = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "prediction_type",
    )
    config = {k: base.config[k] for k in keys if k in base.config}
    if cls in ("DDPMScheduler", "DDIMScheduler"):
        config["clip_sample"] = base.config.get("clip_sample", False)
    return getattr(diffusers, cls)(**config, **overrides)


def start_latent(
    scheduler: Any, steps: int, shape: tuple[int, ...], generator: torch.Generator
) -> Tensor:
    """``randn(shape) * init_noise_sigma`` of the scheduler's grid, as pipelines start."""
    view = copy.deepcopy(scheduler)
    view.set_timesteps(steps)
    z = torch.randn(shape, generator=generator)
    return z * float(getattr(view, "init_noise_sigma", 1.0))


def sequential(
    scheduler: Any,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    x_T: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """The diffusers sequential loop: one model call and one ``scheduler.step`` per step."""
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps)
    scale = getattr(s, "scale_model_input", lambda x, t: x)
    x = x_T
    with torch.no_grad():
        for t in s.timesteps:
            out = denoiser(scale(x, t), t.reshape(1).expand(x.shape[0]))
            x = s.step(out, t, x, generator=generator).prev_sample
    return x


def parallel(
    scheduler: Any,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    x_T: Tensor,
    generator: torch.Generator | None,
    *,
    window: int | None = None,
    tol: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Solution:
    """The same sampler solved by picard (noise from ``generator``, after ``x_T``).

    ``options`` are :func:`picard.solve`'s sweep options (``accelerate``, ``predict``,
    ``max_rows``, ``init``, ``per_sample``).
    """
    problem = from_scheduler(scheduler, denoiser, steps, generator=generator)
    with torch.no_grad():
        return solve(problem, x_T, window=window, tol=tol, progress=progress, **options)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """Run ``fn`` ``repeats`` times; its last result and the median wall-clock in seconds.

    Example:
        >>> median_time(lambda: 3, 2)[0]
        3
    """
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)
