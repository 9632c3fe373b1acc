"""Pieces of the Stable Diffusion families' calls: text-to-image, img2img, inpainting, ControlNet.

The prompts (``encode_prompt`` with the pipeline's guidance state), the LCM guidance
embedding, the batched UNet call with classifier-free guidance (rows from any steps and
samples, each row's conditioning looked up by its sample) and the finish (decode, safety
checker, post-processing, the pipeline's output type), as ``StableDiffusionPipeline`` and
its img2img, inpainting and ControlNet variants run them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import prompt_count
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = [
    "Prompts",
    "encode",
    "finisher",
    "guidance_embedding",
    "guidance_scale_embedding",
    "strength_grid",
    "unet_denoiser",
    "unet_prepared",
]

Residuals = Callable[[Tensor, Tensor, Tensor, Tensor], dict[str, Any]]
"""``residuals(x, t, embeddings, rows)``: extra UNet keyword arguments (a ControlNet's
residuals) for the model input exactly as the pipeline builds it (both halves with
guidance); ``rows`` are the rows' sample indices."""


@dataclass(frozen=True)
class Prompts:
    """A call's encoded prompts, one row per image.

    Attributes:
        cond: the prompt embeddings ``(images, tokens, dim)``.
        uncond: the negative prompt embeddings with classifier-free guidance, else ``None``.
        images: images in the batch (prompts times ``num_images_per_prompt``).
        device: the pipeline's execution device.

    Example:
        >>> import torch
        >>> p = Prompts(torch.zeros(2, 3, 4), None, 2, torch.device("cpu"))
        >>> p.cfg, p.images
        (False, 2)
    """

    cond: Tensor
    uncond: Tensor | None
    images: int
    device: torch.device

    @property
    def cfg(self) -> bool:
        """Whether the call runs classifier-free guidance."""
        return self.uncond is not None


def encode(pipe: Any, a: Mapping[str, Any]) -> Prompts:
    """Set the pipeline's guidance state and encode the prompts, as its ``__call__`` does.

    Call it right after the pipeline's ``check_inputs``.

    Args:
        pipe: a Stable Diffusion pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prompts.

    Example:
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> args = {"prompt": ["a", "b"], "prompt_embeds": None, "negative_prompt": None,
        ...         "negative_prompt_embeds": None, "guidance_scale": 7.5, "clip_skip": None,
        ...         "cross_attention_kwargs": None, "num_images_per_prompt": 2}
        >>> p = encode(tiny_stable_diffusion(), args)
        >>> p.images, p.cfg, tuple(p.cond.shape)
        (4, True, (4, 16, 32))
    """
    prompt, embeds = a["prompt"], a["prompt_embeds"]
    pipe._guidance_scale, pipe._clip_skip = a["guidance_scale"], a["clip_skip"]
    pipe._cross_attention_kwargs, pipe._interrupt = a["cross_attention_kwargs"], False
    batch = prompt_count(a)
    device = pipe._execution_device
    cfg = pipe.do_classifier_free_guidance
    cond, uncond = pipe.encode_prompt(
        prompt, device, a["num_images_per_prompt"], cfg, a["negative_prompt"],
        prompt_embeds=embeds, negative_prompt_embeds=a["negative_prompt_embeds"],
        lora_scale=(a["cross_attention_kwargs"] or {}).get("scale"), clip_skip=a["clip_skip"],
    )  # fmt: skip
    return Prompts(cond, uncond if cfg else None, batch * (a["num_images_per_prompt"] or 1), device)


def guidance_embedding(pipe: Any, a: Mapping[str, Any], prompts: Prompts, dtype: Any) -> Any:
    """The guidance-scale embedding of an LCM-distilled UNet (``timestep_cond``), or ``None``.

    Args:
        pipe: the pipeline.
        a: the call's arguments.
        prompts: the call's prompts.
        dtype: the latents' dtype.

    Returns:
        ``(images, time_cond_proj_dim)`` or ``None`` for a UNet without it.

    Example:
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> pipe = tiny_stable_diffusion()
        >>> guidance_embedding(pipe, {}, None, torch.float32) is None
        True
    """
    if pipe.unet.config.time_cond_proj_dim is None:
        return None
    return guidance_scale_embedding(
        pipe, a["guidance_scale"], prompts.images, prompts.device, dtype
    )


