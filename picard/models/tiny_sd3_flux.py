"""Tiny Stable Diffusion 3 and Flux pipelines with random weights, built from configs.

They run the real pipelines' code paths (MMDiT transformer, 16-channel-style VAE with
``shift_factor``/``scaling_factor``, CLIP and T5 text encoders, flow-matching Euler) at a
size a CPU runs in milliseconds. Nothing is downloaded: the CLIP tokenizers are
:func:`picard.models.tiny.byte_level_clip_tokenizer`; no T5 tokenizer is built, so T5
embeddings come from :func:`t5_embeddings` (a prompt's UTF-8 bytes as token ids) and
reach the pipelines as ``prompt_embeds`` — or, for SD3, the T5 encoder is left out
(``text_encoder_3=None``: the pipeline zero-pads its part).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from picard.models.tiny import autoencoder_kl, byte_level_clip_tokenizer, clip_config

__all__ = ["sd3_embeddings", "t5_embeddings", "tiny_flux", "tiny_sd3"]

_HIDDEN = 32


def _clip(tokenizer: Any, with_projection: bool) -> Any:
    """A 2-layer CLIP text encoder of width 32 for ``tokenizer``."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = clip_config(tokenizer, hidden_size=_HIDDEN, projection_dim=_HIDDEN)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _t5(width: int) -> Any:
    """A 2-layer T5 encoder of ``width`` over 300 token ids (bytes and a few more)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=300, d_model=width, d_ff=64, d_kv=8, num_layers=2, num_heads=4)
    return T5EncoderModel(config)


def _sd3_vae() -> Any:
    """The tiny ``AutoencoderKL`` (latents at half the image size) with SD3's factors."""
    return autoencoder_kl(
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035
    )


def _scheduler(dynamic: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:  # Flux's: the shift follows the image's sequence length
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64
        )
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _ready(pipe: Any, modules: tuple[Any, ...]) -> Any:
    for module in modules:
        if module is not None:
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(seed: int = 0, t5: bool = False, dynamic: bool = False) -> Any:
    """A ``StableDiffusion3Pipeline`` of tiny random parts (4x8x8 latents at 16 px).

    Args:
        seed: the weights' seed.
        t5: include a T5 encoder (then prompts must come as ``prompt_embeds``, e.g. from
            :func:`sd3_embeddings`: no T5 tokenizer is built); without it the pipeline
            zero-pads T5's part, as it does with ``text_encoder_3=None``.
        dynamic: the scheduler's ``use_dynamic_shifting`` (the pipeline then computes
            ``mu`` from the image size).

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_sd3()
        >>> pipe.vae_scale_factor, pipe.transformer.config.num_layers, pipe.text_encoder_3
        (2, 2, None)
    """
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer: Any = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=2 * _HIDDEN,  # both CLIPs side by side, T5's width
        caption_projection_dim=16,
        pooled_projection_dim=2 * _HIDDEN,
        out_channels=4,
        pos_embed_max_size=8,
    )
    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer()
    encoder, encoder_2 = _clip(tokenizer, True), _clip(tokenizer_2, True)
    encoder_3 = _t5(2 * _HIDDEN) if t5 else None
    vae = _sd3_vae()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_scheduler(dynamic),
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        text_encoder_2=encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=encoder_3,
        tokenizer_3=None,
    )
    return _ready(pipe, (transformer, encoder, encoder_2, encoder_3, vae))


def tiny_flux(seed: int = 0, guidance_embeds: bool = True) -> Any:
    """A ``FluxPipeline`` of tiny random parts (4x8x8 latents, 16 tokens of 16, at 16 px).

    No T5 tokenizer is built: call it with ``prompt_embeds`` and ``pooled_prompt_embeds``
    (:func:`t5_embeddings` and the pipeline's own ``_get_clip_prompt_embeds``).

    Args:
        seed: the weights' seed.
        guidance_embeds: a guidance-distilled transformer (FLUX.1-dev's
            ``guidance_embeds``; False: FLUX.1-schnell's).

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_flux()
        >>> pipe.transformer.config.in_channels, pipe.vae.config.latent_channels
        (16, 4)
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer: Any = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_HIDDEN,
        pooled_projection_dim=_HIDDEN,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    tokenizer = byte_level_clip_tokenizer()
    encoder, encoder_2, vae = _clip(tokenizer, False), _t5(_HIDDEN), _sd3_vae()
    pipe = FluxPipeline(
        scheduler=_scheduler(True),
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        text_encoder_2=encoder_2,
        tokenizer_2=None,
        transformer=transformer,
    )
    return _ready(pipe, (transformer, encoder, encoder_2, vae))


def t5_embeddings(pipe: Any, prompts: list[str], length: int = 8) -> Tensor:
    """T5 embeddings of ``prompts`` by ``pipe``'s T5 encoder, each byte a token id.

    A stand-in for the T5 tokenizer (none is built offline): UTF-8 bytes + 1, cut or
    padded with 0 to ``length`` tokens.

    Args:
        pipe: a pipeline whose ``text_encoder_2`` (Flux) or ``text_encoder_3`` (SD3) is T5.
        prompts: the prompts.
        length: tokens per prompt.

    Returns:
        ``(len(prompts), length, d_model)`` embeddings in the encoder's dtype.

    Example:
        >>> t5_embeddings(tiny_flux(), ["a cat", "a dog"]).shape
        torch.Size([2, 8, 32])
    """
    encoder = getattr(pipe, "text_encoder_3", None) or pipe.text_encoder_2
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        data = list(prompt.encode())[:length]
        ids[row, : len(data)] = torch.tensor(data, dtype=torch.long) + 1
    with torch.no_grad():
        return encoder(ids.to(encoder.device))[0]


def sd3_embeddings(pipe: Any, prompts: list[str], length: int = 8) -> tuple[Tensor, Tensor]:
    """``prompt_embeds`` and ``pooled_prompt_embeds`` of an SD3 pipeline with a T5 encoder.

    As ``encode_prompt`` builds them — both CLIPs' penultimate states side by side, padded
    to T5's width, then T5's (:func:`t5_embeddings`) along the sequence — without the T5
    tokenizer.

    Args:
        pipe: a :func:`tiny_sd3` pipeline built with ``t5=True``.
        prompts: the prompts.
        length: T5 tokens per prompt.

    Returns:
        ``(prompt_embeds, pooled_prompt_embeds)``.

    Example:
        >>> embeds, pooled = sd3_embeddings(tiny_sd3(t5=True), ["a cat"])
        >>> embeds.shape, pooled.shape  # 16 CLIP tokens and 8 T5 tokens
        (torch.Size([1, 24, 64]), torch.Size([1, 64]))
    """
    with torch.no_grad():
        first, pooled = pipe._get_clip_prompt_embeds(prompts, clip_model_index=0)
        second, pooled_2 = pipe._get_clip_prompt_embeds(prompts, clip_model_index=1)
    t5 = t5_embeddings(pipe, prompts, length)
    clip = torch.cat([first, second], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat([pooled, pooled_2], dim=-1)
