"""``StableDiffusionControlNetPipeline``: a UNet steered by ControlNet residuals.

Each row of the batched model call runs the ControlNet(s) on its own sample's control
image, at its own timestep, scaled by ``controlnet_conditioning_scale`` and by the keep
factor (``control_guidance_start``/``end``) of its step; with guidance, the ControlNet sees
both halves, or in guess mode only the conditional half (the unconditional half gets zero
residuals), as the pipeline's loop does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.sd_parts import (
    Prompts,
    Residuals,
    encode,
    finisher,
    guidance_embedding,
    unet_denoiser,
    unet_prepared,
)
from picard.adapters.pipelines.spec import Prepared, on

__all__ = ["prepare_controlnet", "step_keep"]


@dataclass(frozen=True)
class _Control:
    """One ControlNet of the call: its model, images per sample, scale, per-step keep."""

    net: Any
    image: Tensor  # (images, 3, H, W), one per sample
    scale: float
    keep: Tensor  # (steps,) bool: the ControlNet runs at this step of the loop


def step_keep(steps: int, start: float, end: float) -> list[bool]:
    """Whether a ControlNet runs at each step of the loop, as the pipeline's ``controlnet_keep``.

    Args:
        steps: the steps of the loop (``len(timesteps)``).
        start: ``control_guidance_start`` (a fraction of the loop).
        end: ``control_guidance_end``.

    Returns:
        One flag per step (the pipeline's keep factor is 1.0 or 0.0).

    Example:
        >>> step_keep(5, 0.2, 0.6)
        [False, True, True, False, False]
    """
    return [not (i / steps < start or (i + 1) / steps > end) for i in range(steps)]


def prepare_controlnet(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableDiffusionControlNetPipeline`` call: prompts, control images, keep.

    The pipeline's own ``check_inputs``, ``encode_prompt``, ``prepare_image`` (the control
    image per sample, not duplicated for guidance: rows look theirs up),
    ``set_timesteps`` and ``prepare_latents`` run as in its ``__call__``. A
    ``MultiControlNetModel`` runs each of its ControlNets on its own images, scales and
    guidance window, summing their residuals in order.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        ValueError: a guidance window that would switch a ControlNet on at one of two steps
            sharing a timestep (second-order schedulers), which rows cannot tell apart.

    Example:
        >>> import torch
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sd_variants import tiny_sd_controlnet
        >>> pipe = tiny_sd_controlnet()
        >>> a = call_arguments(
        ...     pipe, "a cat", image=torch.rand(1, 3, 16, 16), num_inference_steps=5,
        ...     control_guidance_end=0.6)
        >>> p = prepare_controlnet(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation
        (torch.Size([1, 4, 8, 8]), 2)
    """
    from diffusers import MultiControlNetModel
    from diffusers.utils.torch_utils import is_compiled_module

    controlnet = pipe.controlnet
    controlnet = controlnet._orig_mod if is_compiled_module(controlnet) else controlnet
    multi = isinstance(controlnet, MultiControlNetModel)
    nets = list(controlnet.nets) if multi else [controlnet]
    starts, ends = _windows(a["control_guidance_start"], a["control_guidance_end"], len(nets))
    scale = a["controlnet_conditioning_scale"]
    pipe.check_inputs(
        a["prompt"], a["image"], None, a["negative_prompt"], a["prompt_embeds"],
        a["negative_prompt_embeds"], None, None, scale, starts, ends, ["latents"],
    )  # fmt: skip
    scales = _scales(scale, len(nets), multi)
    guess = a["guess_mode"] or nets[0].config.global_pool_conditions
    prompts = encode(pipe, a)
    images = _control_images(pipe, a, prompts, controlnet.dtype, multi)
    height, width = images[0].shape[-2:]
    steps = a["num_inference_steps"]
    pipe.scheduler.set_timesteps(steps, device=prompts.device)
    timesteps = pipe.scheduler.timesteps
    latents = pipe.prepare_latents(
        prompts.images, pipe.unet.config.in_channels, height, width, prompts.cond.dtype,
        prompts.device, a["generator"], a["latents"],
    )  # fmt: skip
    tcond = guidance_embedding(pipe, a, prompts, latents.dtype)
    controls = [
        _Control(net, image, s, torch.tensor(step_keep(len(timesteps), start, end)))
        for net, image, s, start, end in zip(nets, images, scales, starts, ends, strict=True)
    ]
    _check_distinct(pipe, timesteps, controls)
    residuals = _residuals(controls, timesteps, prompts, guess)
    denoiser = unet_denoiser(pipe, a, prompts, tcond, residuals=residuals)
    finish = finisher(pipe, a, prompts)
    return unet_prepared(pipe, a, latents, timesteps, denoiser, finish, prompts.cfg)


def _windows(start: Any, end: Any, nets: int) -> tuple[list[float], list[float]]:
    """``control_guidance_start``/``end`` as lists, one per ControlNet, aligned as the pipeline."""
    if not isinstance(start, list) and isinstance(end, list):
        start = len(end) * [start]
    elif not isinstance(end, list) and isinstance(start, list):
        end = len(start) * [end]
    elif not isinstance(start, list) and not isinstance(end, list):
        start, end = nets * [start], nets * [end]
    return list(start), list(end)


def _scales(scale: Any, nets: int, multi: bool) -> list[float]:
    """One ``controlnet_conditioning_scale`` per ControlNet, as the pipeline reads it."""
    if multi:
        return [scale] * nets if isinstance(scale, float) else list(scale)
    return [scale[0] if isinstance(scale, list) else scale]


def _control_images(
    pipe: Any, a: Mapping[str, Any], prompts: Prompts, dtype: Any, multi: bool
) -> list[Tensor]:
    """Each ControlNet's control images, one per sample (``prepare_image`` without guidance)."""
    image = a["image"]
    if multi and isinstance(image[0], list):  # nested lists: one list per prompt
        image = [list(t) for t in zip(*image, strict=True)]
    per_net = image if multi else [image]
    options = {
        "width": a["width"], "height": a["height"], "batch_size": prompts.images,
        "num_images_per_prompt": a["num_images_per_prompt"], "device": prompts.device,
        "dtype": dtype, "do_classifier_free_guidance": False, "guess_mode": a["guess_mode"],
    }  # fmt: skip
    return [pipe.prepare_image(image=one, **options) for one in per_net]


def _check_distinct(pipe: Any, timesteps: Tensor, controls: list[_Control]) -> None:
    """Refuse keep factors that differ between two steps of the same timestep."""
    t = timesteps.double().cpu()
    same = (t[:, None] == t[None, :]).numpy()
    for k, control in enumerate(controls):
        keep = control.keep.numpy()
        if (same & (keep[:, None] != keep[None, :])).any():
            raise ValueError(
                f"control_guidance_start/control_guidance_end of ControlNet {k} switch it at a "
                f"step whose timestep repeats in {type(pipe.scheduler).__name__}'s loop (a "
                "second-order scheduler): picard's rows carry their timestep, not their step; "
                "move the window or use a first-order scheduler"
            )


def _residuals(
    controls: list[_Control], timesteps: Tensor, prompts: Prompts, guess: bool
) -> Callable[[torch.device | None], Residuals]:
    """``residuals(device)``: the ControlNets' summed residuals of a batch of model rows."""
    cfg = prompts.cfg

    def build(dev: torch.device | None) -> Residuals:
        nets = [
            _Control(on(dev, c.net), on(dev, c.image), c.scale, on(dev, c.keep)) for c in controls
        ]
        grid = on(dev, timesteps).double()

        def residuals(x: Tensor, t: Tensor, emb: Tensor, rows: Tensor) -> dict[str, Any]:
            if guess and cfg:  # the ControlNet sees only the conditional half
                half = x.shape[0] // 2
                x, t, emb, rows = x[half:], t[half:], emb[half:], rows[half:]
            step = (t.double()[:, None] - grid.to(t.device)[None, :]).abs().argmin(1)
            down: list[Tensor] | None = None
            mid: Tensor | None = None
            for c in nets:
                kept = c.keep.to(x.device)[step].nonzero().squeeze(1)
                if len(kept) == 0:
                    continue  # the pipeline's residuals are scaled by 0: zeros, as none
                d, m = c.net(
                    x[kept], t[kept], encoder_hidden_states=emb[kept],
                    controlnet_cond=c.image[rows[kept]], conditioning_scale=c.scale,
                    guess_mode=guess, return_dict=False,
                )  # fmt: skip
                if len(kept) < len(step):
                    d, m = [_scatter(r, kept, len(step)) for r in d], _scatter(m, kept, len(step))
                down = d if down is None else [p + q for p, q in zip(down, d, strict=True)]
                mid = m if mid is None else mid + m
            if down is None or mid is None:
                return {}
            if guess and cfg:  # zeros for the unconditional half
                down = [torch.cat([torch.zeros_like(r), r]) for r in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

        return residuals

    return build


def _scatter(values: Tensor, rows: Tensor, count: int) -> Tensor:
    """``values`` at ``rows`` of ``count`` zero rows."""
    out = values.new_zeros((count, *values.shape[1:]))
    out[rows] = values
    return out
