"""Tiny diffusers pipelines with random weights, built from configs — never downloaded.

They exercise exactly the code paths of the real pipelines (UNet, VAE, CLIP text
encoder, classifier-free guidance), at a size that runs on a CPU in milliseconds. The
CLIP tokenizer is built in code from a byte-level vocabulary (no merges), so every
prompt tokenizes to its characters.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["byte_level_clip_tokenizer", "tiny_stable_diffusion", "tiny_unet_pipeline"]


def _byte_chars() -> list[str]:
    """GPT-2's reversible map from the 256 bytes to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def byte_level_clip_tokenizer(max_length: int = 16) -> Any:
    """A ``CLIPTokenizer`` with a 514-token byte-level vocabulary, built offline.

    Args:
        max_length: the tokenizer's ``model_max_length`` (prompt length in tokens).

    Returns:
        The ``CLIPTokenizer``; every prompt tokenizes to its characters.

    Example:
        >>> tok = byte_level_clip_tokenizer()
        >>> len(tok), tok("a cat").input_ids[:2]
        (514, [512, 320])
        >>> byte_level_clip_tokenizer(max_length=8).model_max_length
        8
    """
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    try:  # transformers >= 5 takes the vocabulary itself
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    except TypeError:  # transformers 4 reads files: write them to a temporary folder
        import json
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp(prefix="picard-tokenizer-"))
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length
        )


def autoencoder_kl(**overrides: Any) -> Any:
    """The tiny pipelines' two-block ``AutoencoderKL``: 16 px images, 8x8 latents (random)."""
    from diffusers import AutoencoderKL

    config: dict[str, Any] = {
        "block_out_channels": [8, 16],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 16,
    }
    return AutoencoderKL(**{**config, **overrides})


def clip_config(tokenizer: Any, **overrides: Any) -> Any:
    """A ``CLIPTextConfig`` of width 32 (2 layers, 4 heads) for ``tokenizer``."""
    from transformers import CLIPTextConfig

    config: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return CLIPTextConfig(**{**config, **overrides})


def tiny_unet_pipeline(kind: str = "ddpm", seed: int = 0, sample_size: int = 8) -> Any:
    """An unconditional ``DDPMPipeline`` or ``DDIMPipeline`` with a small random UNet.

    Args:
        kind: ``"ddpm"`` or ``"ddim"``: the pipeline and scheduler class.
        seed: the weights' seed.
        sample_size: the side of the 3-channel square images.

    Returns:
        The pipeline, its UNet in eval mode, with a default scheduler of that kind.

    Raises:
        ValueError: if ``kind`` is neither ``"ddpm"`` nor ``"ddim"``.

    Example:
        >>> type(tiny_unet_pipeline("ddim")).__name__
        'DDIMPipeline'
        >>> pipe = tiny_unet_pipeline("ddpm", sample_size=4)
        >>> type(pipe).__name__, pipe.unet.config.sample_size
        ('DDPMPipeline', 4)
    """
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet: Any = UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    unet.eval()
    if kind == "ddpm":
        return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    if kind == "ddim":
        return DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    raise ValueError(f"kind must be 'ddpm' or 'ddim', got {kind!r}")


def tiny_stable_diffusion(seed: int = 0, scheduler: Any = None) -> Any:
    """A ``StableDiffusionPipeline`` of tiny random components (8x8x4 latents at 16 px).

    Args:
        seed: the weights' seed.
        scheduler: the scheduler to set (default: ``DDPMScheduler`` with SD's betas).

    Returns:
        The ``StableDiffusionPipeline``, without safety checker, progress bar disabled.

    Example:
        >>> pipe = tiny_stable_diffusion()
        >>> pipe.unet.config.cross_attention_dim, pipe.vae_scale_factor
        (32, 2)
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = autoencoder_kl()
    tokenizer = byte_level_clip_tokenizer()
    text_encoder = CLIPTextModel(clip_config(tokenizer))
    scheduler = scheduler or DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )
    for module in (vae, text_encoder, unet):
        module.eval()
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
