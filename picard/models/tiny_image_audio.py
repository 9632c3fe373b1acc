"""Tiny image and audio pipelines with random weights, built from configs — never downloaded.

Flux Kontext and Flux Fill reuse :func:`picard.models.tiny_sd3_flux.tiny_flux`'s parts
(Fill with a transformer that takes the masked image and mask as extra channels); their
prompts come as embeddings (:func:`flux_prompt_embeds`: no T5 tokenizer is built). The
other pipelines are built from their models' smallest configs; where a tokenizer or text
encoder is impractical offline, prompts are passed as ``prompt_embeds``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from picard.models.tiny import autoencoder_kl
from picard.models.tiny_sd3_flux import t5_embeddings, tiny_flux

__all__ = [
    "flux_prompt_embeds",
    "masked_prompt_embeds",
    "qwen_prompt_embeds",
    "tiny_cogview4",
    "tiny_flux_fill",
    "tiny_flux_kontext",
    "tiny_lumina2",
    "tiny_qwenimage",
    "tiny_sana",
    "tiny_stable_audio",
]


def _ready(pipe: Any) -> Any:
    """``pipe`` with its modules in eval mode and its progress bar off."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_prompt_embeds(pipe: Any, prompts: list[str], prefix: str = "") -> dict[str, Tensor]:
    """A Flux-family call's ``prompt_embeds`` and ``pooled_prompt_embeds`` of ``prompts``.

    T5's by :func:`~picard.models.tiny_sd3_flux.t5_embeddings`, CLIP's pooled output by
    the pipeline's own ``_get_clip_prompt_embeds``.

    Args:
        pipe: a Flux-family pipeline.
        prompts: the prompts.
        prefix: put before the names (``"negative_"`` for negative prompts).

    Returns:
        The two keyword arguments.

    Example:
        >>> e = flux_prompt_embeds(tiny_flux_kontext(), ["a cat"], "negative_")
        >>> sorted(e), e["negative_prompt_embeds"].shape
        (['negative_pooled_prompt_embeds', 'negative_prompt_embeds'], torch.Size([1, 8, 32]))
    """
    with torch.no_grad():
        pooled = pipe._get_clip_prompt_embeds(prompts, 1, pipe.device)
    embeds = t5_embeddings(pipe, prompts).to(pooled.dtype)
    return {f"{prefix}prompt_embeds": embeds, f"{prefix}pooled_prompt_embeds": pooled}


def tiny_flux_kontext(seed: int = 0) -> Any:
    """A ``FluxKontextPipeline`` of :func:`~picard.models.tiny_sd3_flux.tiny_flux`'s parts.

    Call it with ``max_area=height * width`` (the default fits 1024²) and
    ``_auto_resize=False`` (else the image is resized to a preferred Kontext resolution).

    Args:
        seed: the weights' seed.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> type(tiny_flux_kontext()).__name__
        'FluxKontextPipeline'
    """
    from diffusers import FluxKontextPipeline

    return _ready(FluxKontextPipeline(**tiny_flux(seed).components))


def tiny_flux_fill(seed: int = 0) -> Any:
    """A ``FluxFillPipeline``: ``tiny_flux``'s parts, its transformer taking 48 channels.

    16 packed latent channels, 16 of the masked image's packed latents and 16 of the
    packed mask (``vae_scale_factor² = 4`` mask channels per latent pixel, 2x2 patches).

    Args:
        seed: the weights' seed.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> tiny_flux_fill().transformer.config.in_channels
        48
    """
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    parts = tiny_flux(seed).components
    config = {k: v for k, v in parts["transformer"].config.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**{**config, "in_channels": 48, "out_channels": 16})
    parts = {k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    return _ready(FluxFillPipeline(**{**parts, "transformer": transformer}))


def tiny_sana(seed: int = 0, scheduler: Any = None) -> Any:
    """A ``SanaPipeline`` of tiny random parts (4x16x16 latents at 32 px), no text encoder.

    Prompts come as embeddings with their masks (:func:`masked_prompt_embeds`): the Gemma
    tokenizer and encoder are left out (``None``).

    Args:
        seed: the weights' seed.
        scheduler: the scheduler (default: flow-matching Euler with shift 3).

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_sana()
        >>> pipe.vae_scale_factor, pipe.transformer.config.sample_size, pipe.text_encoder
        (2, 16, None)
    """
    from diffusers import (
        AutoencoderDC,
        FlowMatchEulerDiscreteScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=4,
        num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=4,
        cross_attention_dim=8, caption_channels=8, sample_size=16,
    )  # fmt: skip
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0) if scheduler is None else scheduler
    pipe = SanaPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return _ready(pipe)


def masked_prompt_embeds(
    prompts: list[str], width: int = 8, prefix: str = "", length: int = 6, seed: int = 0
) -> dict[str, Tensor]:
    """Stand-in text-encoder embeddings of ``prompts`` and their attention masks.

    For pipelines whose encoder (Gemma, Qwen, ...) and tokenizer are impractical offline:
    each prompt's embedding is drawn from a generator seeded by its text (equal prompts,
    equal embeddings); its mask keeps as many tokens as it has words (1 to ``length``).

    Args:
        prompts: the prompts.
        width: the embedding width (the transformer's caption channels).
        prefix: put before the names (``"negative_"`` for negative prompts).
        length: tokens per prompt.
        seed: mixed into each prompt's seed.

    Returns:
        ``{prefix}prompt_embeds`` ``(len(prompts), length, width)`` and
        ``{prefix}prompt_attention_mask`` ``(len(prompts), length)``.

    Example:
        >>> e = masked_prompt_embeds(["a cat", "a red dog"])
        >>> e["prompt_embeds"].shape, e["prompt_attention_mask"].sum(1).tolist()
        (torch.Size([2, 6, 8]), [2, 3])
    """
    embeds = torch.zeros(len(prompts), length, width)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        g = torch.Generator().manual_seed(seed + sum(prompt.encode()) * 7919 + len(prompt))
        embeds[row] = torch.randn(length, width, generator=g)
        mask[row, : min(length, max(1, len(prompt.split())))] = 1
    return {f"{prefix}prompt_embeds": embeds, f"{prefix}prompt_attention_mask": mask}


