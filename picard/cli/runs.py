"""Sampling a model both ways — diffusers' sequential loop and picard — with one seed.

Shared by ``picard demo``, ``picard sample`` and ``picard bench``: the starting latent
and then the sampler's noise come from one generator, in that order (as pipelines draw
them), so the sequential and the parallel sample are the same sample.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.schedulers import SCHEDULERS as REGISTRY
from picard.adapters.schedulers import from_scheduler
from picard.solution import Solution
from picard.solver import solve

__all__ = [
    "SCHEDULERS",
    "make_scheduler",
    "median_time",
    "sample_in_parallel",
    "sample_sequentially",
    "start_latent",
]

SCHEDULERS: dict[str, tuple[str, Mapping[str, Any]]] = {
    name: (cls, overrides)
    for cls, sampler in REGISTRY.items()
    for name, overrides in sampler.names.items()
}
"""Sampler names of the command line: a diffusers scheduler class and its overrides (from
the registry, :data:`picard.adapters.schedulers.SCHEDULERS`)."""


def make_scheduler(name: str, base: Any) -> Any:
    """The scheduler ``name`` with the noise schedule of ``base`` (a model's scheduler).

    Args:
        name: a sampler name of :data:`SCHEDULERS` (``"ddpm"``, ``"ddim"``,
            ``"dpmsolver++"``, ``"dpmsolver++3"``, ``"euler"``, ``"euler-ancestral"``).
        base: a diffusers scheduler whose training schedule (``num_train_timesteps``,
            betas, ``prediction_type``, ``clip_sample``) the new scheduler takes.

    Returns:
        A fresh diffusers scheduler of the class ``name`` names, with its overrides.

    Raises:
        ValueError: ``name`` is not in :data:`SCHEDULERS`.

    Example:
        >>> from diffusers import DDPMScheduler
        >>> type(make_scheduler("euler", DDPMScheduler())).__name__
        'EulerDiscreteScheduler'
        >>> make_scheduler("ddim", DDPMScheduler(beta_end=0.01)).config.beta_end
        0.01
        >>> make_scheduler("plms", DDPMScheduler())
        Traceback (most recent call last):
        ValueError: unknown scheduler 'plms'; choose one of ddpm, ddim, pndm, ...
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
    """``randn(shape) * init_noise_sigma`` of the scheduler's grid, as pipelines start.

    Args:
        scheduler: a diffusers scheduler; a copy is set to ``steps`` (it is not changed).
        steps: the number of inference steps (``init_noise_sigma`` may depend on it).
        shape: the latent's shape, ``(batch, *sample_shape)``.
        generator: the generator the latent is drawn from (before the sampler's noise).

    Returns:
        The starting latent ``x_T`` of the given shape.

    Example:
        >>> from diffusers import DDPMScheduler, EulerDiscreteScheduler
        >>> x = start_latent(DDPMScheduler(), 10, (4, 2), torch.Generator().manual_seed(0))
        >>> torch.equal(x, torch.randn(4, 2, generator=torch.Generator().manual_seed(0)))
        True
        >>> y = start_latent(EulerDiscreteScheduler(), 10, (4, 2), torch.Generator().manual_seed(0))
        >>> round(float(y[0, 0] / x[0, 0]), 1)  # Euler starts at sigma_max (init_noise_sigma)
        157.4
    """
    view = copy.deepcopy(scheduler)
    view.set_timesteps(steps)
    z = torch.randn(shape, generator=generator)
    return z * float(getattr(view, "init_noise_sigma", 1.0))


def sample_sequentially(
    scheduler: Any,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    x_T: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """The diffusers sequential loop: one model call and one ``scheduler.step`` per step.

    Args:
        scheduler: a diffusers scheduler; a copy is set to ``steps`` and stepped.
        denoiser: ``denoiser(x, t)`` for ``x: (B, *sample_shape)``, ``t: (B,)``: the
            model output ``scheduler.step`` expects (ε, velocity or sample).
        steps: the number of inference steps.
        x_T: the starting latent (see :func:`start_latent`).
        generator: the generator of the sampler's noise (``None`` for the global one).

    Returns:
        The final sample, shaped like ``x_T``.

    Example:
        >>> from picard.models import load
        >>> m = load("moons")
        >>> gen = torch.Generator().manual_seed(0)
        >>> x_T = start_latent(m.scheduler, 20, (4, 2), gen)
        >>> x = sample_sequentially(m.scheduler, m.denoiser, 20, x_T, gen)
        >>> x.shape, bool(x.isfinite().all())
        (torch.Size([4, 2]), True)
        >>> m.scheduler.num_inference_steps is None  # the model's scheduler is untouched
        True
    """
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps)
    scale = getattr(s, "scale_model_input", lambda x, t: x)
    x = x_T
    with torch.no_grad():
        for t in s.timesteps:
            out = denoiser(scale(x, t), t.reshape(1).expand(x.shape[0]))
            x = s.step(out, t, x, generator=generator).prev_sample
    return x


def sample_in_parallel(
    scheduler: Any,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    x_T: Tensor,
    generator: torch.Generator | None,
    *,
    window: int | str | None = "auto",
    tol: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Solution:
    """The same sampler solved by picard (noise from ``generator``, after ``x_T``).

    ``options`` are :func:`picard.solve`'s sweep options (``accelerate``, ``predict``,
    ``max_rows``, ``init``, ``per_sample``, ``relative``, ``verify``, ...).

    Args:
        scheduler: a diffusers scheduler (through :func:`picard.adapters.diffusers.from_scheduler`).
        denoiser: ``denoiser(x, t)`` batched over rows, as for :func:`sample_sequentially`.
        steps: the number of inference steps.
        x_T: the starting latent (see :func:`start_latent`).
        generator: the generator of the sampler's noise, drawn as :func:`sample_sequentially` draws
            it (``None`` for the global one).
        window: steps per sweep (``"auto"``: learned, as :func:`picard.solve`'s default;
            ``None``: the whole grid).
        tol: the tolerance (``None``: :func:`picard.solve`'s default).
        progress: ``progress(done, total)`` called after every sweep.
        **options: further options of :func:`picard.solve`.

    Returns:
        The :class:`~picard.solution.Solution` (``final`` sample and ``stats``).

    Example:
        >>> from picard.models import load
        >>> m = load("moons")
        >>> gen = torch.Generator().manual_seed(0)
        >>> x_T = start_latent(m.scheduler, 20, (4, 2), gen)
        >>> ref = sample_sequentially(m.scheduler, m.denoiser, 20, x_T, gen)
        >>> gen = torch.Generator().manual_seed(0)  # the same seed: the same sample
        >>> x_T = start_latent(m.scheduler, 20, (4, 2), gen)
        >>> sol = sample_in_parallel(m.scheduler, m.denoiser, 20, x_T, gen, window=8, tol=1e-3)
        >>> sol.stats.num_steps, sol.stats.iterations < 20  # fewer sweeps than steps
        (20, True)
        >>> float((sol.final - ref).abs().max()) < 1e-3  # the sequential loop's sample
        True
    """
    problem = from_scheduler(scheduler, denoiser, steps, generator=generator)
    with torch.no_grad():
        return solve(problem, x_T, window=window, tol=tol, progress=progress, **options)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """Run ``fn`` ``repeats`` times; its last result and the median wall-clock in seconds.

    Args:
        fn: the function to time (no arguments).
        repeats: how many times to run it (at least 1).

    Returns:
        ``(result, seconds)``: the last call's result and the median of the run times.

    Example:
        >>> median_time(lambda: 3, 2)[0]
        3
        >>> calls = []
        >>> out, seconds = median_time(lambda: calls.append(1) or len(calls), 3)
        >>> out, len(calls), seconds >= 0
        (3, 3, True)
    """
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)
