"""Tiny video pipelines with random weights, built from configs — never downloaded.

They run the real pipelines' code paths (3-D transformers, causal video VAEs, T5 text
encoders, flow matching) at a size a CPU runs in milliseconds. The T5 tokenizers are
:func:`char_tokenizer` (each character a token, built in code), so prompts work offline.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "HUNYUAN_TEMPLATE",
    "char_tokenizer",
    "tiny_animatediff",
    "tiny_cogvideox",
    "tiny_hunyuan_video",
    "tiny_ltx",
    "tiny_wan",
]

_TEXT = 32
"""The tiny text encoders' width."""


def char_tokenizer(max_length: int = 16) -> Any:
    """A T5-style fast tokenizer, built offline: each Latin-1 character one token.

    ``<pad>`` is 0, ``</s>`` (appended to every text) 1, ``<unk>`` 2, and character ``c``
    ``ord(c) + 3``; what a T5 tokenizer's callers ask of it (padding, truncation, the
    attention mask) works.

    Args:
        max_length: the tokenizer's ``model_max_length``.

    Returns:
        A ``PreTrainedTokenizerFast`` of 259 tokens.

    Example:
        >>> tok = char_tokenizer()
        >>> len(tok), tok("a cat").input_ids
        (259, [100, 35, 102, 100, 119, 1])
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({chr(b): b + 3 for b in range(256)})
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def _umt5() -> Any:
    """A 2-layer UMT5 encoder of width 32 over :func:`char_tokenizer`'s tokens."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=259, d_model=_TEXT, d_ff=64, d_kv=8, num_layers=2, num_heads=4)
    return UMT5EncoderModel(config)


def _t5() -> Any:
    """A 2-layer T5 encoder of width 32 over :func:`char_tokenizer`'s tokens."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=259, d_model=_TEXT, d_ff=64, d_kv=8, num_layers=2, num_heads=4)
    return T5EncoderModel(config)


def _ready(pipe: Any) -> Any:
    """``pipe`` with its modules in eval mode and its progress bar off."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flow_scheduler(name: str, shift: float) -> Any:
    """A flow-matching scheduler: ``"unipc"`` (Wan's own) or ``"euler"``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    raise ValueError(f"scheduler must be 'unipc' or 'euler', got {name!r}")


def tiny_wan(
    seed: int = 0,
    *,
    scheduler: str = "unipc",
    boundary_ratio: float | None = None,
    expand_timesteps: bool = False,
) -> Any:
    """A ``WanPipeline`` of tiny random parts: 16x3x2x2 latents for 9 frames at 16 px.

    Args:
        seed: the weights' seed.
        scheduler: ``"unipc"`` (Wan's flow-prediction UniPC, shift 3) or ``"euler"``
            (``FlowMatchEulerDiscreteScheduler``, shift 3).
        boundary_ratio: Wan 2.2's two experts: a second transformer (``transformer_2``)
            denoises the steps whose timestep is below ``boundary_ratio * 1000``;
            ``None``: Wan 2.1, one transformer.
        expand_timesteps: Wan 2.2 TI2V's per-token timesteps.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_wan(boundary_ratio=0.5)
        >>> pipe.vae_scale_factor_spatial, pipe.transformer_2.config.num_layers
        (8, 2)
    """
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    def transformer() -> Any:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=_TEXT,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
        )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )  # fmt: skip
    pipe = WanPipeline(
        tokenizer=char_tokenizer(),
        text_encoder=_umt5(),
        vae=vae,
        scheduler=_flow_scheduler(scheduler, 3.0),
        transformer=transformer(),
        transformer_2=None if boundary_ratio is None else transformer(),
        boundary_ratio=boundary_ratio,
        expand_timesteps=expand_timesteps,
    )
    return _ready(pipe)


COGVIDEOX_DDIM = {
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
}
"""CogVideoX-2b's ``CogVideoXDDIMScheduler`` configuration (beyond the defaults)."""


def tiny_cogvideox(
    seed: int = 0, *, rotary: bool = False, patch_size_t: int | None = None, dpm: bool = False
) -> Any:
    """A ``CogVideoXPipeline`` of tiny random parts: 3x4x2x2 latents for 9 frames at 16 px.

    Text of 16 tokens (the transformer's ``max_text_seq_length``: call with
    ``max_sequence_length=16``).

    Args:
        seed: the weights' seed.
        rotary: rotary positional embeddings (CogVideoX-5b's) instead of sin-cos ones.
        patch_size_t: a temporal patch (CogVideoX 1.5's 2: the pipeline pads the latent
            frames to a multiple of it); implies ``rotary``.
        dpm: ``CogVideoXDPMScheduler`` instead of CogVideoX-2b's ``CogVideoXDDIMScheduler``.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_cogvideox()
        >>> pipe.vae_scale_factor_spatial, type(pipe.scheduler).__name__
        (8, 'CogVideoXDDIMScheduler')
    """
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # rotary: 4 + 6 + 6
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=_TEXT,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=1 if patch_size_t else 2,
        patch_size_t=patch_size_t,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=rotary or bool(patch_size_t),
    )
    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    scheduler = (CogVideoXDPMScheduler if dpm else CogVideoXDDIMScheduler)(**COGVIDEOX_DDIM)
    pipe = CogVideoXPipeline(
        tokenizer=char_tokenizer(), text_encoder=_t5(), vae=vae, transformer=transformer,
        scheduler=scheduler,
    )  # fmt: skip
    return _ready(pipe)


