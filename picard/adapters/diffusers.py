"""The bridge to diffusers: schedulers become problems, pipelines run in parallel.

``from_scheduler`` reads a scheduler's *configuration* (never its stateful ``step``) and
returns a :class:`~picard.adapters.rule.DiffusionProblem`; ``parallelize`` wraps a
pipeline so that its denoising loop is solved by :func:`picard.solve`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import Tensor

from picard.adapters.pipelines import SUPPORTED_PIPELINES, ParallelPipeline, parallelize
from picard.adapters.rule import DiffusionProblem, Generator, UpdateRule

__all__ = [
    "SUPPORTED_PIPELINES",
    "SUPPORTED_SCHEDULERS",
    "ParallelPipeline",
    "from_scheduler",
    "parallelize",
    "rule_for",
]

SUPPORTED_SCHEDULERS: dict[str, str] = {
    "DDPMScheduler": "picard.adapters.ddpm:from_config",
    "DDPMParallelScheduler": "picard.adapters.ddpm:from_config",
    "DDIMScheduler": "picard.adapters.ddim:from_config",
    "DDIMParallelScheduler": "picard.adapters.ddim:from_config",
    "DPMSolverMultistepScheduler": "picard.adapters.dpmsolver:from_config",
    "EulerDiscreteScheduler": "picard.adapters.euler:from_config",
    "EulerAncestralDiscreteScheduler": "picard.adapters.euler:ancestral_from_config",
    "FlowMatchEulerDiscreteScheduler": "picard.adapters.flow:from_config",
}
"""Scheduler class names picard reproduces, and the factory of each rule."""


def rule_for(scheduler: Any, num_inference_steps: int, **options: Any) -> UpdateRule:
    """The update rule of ``scheduler``'s configuration on ``num_inference_steps`` steps.

    Args:
        scheduler: a diffusers scheduler (its class name and ``config`` are read).
        num_inference_steps: N.
        **options: the sampler's step options (``eta`` and ``use_clipped_model_output``
            for DDIM, ``sigmas``/``mu`` for flow matching); others raise ``TypeError``.

    Returns:
        The :class:`~picard.adapters.rule.UpdateRule`.

    Example:
        >>> from diffusers import DDIMScheduler
        >>> rule_for(DDIMScheduler(), 50, eta=0.5).num_steps
        50
    """
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise TypeError(
            f"scheduler {name} is not supported; supported: {', '.join(SUPPORTED_SCHEDULERS)}"
        )
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"scheduler {name} has no config")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise TypeError(
            f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}"
        )
    module, factory = SUPPORTED_SCHEDULERS[name].split(":")
    make: Callable[..., UpdateRule] = getattr(importlib.import_module(module), factory)
    return make(config, num_inference_steps, **options)


def from_scheduler(
    scheduler: Any,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    num_inference_steps: int,
    *,
    generator: Generator = None,
    rows_per_evaluation: int = 1,
    scale_model_input: bool = True,
    **options: Any,
) -> DiffusionProblem:
    """The sampler that ``scheduler`` configures, as a problem for :func:`picard.solve`.

    ``picard.solve(problem, x_T).final`` is the sample the sequential loop
    (``for t in scheduler.timesteps: x = scheduler.step(denoiser(x, t), t, x)``) gives,
    within the tolerance. ``x_T`` is the starting latent exactly as the loop starts from
    it (already multiplied by ``problem.rule.init_noise_sigma``); its first dimension
    indexes samples. The sampler's noise is drawn from ``generator`` when the solve
    starts — after the caller drew ``x_T`` — in the order the sequential sampler draws it.

    Tolerance (ParaDiGMS's): the solve's default ``tol`` is 0.1, and state ``i + 1`` has
    converged when the RMS change of every sample between two sweeps is at most ``tol``
    times the noise std of step ``i + 1`` — the DDPM posterior std of that step of the
    grid, in the units of the latent, for deterministic samplers too. The last state
    (no noise after it) has scale 0: it is final once the states before it are.

    Args:
        scheduler: a diffusers scheduler; see :data:`SUPPORTED_SCHEDULERS`.
        denoiser: ``denoiser(x, t)``, the batched model call: ``x: (M, *shape)`` as the
            scheduler's ``scale_model_input`` leaves it, ``t: (M,)`` the scheduler's
            timesteps; returns the model output ``(M, C, ...)``.
        num_inference_steps: N.
        generator: a ``torch.Generator``, or a list with one per sample.
        rows_per_evaluation: model rows per (step, sample), e.g. 2 with classifier-free
            guidance inside ``denoiser``; reported by ``stats.model_rows``.
        scale_model_input: scale the model input as the scheduler's
            ``scale_model_input`` does (the Euler family), as pipelines that call it do.
        **options: the sampler's step options (``eta``, ``use_clipped_model_output``
            for DDIM; ``sigmas``, ``mu`` for flow matching).

    Returns:
        A :class:`~picard.adapters.rule.DiffusionProblem`.

    Example:
        >>> import torch, picard
        >>> from diffusers import DDIMScheduler
        >>> problem = from_scheduler(DDIMScheduler(), lambda x, t: 0.1 * x, 20)
        >>> sol = picard.solve(problem, torch.randn(2, 3, 4, 4))
        >>> sol.final.shape, sol.stats.iterations <= 20
        (torch.Size([2, 3, 4, 4]), True)
    """
    rule = rule_for(scheduler, num_inference_steps, **options)
    return DiffusionProblem(rule, denoiser, generator, rows_per_evaluation, scale_model_input)
