"""``StableDiffusionXLPipeline`` and ``StableDiffusionXLImg2ImgPipeline``.

SDXL's UNet takes, besides the prompt's hidden states (both text encoders, concatenated),
the added conditioning ``text_embeds`` (the second encoder's pooled embedding) and
``time_ids`` (original size, crop, target size or aesthetic score). The pipelines build
these tensors for the ``[unconditional, conditional]`` halves of the guided batch; each
row of picard's model call takes its sample's rows of exactly those tensors, so quirks
of the pipelines' layout (the text-to-image pipeline interleaves the two halves' time
ids across images) are reproduced, not corrected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import prompt_count
from picard.adapters.pipelines.sd_parts import guidance_scale_embedding, unet_prepared
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = ["prepare_sdxl", "prepare_sdxl_img2img"]


@dataclass(frozen=True)
class _Conditioning:
    """The model call's conditioning as the pipeline lays it out.

    ``embeds``, ``text`` and ``time`` hold ``2 B`` rows (``[unconditional, conditional]``)
    with guidance, ``B`` without; ``tcond`` (LCM's guidance embedding) holds ``B``.
    """

    embeds: Tensor
    text: Tensor
    time: Tensor
    tcond: Tensor | None
    images: int
    cfg: bool

    def to(self, device: torch.device | None) -> _Conditioning:
        """The same conditioning on ``device`` (``None``: as is)."""
        if device is None:
            return self
        moved = on(device, [self.embeds, self.text, self.time, self.tcond])
        return _Conditioning(*moved, self.images, self.cfg)

    def rows(self, samples: Tensor) -> Tensor:
        """The pipeline's rows of the samples' model inputs (both halves with guidance)."""
        if not self.cfg:
            return samples
        return torch.cat([samples, samples + self.images])


def _valid(value: Any) -> bool:
    """Whether a ``denoising_start``/``denoising_end`` is used, as the pipelines test it."""
    return isinstance(value, float) and 0 < value < 1


def _call_state(pipe: Any, a: Mapping[str, Any]) -> None:
    """Set the call's properties the pipeline's own methods read, as its ``__call__`` does."""
    pipe._guidance_scale, pipe._guidance_rescale = a["guidance_scale"], a["guidance_rescale"]
    pipe._clip_skip, pipe._cross_attention_kwargs = a["clip_skip"], a["cross_attention_kwargs"]
    pipe._denoising_end, pipe._interrupt = a["denoising_end"], False
    if "denoising_start" in a:
        pipe._denoising_start = a["denoising_start"]


def _images(a: Mapping[str, Any]) -> int:
    """How many images the call makes: prompts times ``num_images_per_prompt``."""
    return prompt_count(a) * (a["num_images_per_prompt"] or 1)


def _encode(pipe: Any, a: Mapping[str, Any], device: torch.device) -> tuple[Tensor, ...]:
    """The pipeline's ``encode_prompt``: (embeds, negative, pooled, negative pooled)."""
    return pipe.encode_prompt(
        prompt=a["prompt"], prompt_2=a["prompt_2"], device=device,
        num_images_per_prompt=a["num_images_per_prompt"],
        do_classifier_free_guidance=pipe.do_classifier_free_guidance,
        negative_prompt=a["negative_prompt"], negative_prompt_2=a["negative_prompt_2"],
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
        lora_scale=(a["cross_attention_kwargs"] or {}).get("scale"), clip_skip=a["clip_skip"],
    )  # fmt: skip


def _projection_dim(pipe: Any, pooled: Tensor) -> int:
    """The pooled embedding's size, as the pipelines read it."""
    if pipe.text_encoder_2 is None:
        return int(pooled.shape[-1])
    return pipe.text_encoder_2.config.projection_dim


def _timesteps(pipe: Any, steps: int, device: torch.device) -> None:
    """The pipeline's ``retrieve_timesteps`` on its default grid (custom grids are refused)."""
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
        retrieve_timesteps,
    )

    retrieve_timesteps(pipe.scheduler, steps, device, None, None)


def _truncated(pipe: Any, denoising_end: Any, timesteps: Tensor) -> Tensor:
    """The timesteps the loop runs, cut where ``denoising_end`` stops it, as the pipelines cut.

    The base of a base → refiner split stops early; the refiner starts there.
    """
    if not _valid(denoising_end):
        return timesteps  # the pipelines ignore it
    train = pipe.scheduler.config.num_train_timesteps
    cutoff = round(train - denoising_end * train)
    kept = int((torch.as_tensor(timesteps) >= cutoff).sum())
    return timesteps[:kept]


def _tcond(pipe: Any, a: Mapping[str, Any], images: int, like: Tensor) -> Tensor | None:
    """LCM-distilled UNets' guidance-scale embedding, on ``like``'s device and dtype."""
    return guidance_scale_embedding(pipe, a["guidance_scale"], images, like.device, like.dtype)


