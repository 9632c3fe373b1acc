"""``StableDiffusionPipeline`` (and its subclasses that keep its ``__call__``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

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
        >>> import inspect
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> pipe = tiny_stable_diffusion()
        >>> call = inspect.signature(type(pipe).__call__).bind(
        ...     pipe, "a cat", height=16, width=16, num_inference_steps=5)
        >>> call.apply_defaults()
        >>> p = prepare_stable_diffusion(pipe, call.arguments)
        >>> p.latents.shape, p.rows_per_evaluation  # guidance: two rows per evaluation
        (torch.Size([1, 4, 8, 8]), 2)
    """
    sample = pipe.unet.config.sample_size
    sample = (sample, sample) if isinstance(sample, int) else sample
    height = a["height"] or sample[0] * pipe.vae_scale_factor
    width = a["width"] or sample[1] * pipe.vae_scale_factor
    prompt, prompt_embeds = a["prompt"], a["prompt_embeds"]
    pipe.check_inputs(
        prompt, height, width, None, a["negative_prompt"], prompt_embeds,
        a["negative_prompt_embeds"], callback_on_step_end_tensor_inputs=["latents"],
    )  # fmt: skip
    pipe._guidance_scale, pipe._guidance_rescale = a["guidance_scale"], a["guidance_rescale"]
    pipe._clip_skip, pipe._cross_attention_kwargs = a["clip_skip"], a["cross_attention_kwargs"]
    pipe._interrupt = False
    if prompt is not None:
        batch = 1 if isinstance(prompt, str) else len(prompt)
    else:
        batch = prompt_embeds.shape[0]
    images = batch * (a["num_images_per_prompt"] or 1)
    device = pipe._execution_device
    cfg = pipe.do_classifier_free_guidance
    cond, uncond = pipe.encode_prompt(
        prompt, device, a["num_images_per_prompt"], cfg, a["negative_prompt"],
        prompt_embeds=prompt_embeds, negative_prompt_embeds=a["negative_prompt_embeds"],
        lora_scale=(a["cross_attention_kwargs"] or {}).get("scale"), clip_skip=a["clip_skip"],
    )  # fmt: skip
    # As the pipeline: the scheduler's grid first (init_noise_sigma of the Euler family
    # depends on it), then the starting latent, drawn and scaled.
    pipe.scheduler.set_timesteps(a["num_inference_steps"], device=device)
    latents = pipe.prepare_latents(
        images, pipe.unet.config.in_channels, height, width, cond.dtype, device,
        a["generator"], a["latents"],
    )  # fmt: skip
    tcond = None
    if pipe.unet.config.time_cond_proj_dim is not None:
        scale = torch.tensor(a["guidance_scale"] - 1).repeat(images)
        tcond = pipe.get_guidance_scale_embedding(
            scale, embedding_dim=pipe.unet.config.time_cond_proj_dim
        ).to(device=device, dtype=latents.dtype)
    scale, rescale, attention = (
        a["guidance_scale"],
        a["guidance_rescale"],
        a["cross_attention_kwargs"],
    )

    def denoiser(dev: torch.device | None) -> Any:
        unet, c, u, tc = on(dev, pipe.unet), on(dev, cond), on(dev, uncond), on(dev, tcond)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            samples = sample_rows(samples, x.shape[0], images, x.device)
            emb, tcs = c[samples], None if tc is None else tc[samples]
            if cfg:
                x, t, emb = torch.cat([x, x]), torch.cat([t, t]), torch.cat([u[samples], emb])
                tcs = None if tcs is None else torch.cat([tcs, tcs])
            out = unet(
                x, t, encoder_hidden_states=emb, timestep_cond=tcs,
                cross_attention_kwargs=attention, return_dict=False,
            )[0]  # fmt: skip
            return guided(out, scale, rescale) if cfg else out

        return call

    def finish(latents: Tensor) -> Any:
        from diffusers.pipelines.stable_diffusion.pipeline_output import (
            StableDiffusionPipelineOutput,
        )

        if a["output_type"] == "latent":
            image, nsfw = latents, None
        else:
            image = pipe.vae.decode(
                latents / pipe.vae.config.scaling_factor, return_dict=False,
                generator=a["generator"],
            )[0]  # fmt: skip
            image, nsfw = pipe.run_safety_checker(image, device, cond.dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
        image = pipe.image_processor.postprocess(
            image, output_type=a["output_type"], do_denormalize=denormalize
        )
        if not a["return_dict"]:
            return image, nsfw
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)

    return Prepared(
        latents=latents,
        num_inference_steps=a["num_inference_steps"],
        timesteps=pipe.scheduler.timesteps,
        denoiser=denoiser,
        device=pipe.unet.device,
        finish=finish,
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        step_options={"eta": a["eta"]},
    )