def tiny_lumina2(seed: int = 0) -> Any:
    """A ``Lumina2Pipeline`` of tiny random parts (4x8x8 latents at 64 px), no text encoder.

    Prompts come as embeddings of width 8 with their masks (:func:`masked_prompt_embeds`).

    Args:
        seed: the weights' seed.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> tiny_lumina2().transformer.config.cap_feat_dim
        8
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Lumina2Pipeline,
        Lumina2Transformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2,
        num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
        axes_dim_rope=(4, 2, 2), axes_lens=(32, 32, 32), cap_feat_dim=8,
    )  # fmt: skip
    vae = autoencoder_kl(  # 8x smaller latents: the pipeline's fixed vae_scale_factor
        block_out_channels=[8, 8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = Lumina2Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None
    )
    return _ready(pipe)


def tiny_cogview4(seed: int = 0) -> Any:
    """A ``CogView4Pipeline`` of tiny random parts (4x8x8 latents at 16 px), no text encoder.

    Prompts come as ``prompt_embeds`` of width 16 (e.g. :func:`masked_prompt_embeds`'s,
    without the mask); the scheduler is CogView4's (dynamic, linear shift).

    Args:
        seed: the weights' seed.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> tiny_cogview4().transformer.config.text_embed_dim
        16
    """
    from diffusers import (
        CogView4Pipeline,
        CogView4Transformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    torch.manual_seed(seed)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4,
        num_attention_heads=4, text_embed_dim=16, time_embed_dim=8, condition_dim=4,
        pos_embed_max_size=8, sample_size=8, rope_axes_dim=(2, 2),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True,
        time_shift_type="linear",
    )  # fmt: skip
    pipe = CogView4Pipeline(
        tokenizer=None, text_encoder=None, vae=autoencoder_kl(), transformer=transformer,
        scheduler=scheduler,
    )  # fmt: skip
    return _ready(pipe)


def tiny_qwenimage(seed: int = 0) -> Any:
    """A ``QwenImagePipeline`` of tiny random parts (16 packed tokens at 32 px), no text encoder.

    Prompts come as embeddings of width 16 with masks (:func:`qwen_prompt_embeds`).

    Args:
        seed: the weights' seed.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> tiny_qwenimage().vae_scale_factor
        4
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16,
        axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
        temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
        latents_std=[1.5, 0.8, 1.0, 2.0],
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64
    )
    pipe = QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )
    return _ready(pipe)


def qwen_prompt_embeds(prompts: list[str], prefix: str = "", length: int = 6) -> dict[str, Tensor]:
    """:func:`masked_prompt_embeds` of width 16, named as ``QwenImagePipeline`` takes them.

    Args:
        prompts: the prompts.
        prefix: put before the names (``"negative_"`` for negative prompts).
        length: tokens per prompt.

    Returns:
        ``{prefix}prompt_embeds`` and ``{prefix}prompt_embeds_mask``.

    Example:
        >>> sorted(qwen_prompt_embeds(["a cat"]))
        ['prompt_embeds', 'prompt_embeds_mask']
    """
    made = masked_prompt_embeds(prompts, width=16, length=length)
    return {
        f"{prefix}prompt_embeds": made["prompt_embeds"],
        f"{prefix}prompt_embeds_mask": made["prompt_attention_mask"],
    }


def tiny_stable_audio(seed: int = 0, scheduler: Any = None) -> Any:
    """A ``StableAudioPipeline`` of tiny random parts (3x8 latents, 32 stereo samples at 4 Hz).

    No T5 encoder or tokenizer: prompts come as ``prompt_embeds`` of width 32 (the
    projection model maps them to the DiT's conditioning).

    Args:
        seed: the weights' seed.
        scheduler: the scheduler (default: the pipeline's ``EDMDPMSolverMultistepScheduler``,
            v-prediction, second order).

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_stable_audio()
        >>> pipe.vae.hop_length, pipe.transformer.config.sample_size
        (4, 8)
    """
    from diffusers import (
        AutoencoderOobleck,
        EDMDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
    )
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel

    torch.manual_seed(seed)
    transformer = StableAudioDiTModel(
        sample_size=8, in_channels=3, num_layers=2, attention_head_dim=4, num_attention_heads=2,
        num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4,
        time_proj_dim=8, global_states_input_dim=8, cross_attention_input_dim=4,
    )  # fmt: skip
    vae = AutoencoderOobleck(
        encoder_hidden_size=6, downsampling_ratios=[2, 2], decoder_channels=3,
        decoder_input_channels=3, audio_channels=2, channel_multiples=[2, 4], sampling_rate=4,
    )  # fmt: skip
    projection = StableAudioProjectionModel(
        text_encoder_dim=32, conditioning_dim=4, min_value=0, max_value=32
    )
    scheduler = scheduler or EDMDPMSolverMultistepScheduler(
        solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
        sigma_schedule="exponential",
    )  # fmt: skip
    pipe = StableAudioPipeline(
        vae=vae, text_encoder=None, projection_model=projection, tokenizer=None,
        transformer=transformer, scheduler=scheduler,
    )  # fmt: skip
    return _ready(pipe)
