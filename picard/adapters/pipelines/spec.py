"""What a pipeline family tells picard: how to prepare a call, the model rows, the finish.

A family's ``prepare(pipe, arguments)`` runs the pipeline's own methods on the call's
arguments — ``check_inputs``, ``encode_prompt``, timestep retrieval, ``prepare_latents``,
the conditioning — and returns a :class:`Prepared`: the starting latent, the number of
steps, the batched denoiser for rows ``(step, sample)`` (each row's conditioning looked up
by its sample index) and the finish (decode, post-process, the pipeline's output type).
The driver (:mod:`picard.adapters.pipelines.parallel`) solves the loop in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Prepared", "guided", "on", "sample_rows"]

Denoiser = Callable[..., Tensor]
"""``denoiser(x, t, samples)``: model outputs of rows ``x`` at timesteps ``t``; row k
belongs to batch sample ``samples[k]`` (the sampler's guidance applied)."""


@dataclass
class Prepared:
    """A pipeline call, prepared by its family, ready to be solved.

    Attributes:
        latents: the starting latent, exactly as the pipeline's loop starts from it.
        num_inference_steps: N, as the pipeline set the scheduler to.
        timesteps: the timesteps the pipeline's loop runs over (checked against the rule).
        denoiser: ``denoiser(device)`` builds the batched model call on ``device`` (a
            replica of the model) or, with ``None``, where the model is.
        device: where the model is.
        finish: the final latent to the pipeline's output.
        generator: the call's generator (the sampler's noise is drawn from it).
        rows_per_evaluation: model rows per (step, sample): 2 with classifier-free guidance.
        step_options: keyword arguments the pipeline passes to ``scheduler.step`` (e.g.
            ``eta``): given to the rule where the scheduler's ``step`` takes them.
        grid_options: keyword arguments the pipeline passes to ``set_timesteps`` (e.g.
            flow matching's ``sigmas`` and ``mu``): given to the rule as they are.
        scale_model_input: whether the pipeline calls the scheduler's
            ``scale_model_input`` before the model.
        begin: the first step of the grid the loop runs (img2img's ``strength``).
        end: the step after the last one the loop runs (SDXL's ``denoising_end``), or
            ``None`` for the grid's end.
        wrap_rule: ``wrap_rule(rule)``: the rule the loop runs instead of the scheduler's
            (e.g. inpainting's blend after each step), or ``None``.

    Example:
        >>> p = Prepared(torch.zeros(1, 4), 10, torch.arange(10), lambda dev: None,
        ...              torch.device("cpu"), lambda x: x)
        >>> p.rows_per_evaluation, p.step_options
        (1, {})
    """

    latents: Tensor
    num_inference_steps: int
    timesteps: Tensor
    denoiser: Callable[[torch.device | None], Denoiser]
    device: torch.device
    finish: Callable[[Tensor], Any]
    generator: Any = None
    rows_per_evaluation: int = 1
    step_options: dict[str, Any] = field(default_factory=dict)
    grid_options: dict[str, Any] = field(default_factory=dict)
    scale_model_input: bool = True
    begin: int = 0
    end: int | None = None
    wrap_rule: Callable[[Any], Any] | None = None


def on(device: torch.device | None, value: Any) -> Any:
    """``value`` (a tensor, a module, or a dict or list of them) on ``device`` (``None``: as is).

    Args:
        device: the target device, or ``None``.
        value: what to move.

    Returns:
        The moved value (modules are deep-copied first: the original stays).

    Example:
        >>> on(None, torch.ones(1)).device.type, on(torch.device("cpu"), {"a": torch.ones(1)})
        ('cpu', {'a': tensor([1.])})
    """
    import copy

    if device is None or value is None:
        return value
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value).to(device)
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: on(device, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(on(device, v) for v in value)
    return value


def sample_rows(samples: Tensor | None, rows: int, batch: int, device: torch.device) -> Tensor:
    """Each row's sample index: ``samples``, or ``0 … batch-1`` repeated.

    Rows of a shared window are ``(step, sample)``, step-major.

    Args:
        samples: the rows' sample indices, or ``None``.
        rows: how many rows.
        batch: samples in the batch.
        device: where the indices go.

    Returns:
        ``(rows,)`` long indices.

    Example:
        >>> sample_rows(None, 6, 2, torch.device("cpu")).tolist()
        [0, 1, 0, 1, 0, 1]
    """
    if samples is not None:
        return samples
    return torch.arange(batch, device=device).repeat(rows // batch)


def guided(out: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """Classifier-free guidance of a call on ``[unconditional rows, conditional rows]``.

    ``uncond + scale (cond - uncond)``, then ``rescale_noise_cfg`` when ``rescale > 0``, as
    diffusers' pipelines combine them.

    Args:
        out: the model outputs of both halves, stacked on dim 0.
        scale: the guidance scale.
        rescale: the guidance rescale (0: none).

    Returns:
        The guided outputs (half the rows).

    Example:
        >>> guided(torch.tensor([[0.0], [1.0]]), 7.5)
        tensor([[7.5000]])
    """
    uncond, cond = out.chunk(2)
    result = uncond + scale * (cond - uncond)
    if rescale > 0.0:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            rescale_noise_cfg,
        )

        result = rescale_noise_cfg(result, cond, guidance_rescale=rescale)
    return result