def guidance_scale_embedding(
    pipe: Any, guidance_scale: float, images: int, device: Any, dtype: Any
) -> Tensor | None:
    """An LCM-distilled UNet's ``timestep_cond``: ``get_guidance_scale_embedding(w - 1)``.

    Args:
        pipe: the pipeline (its UNet's ``time_cond_proj_dim`` is read).
        guidance_scale: the call's ``guidance_scale`` ``w``.
        images: images in the batch (one row each).
        device: where the embedding goes.
        dtype: its dtype (the latents').

    Returns:
        ``(images, time_cond_proj_dim)``, or ``None`` for a UNet without it.

    Example:
        >>> from picard.models.tiny_sdxl import tiny_sdxl
        >>> pipe = tiny_sdxl(time_cond_proj_dim=8)
        >>> guidance_scale_embedding(pipe, 7.5, 2, "cpu", torch.float32).shape
        torch.Size([2, 8])
    """
    dim = pipe.unet.config.time_cond_proj_dim
    if dim is None:
        return None
    scale = torch.tensor(guidance_scale - 1).repeat(images)
    return pipe.get_guidance_scale_embedding(scale, embedding_dim=dim).to(
        device=device, dtype=dtype
    )


def unet_denoiser(
    pipe: Any,
    a: Mapping[str, Any],
    prompts: Prompts,
    tcond: Tensor | None,
    extra: Tensor | None = None,
    residuals: Callable[[torch.device | None], Residuals] | None = None,
    rescale: float = 0.0,
) -> Callable[[torch.device | None], Callable[..., Tensor]]:
    """The batched UNet call with guidance: ``denoiser(device)`` as :class:`Prepared` wants.

    With guidance, each row runs twice — ``[unconditional rows, conditional rows]`` — as the
    pipeline's ``torch.cat([latents] * 2)``; each row's prompt, ``timestep_cond``, extra
    input channels and ControlNet residuals follow its sample index.

    Args:
        pipe: the pipeline.
        a: the call's arguments (``guidance_scale``, ``cross_attention_kwargs``).
        prompts: the call's prompts.
        tcond: the guidance embedding per image, or ``None``.
        extra: per-image channels concatenated to the (scaled) model input, e.g. the
            inpainting UNet's mask and masked-image latents ``(images, 5, h, w)``.
        residuals: ``residuals(device)`` builds the extra UNet arguments of a row batch.
        rescale: the guidance rescale (``guidance_rescale``; 0: none), as :func:`guided`.

    Returns:
        ``denoiser(device) -> call(x, t, samples=None)``.

    Example:
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> pipe = tiny_stable_diffusion()
        >>> a = {"prompt": "a cat", "prompt_embeds": None, "negative_prompt": None,
        ...      "negative_prompt_embeds": None, "guidance_scale": 7.5, "clip_skip": None,
        ...      "cross_attention_kwargs": None, "num_images_per_prompt": 1}
        >>> call = unet_denoiser(pipe, a, encode(pipe, a), None)(None)
        >>> call(torch.zeros(3, 4, 8, 8), torch.tensor([900, 500, 100])).shape
        torch.Size([3, 4, 8, 8])
    """
    scale, attention, images = a["guidance_scale"], a["cross_attention_kwargs"], prompts.images

    def denoiser(dev: torch.device | None) -> Callable[..., Tensor]:
        unet, cond, uncond = on(dev, pipe.unet), on(dev, prompts.cond), on(dev, prompts.uncond)
        tc, ex = on(dev, tcond), on(dev, extra)
        more = None if residuals is None else residuals(dev)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            rows = sample_rows(samples, x.shape[0], images, x.device)
            emb = cond[rows]
            if uncond is not None:
                x, t, emb = torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond[rows], emb])
                rows = torch.cat([rows, rows])
            kwargs = {} if more is None else more(x, t, emb, rows)
            if ex is not None:
                x = torch.cat([x, ex[rows]], 1)
            out = unet(
                x, t, encoder_hidden_states=emb, timestep_cond=None if tc is None else tc[rows],
                cross_attention_kwargs=attention, return_dict=False, **kwargs,
            )[0]  # fmt: skip
            return guided(out, scale, rescale) if uncond is not None else out

        return call

    return denoiser


