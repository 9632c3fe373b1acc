"""Tiny PixArt-α/Σ and DiT pipelines with random weights, built from configs — never downloaded.

PixArt: a ``PixArtTransformer2DModel`` (as diffusers' fast tests build it, with learned
sigma: 8 output channels for 4 latent channels), a tiny ``T5EncoderModel`` and no tokenizer
(prompts are given as ``prompt_embeds`` with their attention masks:
:func:`t5_prompt_embeds` makes some), a two-block VAE. DiT: a class-conditioned
``DiTTransformer2DModel`` (1000 classes and the null class 1000, learned sigma) and the
same VAE. Both run a 20-step call on a CPU in a fraction of a second.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from picard.models.tiny import autoencoder_kl

__all__ = ["t5_prompt_embeds", "tiny_dit", "tiny_pixart", "tiny_vae"]

_CAPTION = 32  # the T5 encoder's d_model: the transformer's caption_channels


def tiny_vae(seed: int = 0) -> Any:
    """A two-block ``AutoencoderKL`` without mid-block attention: 4 latent channels, scale 2.

    Args:
        seed: the weights' seed.

    Returns:
        The VAE, in eval mode.

    Example:
        >>> tiny_vae().config.latent_channels
        4
    """
    torch.manual_seed(seed)
    # binned sizes decode 100x150 latents: no attention
    return autoencoder_kl(mid_block_add_attention=False).eval()


def _t5_encoder() -> Any:
    """A 2-layer ``T5EncoderModel`` of width 32 over a 64-token vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=64,
        d_model=_CAPTION,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config).eval()


def tiny_pixart(
    kind: str = "alpha",
    seed: int = 0,
    scheduler: Any = None,
    *,
    sample_size: int = 8,
    patch_size: int = 2,
    out_channels: int = 8,
) -> Any:
    """A ``PixArtAlphaPipeline`` or ``PixArtSigmaPipeline`` of tiny random components.

    Args:
        kind: ``"alpha"`` or ``"sigma"``.
        seed: the weights' seed.
        scheduler: the scheduler (default: ``DPMSolverMultistepScheduler``, as PixArt's).
        sample_size: the transformer's latent side: 8 (16 px images) by default; 32, 64 or
            128 (256 for Σ) allow ``use_resolution_binning``, and α's 128 takes the
            resolution and aspect-ratio conditions (use a large ``patch_size`` then).
        patch_size: the transformer's patch side.
        out_channels: 8 (learned sigma: the pipeline keeps the first 4) or 4.

    Returns:
        The pipeline (``tokenizer=None``: pass ``prompt_embeds``), progress bar disabled.

    Raises:
        ValueError: if ``kind`` is neither ``"alpha"`` nor ``"sigma"``.

    Example:
        >>> pipe = tiny_pixart("sigma")
        >>> type(pipe).__name__, pipe.transformer.config.out_channels, pipe.tokenizer
        ('PixArtSigmaPipeline', 8, None)
    """
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    classes = {"alpha": PixArtAlphaPipeline, "sigma": PixArtSigmaPipeline}
    if kind not in classes:
        raise ValueError(f"kind must be 'alpha' or 'sigma', got {kind!r}")
    torch.manual_seed(seed)
    transformer: Any = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=2,
        patch_size=patch_size,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=_CAPTION,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=out_channels,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    text_encoder = _t5_encoder()
    pipe: Any = classes[kind](
        tokenizer=None,
        text_encoder=text_encoder,
        vae=tiny_vae(seed),
        transformer=transformer.eval(),
        scheduler=scheduler or DPMSolverMultistepScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def t5_prompt_embeds(
    pipe: Any, lengths: list[int], seq_len: int = 12, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Prompt embeddings of ``pipe``'s T5 encoder on random token ids, and their masks.

    Prompt ``k`` has ``lengths[k]`` tokens, padded to ``seq_len`` (mask 0 on the padding):
    what ``encode_prompt`` gives for a tokenized prompt.

    Args:
        pipe: a pipeline with a T5 ``text_encoder``.
        lengths: each prompt's number of tokens (1 … ``seq_len``).
        seq_len: the padded length.
        seed: the token ids' seed.

    Returns:
        ``(prompt_embeds (B, seq_len, d_model), prompt_attention_mask (B, seq_len))``.

    Example:
        >>> embeds, mask = t5_prompt_embeds(tiny_pixart(), [3, 5], seq_len=6)
        >>> embeds.shape, mask.sum(1).tolist()
        (torch.Size([2, 6, 32]), [3, 5])
    """
    encoder = pipe.text_encoder
    vocab = encoder.config.vocab_size
    ids = torch.randint(
        2, vocab, (len(lengths), seq_len), generator=torch.Generator().manual_seed(seed)
    )
    mask = (torch.arange(seq_len)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask  # T5's pad id is 0
    with torch.no_grad():
        embeds = encoder(ids.to(encoder.device), attention_mask=mask.to(encoder.device))[0]
    return embeds, mask


def tiny_dit(seed: int = 0, scheduler: Any = None, *, out_channels: int = 8) -> Any:
    """A ``DiTPipeline`` of a tiny class-conditioned transformer (8x8x4 latents, 16 px).

    Args:
        seed: the weights' seed.
        scheduler: the scheduler (default: ``DDIMScheduler`` without clipping).
        out_channels: 8 (learned sigma, as DiT) or 4.

    Returns:
        The pipeline (``id2label=None``: pass class ids 0 … 999), progress bar disabled.

    Example:
        >>> pipe = tiny_dit()
        >>> pipe.transformer.config.num_embeds_ada_norm, pipe.labels
        (1000, {})
    """
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer: Any = DiTTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=out_channels,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    pipe: Any = DiTPipeline(
        transformer=transformer.eval(),
        vae=tiny_vae(seed),
        scheduler=scheduler or DDIMScheduler(clip_sample=False),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
