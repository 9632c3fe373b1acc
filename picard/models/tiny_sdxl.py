"""Tiny Stable Diffusion XL pipelines with random weights, built from configs — never downloaded.

The UNet takes SDXL's added conditioning (``addition_embed_type="text_time"``: the pooled
text embedding and the size/crop time ids), the prompts go through two CLIP text encoders
(``CLIPTextModel`` and ``CLIPTextModelWithProjection``) with byte-level tokenizers, and a
two-block VAE maps 16x16 images to 8x8x4 latents: the code paths of the real pipelines
at a size that runs a 20-step call on a CPU in a fraction of a second.
"""

from __future__ import annotations

from typing import Any

import torch

from picard.models.tiny import autoencoder_kl, byte_level_clip_tokenizer, clip_config

__all__ = ["tiny_sdxl", "tiny_sdxl_components", "tiny_sdxl_img2img"]

_TIME_EMBED = 8  # addition_time_embed_dim
_PROJECTION = 32  # text_encoder_2's projection_dim: the pooled embedding's size


def _text_encoders(tokenizer: Any) -> tuple[Any, Any]:
    """SDXL's two CLIP text encoders (hidden size 32 each; the second projects to 32)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = clip_config(
        tokenizer,
        intermediate_size=37,
        num_hidden_layers=3,
        projection_dim=_PROJECTION,
        hidden_act="gelu",
    )
    return CLIPTextModel(config), CLIPTextModelWithProjection(config)


def tiny_sdxl_components(
    seed: int = 0,
    scheduler: Any = None,
    *,
    time_ids: int = 6,
    time_cond_proj_dim: int | None = None,
) -> dict[str, Any]:
    """The components of a tiny SDXL pipeline (as diffusers' fast tests build them).

    Args:
        seed: the weights' seed.
        scheduler: the scheduler (default: ``EulerDiscreteScheduler`` with SDXL's betas,
            ``leading`` spacing and ``steps_offset=1``, as diffusers' SDXL tests set it).
        time_ids: the added time ids the UNet takes: 6 (original size, crop, target size:
            the base model) or 5 (original size, crop, aesthetic score: the refiner).
        time_cond_proj_dim: the UNet's guidance-embedding size (an LCM-distilled UNet), or
            ``None``.

    Returns:
        The keyword arguments of ``StableDiffusionXLPipeline`` (and of its img2img
        sibling): ``vae``, both text encoders and tokenizers, ``unet``, ``scheduler``,
        ``image_encoder`` and ``feature_extractor`` (``None``).

    Example:
        >>> c = tiny_sdxl_components()
        >>> c["unet"].config.addition_embed_type, c["unet"].config.cross_attention_dim
        ('text_time', 64)
    """
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * _TIME_EMBED + _PROJECTION,
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
        time_cond_proj_dim=time_cond_proj_dim,
        norm_num_groups=4,
    )
    vae = autoencoder_kl()
    tokenizer, tokenizer_2 = byte_level_clip_tokenizer(), byte_level_clip_tokenizer()
    text_encoder, text_encoder_2 = _text_encoders(tokenizer)
    scheduler = scheduler or EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    for module in (vae, text_encoder, text_encoder_2, unet):
        module.eval()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sdxl(seed: int = 0, scheduler: Any = None, time_cond_proj_dim: int | None = None) -> Any:
    """A ``StableDiffusionXLPipeline`` of tiny random components (8x8x4 latents at 16 px).

    Args:
        seed: the weights' seed.
        scheduler: the scheduler (default: SDXL's ``EulerDiscreteScheduler``).
        time_cond_proj_dim: the UNet's guidance-embedding size (LCM), or ``None``.

    Returns:
        The pipeline (``force_zeros_for_empty_prompt`` at its default, ``True``, as in
        diffusers' tests; no watermarker), progress bar disabled.

    Example:
        >>> pipe = tiny_sdxl()
        >>> pipe("a cat", num_inference_steps=2, output_type="latent").images.shape
        torch.Size([1, 4, 8, 8])
    """
    from diffusers import StableDiffusionXLPipeline

    components = tiny_sdxl_components(seed, scheduler, time_cond_proj_dim=time_cond_proj_dim)
    pipe: Any = StableDiffusionXLPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_img2img(
    seed: int = 0, scheduler: Any = None, requires_aesthetics_score: bool = False
) -> Any:
    """A ``StableDiffusionXLImg2ImgPipeline`` of tiny random components.

    Args:
        seed: the weights' seed.
        scheduler: the scheduler (default: SDXL's ``EulerDiscreteScheduler``).
        requires_aesthetics_score: a refiner-style UNet whose time ids carry the
            aesthetic score instead of the target size.

    Returns:
        The pipeline (no watermarker), progress bar disabled.

    Example:
        >>> pipe = tiny_sdxl_img2img(requires_aesthetics_score=True)
        >>> image = torch.rand(1, 3, 16, 16)
        >>> pipe("a cat", image=image, num_inference_steps=4, output_type="pt").images.shape
        torch.Size([1, 3, 16, 16])
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline

    time_ids = 5 if requires_aesthetics_score else 6
    components = tiny_sdxl_components(seed, scheduler, time_ids=time_ids)
    pipe: Any = StableDiffusionXLImg2ImgPipeline(
        **components, requires_aesthetics_score=requires_aesthetics_score, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
