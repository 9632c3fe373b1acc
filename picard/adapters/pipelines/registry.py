"""The registry of diffusers pipelines :func:`~picard.adapters.diffusers.parallelize` runs.

One entry per pipeline class: the family's ``prepare`` (:mod:`picard.adapters.pipelines.spec`),
how the command line calls it, what it supports, and the call arguments it refuses. A
subclass of a registered diffusers pipeline runs as its parent unless it overrides
``__call__``. The API, the command line (``picard sample --pipeline``) and the docs'
"Supported" page all read this one table: adding a pipeline is one family file plus one
line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from picard.adapters.lookup import registered
from picard.adapters.pipelines.spec import Prepared
from picard.adapters.pipelines.stable_diffusion import prepare_stable_diffusion
from picard.adapters.pipelines.unconditional import prepare_unconditional

__all__ = ["PIPELINES", "Runner", "runner_for"]

_COMMON_REFUSED = ("timesteps", "sigmas", "ip_adapter_image", "ip_adapter_image_embeds")


@dataclass(frozen=True)
class Runner:
    """How :func:`~picard.adapters.diffusers.parallelize` runs one pipeline class.

    Attributes:
        prepare: ``prepare(pipe, arguments) -> Prepared`` (arguments: the call's own,
            defaults filled in), or ``"module:function"`` naming it.
        inputs: what a call takes, for the command line: ``"text"`` (a prompt) or
            ``"none"`` (unconditional: ``batch_size``).
        supports: what of the pipeline's call is supported (one line, for the docs).
        refused: call arguments refused when given (not at their default).

    Example:
        >>> PIPELINES["StableDiffusionPipeline"].inputs
        'text'
    """

    prepare: Callable[[Any, Mapping[str, Any]], Prepared] | str
    inputs: str
    supports: str
    refused: tuple[str, ...] = ()

    def prepare_call(self, pipe: Any, arguments: Mapping[str, Any]) -> Prepared:
        """Run the family's ``prepare`` (imported on first use when given as a name)."""
        prepare = self.prepare
        if isinstance(prepare, str):
            module, name = prepare.split(":")
            prepare = getattr(importlib.import_module(module), name)
        return prepare(pipe, arguments)