def tiny_ltx(seed: int = 0, *, timestep_conditioning: bool = False) -> Any:
    """An ``LTXPipeline`` of tiny random parts: 48 packed tokens of 8 for 9 frames at 32 px.

    Args:
        seed: the weights' seed.
        timestep_conditioning: the VAE decoder's timestep conditioning (LTX-Video 0.9.1's:
            the finish adds ``decode_noise_scale`` noise from the call's generator).

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_ltx()
        >>> pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
        (8, 4)
    """
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=1,
        caption_channels=_TEXT,
    )
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=timestep_conditioning,
        patch_size=2,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256,
        base_shift=0.95, max_shift=2.05,
    )  # fmt: skip
    pipe = LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=_t5(), tokenizer=char_tokenizer(),
        transformer=transformer,
    )  # fmt: skip
    return _ready(pipe)


def tiny_animatediff(seed: int = 0, scheduler: Any = None) -> Any:
    """An ``AnimateDiffPipeline`` of tiny random parts: 4x8x8 latents per frame at 16 px.

    Stable Diffusion's tiny CLIP and VAE (:mod:`picard.models.tiny`), a one-block UNet and
    a ``MotionAdapter``: the pipeline builds the ``UNetMotionModel``.

    Args:
        seed: the weights' seed.
        scheduler: the scheduler (default: AnimateDiff's ``DDIMScheduler``: linear betas,
            linspace spacing, ``steps_offset=1``, no clipping).

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_animatediff()
        >>> type(pipe.unet).__name__, pipe.vae_scale_factor
        ('UNetMotionModel', 2)
    """
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel

    from picard.models.tiny import autoencoder_kl, byte_level_clip_tokenizer, clip_config

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8,),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    adapter = MotionAdapter(
        block_out_channels=(8,),
        motion_layers_per_block=1,
        motion_norm_num_groups=4,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    tokenizer = byte_level_clip_tokenizer()
    scheduler = scheduler or DDIMScheduler(
        beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1
    )
    pipe = AnimateDiffPipeline(
        vae=autoencoder_kl(), text_encoder=CLIPTextModel(clip_config(tokenizer)),
        tokenizer=tokenizer, unet=unet, motion_adapter=adapter, scheduler=scheduler,
    )  # fmt: skip
    return _ready(pipe)


HUNYUAN_TEMPLATE = {"template": "Video: {}", "crop_start": 7}
"""A prompt template for :func:`tiny_hunyuan_video` (pass it as ``prompt_template``): the
pipeline's default crops its first 95 Llama tokens, which with :func:`char_tokenizer`
would crop into the prompt."""


def tiny_hunyuan_video(seed: int = 0, *, guidance_embeds: bool = True) -> Any:
    """A ``HunyuanVideoPipeline`` of tiny random parts: 4x3x2x2 latents for 9 frames at 16 px.

    A 3-layer Llama over :func:`char_tokenizer` (call with ``prompt_template=``
    :data:`HUNYUAN_TEMPLATE`) and a CLIP of 77 positions over the byte-level tokenizer of
    :mod:`picard.models.tiny`.

    Args:
        seed: the weights' seed.
        guidance_embeds: a guidance-distilled transformer (HunyuanVideo's).

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> pipe = tiny_hunyuan_video()
        >>> pipe.vae_scale_factor_spatial, pipe.transformer.config.guidance_embeds
        (8, True)
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextModel, LlamaConfig, LlamaModel

    from picard.models.tiny import byte_level_clip_tokenizer, clip_config

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=guidance_embeds,
        text_embed_dim=_TEXT,
        pooled_projection_dim=_TEXT,
        rope_axes_dim=(2, 4, 4),
    )
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    )
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=259, hidden_size=_TEXT, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=1,
        )
    )  # fmt: skip
    clip_tokenizer = byte_level_clip_tokenizer(max_length=77)
    pipe = HunyuanVideoPipeline(
        text_encoder=llama, tokenizer=char_tokenizer(max_length=256), transformer=transformer,
        vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=CLIPTextModel(clip_config(clip_tokenizer)), tokenizer_2=clip_tokenizer,
    )  # fmt: skip
    return _ready(pipe)
