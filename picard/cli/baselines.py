"""The ParaDiGMS loop as published, for comparisons: any batched denoiser.

A faithful reimplementation of the sweep loop of diffusers'
``StableDiffusionParadigmsPipeline`` (Shih et al. 2023), with its parallel schedulers
(``DDPMParallelScheduler``, ``DDIMParallelScheduler``) and its conventions — noise drawn
for every step (also the last), cumulative sums in the latent's dtype, the error of
state j+1 scaled by the variance of step j+1, the window advanced by
``min(first unconverged + 1, parallel)`` — so that benchmarks can put it side by side
with :func:`picard.solve` on models that are not Stable Diffusion pipelines.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ParadigmsResult", "paradigms"]

_PARALLEL = {
    "DDPMScheduler": "DDPMParallelScheduler",
    "DDIMScheduler": "DDIMParallelScheduler",
    "DDPMParallelScheduler": "DDPMParallelScheduler",
    "DDIMParallelScheduler": "DDIMParallelScheduler",
}


@dataclass(frozen=True)
class ParadigmsResult:
    """What the ParaDiGMS loop returned: the sample, its sweeps and evaluations.

    Attributes:
        final: the final sample, shaped like the starting latent ``(B, *shape)``.
        sweeps: the sweeps (sequential rounds of batched model calls).
        evaluations: the model rows evaluated, summed over the sweeps (steps × B per
            window).

    Example:
        >>> from diffusers import DDIMScheduler
        >>> r = paradigms(DDIMScheduler(), lambda x, t: 0.1 * x, 10, torch.ones(3, 2), parallel=4)
        >>> r.final.shape, r.sweeps >= 3  # windows of at most 4 of the 10 steps
        (torch.Size([3, 2]), True)
        >>> r.evaluations % 3, r.evaluations <= 3 * 4 * r.sweeps  # 3 rows per step
        (0, True)
    """

    final: Tensor
    sweeps: int
    evaluations: int


def paradigms(
    scheduler: Any,
    denoiser: Callable[[Tensor, Tensor], Tensor],
    num_inference_steps: int,
    latents: Tensor,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    parallel: int = 10,
    tolerance: float = 0.1,
) -> ParadigmsResult:
    """Sample with the ParaDiGMS loop (DDPM or DDIM, through diffusers' parallel schedulers).

    Args:
        scheduler: a DDPM or DDIM scheduler (or its parallel twin); its config is used.
        denoiser: ``denoiser(x, t)`` batched over rows, as for ``from_scheduler``.
        num_inference_steps: N.
        latents: the starting latent ``(B, *shape)``.
        generator: the generator the step noise is drawn from.
        parallel: the window.
        tolerance: ParaDiGMS's tolerance.

    Returns:
        A :class:`ParadigmsResult`.

    Example:
        >>> from diffusers import DDPMScheduler
        >>> r = paradigms(DDPMScheduler(), lambda x, t: 0.1 * x, 20, torch.ones(1, 2))
        >>> r.sweeps <= 20
        True
    """
    import diffusers

    name = type(scheduler).__name__
    if name not in _PARALLEL:
        raise TypeError(f"the ParaDiGMS loop supports DDPM and DDIM schedulers, got {name}")
    sched = getattr(diffusers, _PARALLEL[name]).from_config(copy.deepcopy(scheduler.config))
    sched.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = sched.timesteps
    n, b = len(timesteps), latents.shape[0]
    parallel = min(parallel, n)
    buffer = torch.stack([latents] * (n + 1))
    noise, inv_var = _noise_and_weights(sched, buffer, latents, generator)
    begin, end, sweeps, evaluations = 0, parallel, 0, 0
    while begin < n:
        length = end - begin
        block = buffer[begin:end]
        block_t = timesteps[begin:end, None].repeat(1, b)
        model_in = sched.scale_model_input(block, block_t)
        out = denoiser(model_in.flatten(0, 1), block_t.flatten(0, 1))
        out = out.reshape(length * b, *out.shape[1:])
        denoised = sched.batch_step_no_noise(
            model_output=out, timesteps=block_t.flatten(0, 1), sample=block.flatten(0, 1)
        ).reshape(block.shape)
        cum_delta = torch.cumsum(denoised - block, dim=0)
        cum_noise = 0 if sched._is_ode_scheduler else torch.cumsum(noise[begin:end], dim=0)
        new = buffer[begin][None] + cum_delta + cum_noise
        error = torch.linalg.norm(
            (new - buffer[begin + 1 : end + 1]).reshape(length, b, -1), dim=-1
        ).pow(2)
        ratio = torch.nn.functional.pad(
            error * inv_var[begin + 1 : end + 1], (0, 0, 0, 1), value=1e9
        )
        first = int(torch.argmax((ratio > tolerance**2).any(dim=1).int()).item())
        new_begin = begin + min(1 + first, parallel)
        new_end = min(new_begin + parallel, n)
        buffer[begin + 1 : end + 1] = new
        buffer[end : new_end + 1] = buffer[end][None]
        sweeps += 1
        evaluations += length * b
        begin, end = new_begin, new_end
    return ParadigmsResult(buffer[-1], sweeps, evaluations)


def _noise_and_weights(
    sched: Any,
    buffer: Tensor,
    latents: Tensor,
    generator: torch.Generator | list[torch.Generator] | None,
) -> tuple[Tensor, Tensor]:
    """Every step's noise, shaped like ``buffer``, and the weights of the state errors.

    Noise is drawn for every step, also the last; the weights are ``1 / (variance × numel)``
    of each state (the last state's variance 0).
    """
    from diffusers.utils.torch_utils import randn_tensor

    timesteps = sched.timesteps
    noise = torch.zeros_like(buffer)
    for j in range(len(timesteps)):
        base = randn_tensor(
            latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
        )
        noise[j] = sched._get_variance(timesteps[j]) ** 0.5 * base
    variances = [float(sched._get_variance(t)) for t in timesteps] + [0.0]
    with torch.no_grad():
        inv_var = 1.0 / torch.tensor(variances, device=latents.device)
    return noise, inv_var[:, None] / latents[0].numel()