def finisher(
    pipe: Any,
    a: Mapping[str, Any],
    prompts: Prompts,
    after: Callable[[Any], Any] | None = None,
) -> Callable[[Tensor], Any]:
    """The finish of a Stable Diffusion call: decode, safety checker, post-processing, output.

    Args:
        pipe: the pipeline.
        a: the call's arguments (``output_type``, ``return_dict``, ``generator``).
        prompts: the call's prompts (device and dtype of the safety checker).
        after: applied to the post-processed images (inpainting's ``padding_mask_crop``
            overlay), or ``None``.

    Returns:
        ``finish(latents)``: the pipeline's own output.

    Example:
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> pipe = tiny_stable_diffusion()
        >>> a = {"output_type": "pt", "return_dict": False, "generator": None}
        >>> p = Prompts(torch.zeros(1, 16, 32), None, 1, torch.device("cpu"))
        >>> images, nsfw = finisher(pipe, a, p)(torch.zeros(1, 4, 8, 8))
        >>> images.shape, nsfw
        (torch.Size([1, 3, 16, 16]), None)
    """

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
            image, nsfw = pipe.run_safety_checker(image, prompts.device, prompts.cond.dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
        image = pipe.image_processor.postprocess(
            image, output_type=a["output_type"], do_denormalize=denormalize
        )
        if after is not None:
            image = after(image)
        if not a["return_dict"]:
            return image, nsfw
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)

    return finish


def strength_grid(
    pipe: Any, steps: int, strength: float, device: torch.device
) -> tuple[Tensor, int]:
    """The loop's timesteps from ``strength``, and its first step, as img2img pipelines set them.

    The pipeline's ``set_timesteps`` then ``get_timesteps`` (which sets the scheduler's
    begin index). Every supported scheduler starts there as the pipeline's loop does,
    multistep ones with their warm-up again (:meth:`picard.adapters.rule.UpdateRule.tail`).

    Args:
        pipe: the pipeline (its scheduler is set).
        steps: the call's ``num_inference_steps``.
        strength: the call's ``strength``.
        device: where the timesteps go.

    Returns:
        ``(timesteps, begin)``: the loop's timesteps and its first step in the grid.

    Raises:
        ValueError: a ``strength`` that leaves no step.

    Example:
        >>> from picard.models.tiny_sd_variants import tiny_sd_img2img
        >>> timesteps, begin = strength_grid(tiny_sd_img2img(), 10, 0.6, torch.device("cpu"))
        >>> len(timesteps), begin
        (6, 4)
    """
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps, left = pipe.get_timesteps(steps, strength, device)
    if left < 1:
        raise ValueError(f"strength={strength} leaves no step of {steps}: nothing to denoise")
    return timesteps, len(pipe.scheduler.timesteps) - len(timesteps)


def unet_prepared(
    pipe: Any,
    a: Mapping[str, Any],
    latents: Tensor,
    timesteps: Tensor,
    denoiser: Callable[[torch.device | None], Callable[..., Tensor]],
    finish: Callable[[Tensor], Any],
    cfg: bool,
    **more: Any,
) -> Prepared:
    """The :class:`Prepared` call of a UNet family: its rows, generator and ``eta``.

    Args:
        pipe: the pipeline (its UNet's device).
        a: the call's arguments (``num_inference_steps``, ``generator``, ``eta``).
        latents: the starting latent.
        timesteps: the loop's timesteps.
        denoiser: ``denoiser(device)``, e.g. from :func:`unet_denoiser`.
        finish: the final latent to the pipeline's output, e.g. from :func:`finisher`.
        cfg: whether the call runs classifier-free guidance (two rows per evaluation).
        **more: further :class:`Prepared` fields (``begin``, ``end``, ``wrap_rule``).

    Returns:
        The prepared call.

    Example:
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> pipe = tiny_stable_diffusion()
        >>> a = {"num_inference_steps": 5, "generator": None, "eta": 0.0}
        >>> p = unet_prepared(pipe, a, torch.zeros(1, 4, 8, 8), torch.arange(5), None, None,
        ...                   True, begin=0)
        >>> p.rows_per_evaluation, p.step_options
        (2, {'eta': 0.0})
    """
    return Prepared(
        latents=latents,
        num_inference_steps=a["num_inference_steps"],
        timesteps=timesteps,
        denoiser=denoiser,
        device=pipe.unet.device,
        finish=finish,
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        step_options={"eta": a["eta"]},
        **more,
    )
