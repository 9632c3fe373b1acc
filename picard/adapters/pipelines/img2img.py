"""``StableDiffusionImg2ImgPipeline``: a noised image, denoised from ``strength``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from picard.adapters.pipelines.sd_parts import (
    encode,
    finisher,
    guidance_embedding,
    strength_grid,
    unet_denoiser,
    unet_prepared,
)
from picard.adapters.pipelines.spec import Prepared

__all__ = ["prepare_img2img"]


def prepare_img2img(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableDiffusionImg2ImgPipeline`` call: prompts, ``strength``, the noised image.

    The pipeline's own ``check_inputs``, ``encode_prompt``, image preprocessing,
    ``get_timesteps`` (which sets the scheduler's begin index) and ``prepare_latents`` (the
    image encoded and noised to the first timestep, drawn from the call's generator as the
    pipeline draws it) run as in its ``__call__``; the loop's first step is
    :attr:`Prepared.begin`, where every supported scheduler starts as the pipeline's loop
    does (multistep ones with their warm-up again).

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        ValueError: a ``strength`` that leaves no step.

    Example:
        >>> import torch
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sd_variants import tiny_sd_img2img
        >>> pipe = tiny_sd_img2img()
        >>> a = call_arguments(
        ...     pipe, "a cat", image=torch.rand(1, 3, 16, 16), strength=0.6,
        ...     num_inference_steps=10)
        >>> p = prepare_img2img(pipe, a)
        >>> p.latents.shape, p.begin, len(p.timesteps)
        (torch.Size([1, 4, 8, 8]), 4, 6)
    """
    strength, steps = a["strength"], a["num_inference_steps"]
    pipe.check_inputs(
        a["prompt"], strength, None, a["negative_prompt"], a["prompt_embeds"],
        a["negative_prompt_embeds"], None, None, ["latents"],
    )  # fmt: skip
    prompts = encode(pipe, a)
    image = pipe.image_processor.preprocess(a["image"])
    timesteps, begin = strength_grid(pipe, steps, strength, prompts.device)
    per_prompt = prompts.images // (a["num_images_per_prompt"] or 1)
    latents = pipe.prepare_latents(
        image, timesteps[:1].repeat(prompts.images), per_prompt, a["num_images_per_prompt"],
        prompts.cond.dtype, prompts.device, a["generator"],
    )  # fmt: skip
    tcond = guidance_embedding(pipe, a, prompts, latents.dtype)
    denoiser, finish = unet_denoiser(pipe, a, prompts, tcond), finisher(pipe, a, prompts)
    return unet_prepared(pipe, a, latents, timesteps, denoiser, finish, prompts.cfg, begin=begin)