def _halves(pipe: Any, embeds: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """The prompt and pooled embeddings, ``[negative, positive]`` with guidance."""
    prompt, negative, pooled, negative_pooled = embeds
    if pipe.do_classifier_free_guidance:
        return torch.cat([negative, prompt]), torch.cat([negative_pooled, pooled])
    return prompt, pooled


def prepare_sdxl(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableDiffusionXLPipeline`` call: prompts, time ids, timesteps, latents.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (both encoders, ``prompt_2``,
    negative prompts, ``clip_skip``, LoRA scale), ``retrieve_timesteps``,
    ``prepare_latents`` and ``_get_add_time_ids`` (sizes, crop, and the ``negative_*``
    ones) run as in its ``__call__``; rows of the model call carry their sample's prompt,
    pooled embedding and time ids.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        ValueError: ``denoising_end`` ends the loop before the grid's last step.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sdxl import tiny_sdxl
        >>> pipe = tiny_sdxl()
        >>> a = call_arguments(
        ...     pipe, ["a cat", "a dog"], num_inference_steps=5)
        >>> p = prepare_sdxl(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation
        (torch.Size([2, 4, 8, 8]), 2)
    """
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"], a["prompt_2"], height, width, None, a["negative_prompt"],
        a["negative_prompt_2"], a["prompt_embeds"], a["negative_prompt_embeds"],
        a["pooled_prompt_embeds"], a["negative_pooled_prompt_embeds"], None, None, ["latents"],
    )  # fmt: skip
    _call_state(pipe, a)
    images, device = _images(a), pipe._execution_device
    embeds = _encode(pipe, a, device)
    _timesteps(pipe, a["num_inference_steps"], device)
    latents = pipe.prepare_latents(
        images, pipe.unet.config.in_channels, height, width, embeds[0].dtype, device,
        a["generator"], a["latents"],
    )  # fmt: skip
    projection, dtype = _projection_dim(pipe, embeds[2]), embeds[0].dtype
    time = pipe._get_add_time_ids(
        a["original_size"] or (height, width), a["crops_coords_top_left"],
        a["target_size"] or (height, width), dtype=dtype, text_encoder_projection_dim=projection,
    )  # fmt: skip
    negative = time
    if a["negative_original_size"] is not None and a["negative_target_size"] is not None:
        negative = pipe._get_add_time_ids(
            a["negative_original_size"], a["negative_crops_coords_top_left"],
            a["negative_target_size"], dtype=dtype, text_encoder_projection_dim=projection,
        )  # fmt: skip
    cfg = pipe.do_classifier_free_guidance
    if cfg:  # as the pipeline: [negative, positive] repeated per image (interleaved)
        time = torch.cat([negative, time])
    prompt, text = _halves(pipe, embeds)
    timesteps = _truncated(pipe, a["denoising_end"], pipe.scheduler.timesteps)
    conditioning = _Conditioning(
        prompt.to(device), text.to(device), time.to(device).repeat(images, 1),
        _tcond(pipe, a, images, latents), images, cfg,
    )  # fmt: skip
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(0)
    return _prepared(pipe, a, latents, conditioning, timesteps, begin=0, img2img=False)


def prepare_sdxl_img2img(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableDiffusionXLImg2ImgPipeline`` call: image, strength, prompts.

    As :func:`prepare_sdxl`, with the pipeline's own image preprocessing, ``get_timesteps``
    (``strength``, or ``denoising_start`` — the loop then starts at that step of the
    grid, :attr:`Prepared.begin`), ``prepare_latents`` (the image encoded and noised to
    the first step, from the call's generator) and ``_get_add_time_ids`` (with the
    aesthetic scores for a UNet that ``requires_aesthetics_score``). Every supported
    scheduler starts at :attr:`Prepared.begin` as the pipeline's loop does after
    ``set_begin_index``, multistep ones with their warm-up again.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        ValueError: ``denoising_end`` ends the loop before the grid's last step.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sdxl import tiny_sdxl_img2img
        >>> pipe = tiny_sdxl_img2img()
        >>> a = call_arguments(
        ...     pipe, "a cat", image=torch.rand(1, 3, 16, 16), strength=0.5,
        ...     num_inference_steps=10)
        >>> p = prepare_sdxl_img2img(pipe, a)
        >>> p.begin, len(p.timesteps), p.latents.shape
        (5, 5, torch.Size([1, 4, 8, 8]))
    """
    pipe.check_inputs(
        a["prompt"], a["prompt_2"], a["strength"], a["num_inference_steps"], None,
        a["negative_prompt"], a["negative_prompt_2"], a["prompt_embeds"],
        a["negative_prompt_embeds"], None, None, ["latents"],
    )  # fmt: skip
    _call_state(pipe, a)
    images, device = _images(a), pipe._execution_device
    embeds = _encode(pipe, a, device)
    image = pipe.image_processor.preprocess(a["image"])
    _timesteps(pipe, a["num_inference_steps"], device)
    start = a["denoising_start"] if _valid(a["denoising_start"]) else None
    timesteps, _ = pipe.get_timesteps(a["num_inference_steps"], a["strength"], device, start)
    begin = len(pipe.scheduler.timesteps) - len(timesteps)
    latents = a["latents"]
    if latents is None:
        batch = images // (a["num_images_per_prompt"] or 1)
        latents = pipe.prepare_latents(
            image, timesteps[:1].repeat(images), batch, a["num_images_per_prompt"],
            embeds[0].dtype, device, a["generator"], a["denoising_start"] is None,
        )  # fmt: skip
    size = (latents.shape[-2] * pipe.vae_scale_factor, latents.shape[-1] * pipe.vae_scale_factor)
    original, target = a["original_size"] or size, a["target_size"] or size
    negative_original, negative_target = a["negative_original_size"], a["negative_target_size"]
    time, negative = pipe._get_add_time_ids(
        original, a["crops_coords_top_left"], target, a["aesthetic_score"],
        a["negative_aesthetic_score"], original if negative_original is None else negative_original,
        a["negative_crops_coords_top_left"], target if negative_target is None else negative_target,
        dtype=embeds[0].dtype, text_encoder_projection_dim=_projection_dim(pipe, embeds[2]),
    )  # fmt: skip
    cfg = pipe.do_classifier_free_guidance
    time = time.repeat(images, 1)
    if cfg:  # as the pipeline: all negative rows, then all positive ones
        time = torch.cat([negative.repeat(images, 1), time])
    prompt, text = _halves(pipe, embeds)
    timesteps = _truncated(pipe, a["denoising_end"], timesteps)
    conditioning = _Conditioning(
        prompt.to(device), text.to(device), time.to(device),
        _tcond(pipe, a, images, latents), images, cfg,
    )  # fmt: skip
    return _prepared(pipe, a, latents, conditioning, timesteps, begin=begin, img2img=True)


def _prepared(
    pipe: Any,
    a: Mapping[str, Any],
    latents: Tensor,
    conditioning: _Conditioning,
    timesteps: Tensor,
    *,
    begin: int,
    img2img: bool,
) -> Prepared:
    """The :class:`Prepared` call of either pipeline: the batched UNet and the finish."""
    pipe._num_timesteps = len(timesteps)  # as the pipelines: callbacks read num_timesteps
    scale, rescale = a["guidance_scale"], a["guidance_rescale"]
    attention = a["cross_attention_kwargs"]

    def denoiser(dev: torch.device | None) -> Any:
        unet, c = on(dev, pipe.unet), conditioning.to(dev)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            samples = sample_rows(samples, x.shape[0], c.images, x.device)
            rows = c.rows(samples)
            tcond = None if c.tcond is None else c.tcond[samples]
            if c.cfg:
                x, t = torch.cat([x, x]), torch.cat([t, t])
                tcond = None if tcond is None else torch.cat([tcond, tcond])
            out = unet(
                x, t, encoder_hidden_states=c.embeds[rows], timestep_cond=tcond,
                cross_attention_kwargs=attention,
                added_cond_kwargs={"text_embeds": c.text[rows], "time_ids": c.time[rows]},
                return_dict=False,
            )[0]  # fmt: skip
            return guided(out, scale, rescale) if c.cfg else out

        return call

    def finish(final: Tensor) -> Any:
        return _finish(pipe, final, a["output_type"], a["return_dict"], img2img)

    return unet_prepared(
        pipe, a, latents, timesteps, denoiser, finish, conditioning.cfg, begin=begin,
        end=begin + len(timesteps),
    )  # fmt: skip


def _decode(pipe: Any, latents: Tensor) -> Tensor:
    """The pipelines' decode: the VAE upcast (``force_upcast``), the latents' statistics."""
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        pipe.upcast_vae()
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
    elif latents.dtype != vae.dtype and torch.backends.mps.is_available():
        pipe.vae = vae = vae.to(latents.dtype)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    image = vae.decode(latents.to(get_module_execution_device(vae)), return_dict=False)[0]
    if upcast:
        vae.to(dtype=torch.float16)
    return image


def _finish(pipe: Any, latents: Tensor, output_type: str, return_dict: bool, img2img: bool) -> Any:
    """The final latent to the pipeline's output (decoded, watermarked, post-processed)."""
    from diffusers.pipelines.stable_diffusion_xl.pipeline_output import (
        StableDiffusionXLPipelineOutput,
    )

    latent = output_type == "latent"
    image = latents if latent else _decode(pipe, latents)
    # The img2img pipeline watermarks whatever it returns (the watermarker leaves tensors
    # under 256 pixels wide as they are); text-to-image only decoded images.
    if pipe.watermark is not None and (img2img or not latent):
        image = pipe.watermark.apply_watermark(image)
    if img2img or not latent:
        image = pipe.image_processor.postprocess(image, output_type=output_type)
    if not return_dict:
        return (image,)
    return StableDiffusionXLPipelineOutput(images=image)