PIPELINES: dict[str, Runner] = {
    "DDPMPipeline": Runner(prepare_unconditional, "none", "every argument"),
    "DDIMPipeline": Runner(prepare_unconditional, "none", "every argument"),
    "StableDiffusionPipeline": Runner(
        prepare_stable_diffusion,
        "text",
        "prompts and embeddings, negative prompts, guidance (and rescale), clip_skip, LoRA "
        "scale, LCM guidance embedding, callback_on_step_end (latents)",
        _COMMON_REFUSED,
    ),
    "StableDiffusionImg2ImgPipeline": Runner(
        "picard.adapters.pipelines.img2img:prepare_img2img",
        "text+image",
        "prompts and embeddings, negative prompts, guidance, image tensors/PIL/latents, "
        "strength (every scheduler: multistep ones warm up again), clip_skip, LoRA scale, "
        "LCM guidance embedding, callback_on_step_end (latents)",
        _COMMON_REFUSED,
    ),
    "StableDiffusionInpaintPipeline": Runner(
        "picard.adapters.pipelines.inpaint:prepare_inpaint",
        "text+image+mask",
        "9-channel inpainting UNets and 4-channel UNets (the known region blended back "
        "after each step); prompts and embeddings, negative prompts, guidance, images, "
        "masks, masked_image_latents, strength (every scheduler: multistep ones warm up "
        "again), padding_mask_crop, clip_skip, LoRA scale, LCM guidance embedding, "
        "callback_on_step_end (latents)",
        _COMMON_REFUSED,
    ),
    "StableDiffusionControlNetPipeline": Runner(
        "picard.adapters.pipelines.controlnet:prepare_controlnet",
        "text+image",
        "one ControlNet or several (MultiControlNetModel), a control image per sample, "
        "controlnet_conditioning_scale, guess_mode, control_guidance_start/end; prompts "
        "and embeddings, negative prompts, guidance, clip_skip, LoRA scale, LCM guidance "
        "embedding, callback_on_step_end (latents)",
        _COMMON_REFUSED,
    ),
    "StableDiffusionXLPipeline": Runner(
        "picard.adapters.pipelines.sdxl:prepare_sdxl",
        "text",
        "prompts (and prompt_2), negative prompts, embeddings (and pooled), guidance (and "
        "rescale), size/crop time ids (and negative ones), clip_skip, LoRA scale, LCM guidance "
        "embedding, callback_on_step_end (latents); denoising_end only where it keeps every step",
        _COMMON_REFUSED,
    ),
    "StableDiffusionXLImg2ImgPipeline": Runner(
        "picard.adapters.pipelines.sdxl:prepare_sdxl_img2img",
        "text+image",
        "as StableDiffusionXLPipeline, with image, strength and denoising_start (every "
        "scheduler: multistep ones warm up again), aesthetic scores; denoising_end only "
        "where it keeps every step",
        _COMMON_REFUSED,
    ),
    "StableDiffusion3Pipeline": Runner(
        "picard.adapters.pipelines.sd3:prepare_sd3",
        "text",
        "prompts (three encoders, or embeddings; text_encoder_3=None), negative prompts, "
        "guidance, skip-layer guidance, custom sigmas, mu (dynamic shifting), clip_skip, "
        "joint_attention_kwargs (LoRA scale), callback_on_step_end (latents)",
        ("ip_adapter_image", "ip_adapter_image_embeds"),
    ),
    "FluxPipeline": Runner(
        "picard.adapters.pipelines.flux:prepare_flux",
        "text",
        "prompts or embeddings, guidance embedding, true_cfg_scale with negative prompts, "
        "custom sigmas, dynamic shift, joint_attention_kwargs (LoRA scale), "
        "callback_on_step_end (latents)",
        (
            "ip_adapter_image",
            "ip_adapter_image_embeds",
            "negative_ip_adapter_image",
            "negative_ip_adapter_image_embeds",
        ),
    ),
    "PixArtAlphaPipeline": Runner(
        "picard.adapters.pipelines.pixart:prepare_pixart",
        "text",
        "prompts or prompt_embeds with their attention masks, negative ones, guidance, eta, "
        "latents, resolution binning, size conditions (sample_size 128), learned sigma",
        (*_COMMON_REFUSED, "callback"),
    ),
    "PixArtSigmaPipeline": Runner(
        "picard.adapters.pipelines.pixart:prepare_pixart",
        "text",
        "as PixArtAlphaPipeline (no size conditions), max_sequence_length",
        (*_COMMON_REFUSED, "callback"),
    ),
    "DiTPipeline": Runner(
        "picard.adapters.pipelines.dit:prepare_dit",
        "class",
        "class ids, guidance (on eps), learned sigma; schedulers that do not scale the model "
        "input; stochastic ones without guidance (their noise from torch's global generator)",
    ),
    "FluxKontextPipeline": Runner(
        "picard.adapters.pipelines.flux:prepare_flux_kontext",
        "text+image",
        "as FluxPipeline, with an image (or its latents) whose tokens join every row, "
        "max_area, _auto_resize",
        (
            "ip_adapter_image",
            "ip_adapter_image_embeds",
            "negative_ip_adapter_image",
            "negative_ip_adapter_image_embeds",
        ),
    ),
    "FluxFillPipeline": Runner(
        "picard.adapters.pipelines.flux:prepare_flux_fill",
        "text+image+mask",
        "prompts or embeddings, guidance embedding, image and mask (or masked_image_latents), "
        "strength, custom sigmas, dynamic shift, joint_attention_kwargs (LoRA scale), "
        "callback_on_step_end (latents)",
    ),
    "SanaPipeline": Runner(
        "picard.adapters.pipelines.sana:prepare_sana",
        "text",
        "prompts or prompt_embeds with their attention masks, negative ones, guidance, "
        "custom timesteps/sigmas, eta, resolution binning, learned sigma, attention_kwargs "
        "(LoRA scale), callback_on_step_end (latents); flow-matching Euler and UniPC (flow "
        "sigmas), not DPMSolverMultistepScheduler with use_flow_sigmas",
    ),
    "Lumina2Pipeline": Runner(
        "picard.adapters.pipelines.lumina2:prepare_lumina2",
        "text",
        "prompts or prompt_embeds with their attention masks, negative ones, system_prompt, "
        "guidance with cfg_normalization and cfg_trunc_ratio (by step index), custom sigmas, "
        "attention_kwargs, callback_on_step_end (latents)",
    ),
    "CogView4Pipeline": Runner(
        "picard.adapters.pipelines.cogview4:prepare_cogview4",
        "text",
        "prompts or embeddings, negative ones, guidance, custom timesteps/sigmas, dynamic "
        "shift, size conditions (original_size, crops_coords_top_left), latents of any "
        "dtype, attention_kwargs",
        ("callback_on_step_end",),
    ),
    "QwenImagePipeline": Runner(
        "picard.adapters.pipelines.qwenimage:prepare_qwenimage",
        "text",
        "prompts or prompt_embeds with their masks, negative ones, normalized true_cfg_scale, "
        "guidance embedding (distilled models), custom sigmas, dynamic shift, "
        "attention_kwargs, callback_on_step_end (latents)",
    ),
    "WanPipeline": Runner(
        "picard.adapters.pipelines.wan:prepare_wan",
        "text",
        "Wan 2.1, and Wan 2.2's two experts (boundary_ratio, guidance_scale_2) and "
        "expand_timesteps; prompts or embeddings, negative prompts, guidance, frames and size "
        "rounded as the pipeline rounds them, attention_kwargs, callback_on_step_end (latents)",
    ),
    "CogVideoXPipeline": Runner(
        "picard.adapters.pipelines.cogvideox:prepare_cogvideox",
        "text",
        "prompts or embeddings, negative prompts, guidance and use_dynamic_cfg, rotary "
        "embeddings, temporal patches (CogVideoX 1.5), attention_kwargs, callback_on_step_end "
        "(latents); CogVideoXDDIMScheduler (CogVideoXDPMScheduler only with "
        "on_unsupported='sequential')",
        ("timesteps",),
    ),
    "LTXPipeline": Runner(
        "picard.adapters.pipelines.ltx:prepare_ltx",
        "text",
        "prompts or embeddings with their attention masks, negative ones, guidance (and "
        "rescale), frame_rate, the decoder's timestep conditioning (decode_timestep, "
        "decode_noise_scale), attention_kwargs, callback_on_step_end (latents)",
        ("timesteps",),
    ),
    "AnimateDiffPipeline": Runner(
        "picard.adapters.pipelines.animatediff:prepare_animatediff",
        "text",
        "prompts or embeddings, negative prompts, guidance, eta, clip_skip, LoRA scale, "
        "decode_chunk_size, callback_on_step_end (latents); not FreeInit or FreeNoise",
        ("ip_adapter_image", "ip_adapter_image_embeds"),
    ),
    "HunyuanVideoPipeline": Runner(
        "picard.adapters.pipelines.hunyuan_video:prepare_hunyuan_video",
        "text",
        "prompts (Llama with its prompt_template, CLIP pooled) or embeddings with their "
        "attention masks, guidance embedding, true_cfg_scale with negative prompts, custom "
        "sigmas, attention_kwargs, callback_on_step_end (latents)",
    ),
    "StableAudioPipeline": Runner(
        "picard.adapters.pipelines.stable_audio:prepare_stable_audio",
        "text",
        "prompts or prompt_embeds with attention masks, negative ones, guidance, audio "
        "start/end, num_waveforms_per_prompt, initial_audio_waveforms, eta; "
        "EDMDPMSolverMultistepScheduler (not the released CosineDPMSolverMultistepScheduler)",
        ("callback",),
    ),
}
"""Pipeline class names :func:`~picard.adapters.diffusers.parallelize` runs, and how."""


def runner_for(pipe: Any) -> tuple[str, Runner] | None:
    """The registered class ``pipe`` runs as, and its runner; ``None`` if unsupported.

    ``pipe``'s own class if registered; else the nearest registered diffusers class it
    derives from, unless a class in between overrides ``__call__`` (then it is not run as
    its parent).

    Args:
        pipe: a diffusers pipeline.

    Returns:
        ``(class name, runner)``, or ``None``.

    Example:
        >>> from diffusers import DDPMPipeline
        >>> class Mine(DDPMPipeline):
        ...     pass
        >>> runner_for(Mine.__new__(Mine))[0]
        'DDPMPipeline'
        >>> class Custom(DDPMPipeline):
        ...     def __call__(self, *args, **kwargs):
        ...         return None
        >>> runner_for(Custom.__new__(Custom)) is None
        True
    """
    return registered(type(pipe), PIPELINES, ("__call__",))
