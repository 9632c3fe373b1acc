"""``StableDiffusionPipeline`` (and its subclasses that keep its ``__call__``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from picard.adapters.pipelines.sd_parts import (
    encode,
    finisher,
    guidance_embedding,
    unet_denoiser,
    unet_prepared,
)
from picard.adapters.pipelines.spec import Prepared

__all__ = ["prepare_stable_diffusion"]


def prepare_stable_diffusion(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableDiffusionPipeline`` call: prompts, timesteps, latents, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (with ``clip_skip`` and LoRA
    scale), ``prepare_latents`` (the starting latent drawn from the call's generator and
    scaled as the pipeline does) and ``get_guidance_scale_embedding`` (LCM-distilled UNets)
    run as in its ``__call__``; rows of the model call carry their sample's prompt.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> pipe = tiny_stable_diffusion()
        >>> a = call_arguments(
        ...     pipe, "a cat", height=16, width=16, num_inference_steps=5)
        >>> p = prepare_stable_diffusion(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation  # guidance: two rows per evaluation
        (torch.Size([1, 4, 8, 8]), 2)
    """
    sample = pipe.unet.config.sample_size
    sample = (sample, sample) if isinstance(sample, int) else sample
    height = a["height"] or sample[0] * pipe.vae_scale_factor
    width = a["width"] or sample[1] * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"], height, width, None, a["negative_prompt"], a["prompt_embeds"],
        a["negative_prompt_embeds"], callback_on_step_end_tensor_inputs=["latents"],
    )  # fmt: skip
    pipe._guidance_rescale = a["guidance_rescale"]
    prompts = encode(pipe, a)
    # As the pipeline: the scheduler's grid first (init_noise_sigma of the Euler family
    # depends on it), then the starting latent, drawn and scaled.
    pipe.scheduler.set_timesteps(a["num_inference_steps"], device=prompts.device)
    latents = pipe.prepare_latents(
        prompts.images, pipe.unet.config.in_channels, height, width, prompts.cond.dtype,
        prompts.device, a["generator"], a["latents"],
    )  # fmt: skip
    tcond = guidance_embedding(pipe, a, prompts, latents.dtype)
    denoiser = unet_denoiser(pipe, a, prompts, tcond, rescale=a["guidance_rescale"])
    finish = finisher(pipe, a, prompts)
    return unet_prepared(pipe, a, latents, pipe.scheduler.timesteps, denoiser, finish, prompts.cfg)
