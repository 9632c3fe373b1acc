"""``PixArtAlphaPipeline`` and ``PixArtSigmaPipeline``: T5-conditioned diffusion transformers.

Each row of the model call carries its sample's prompt embedding *and* attention mask (both
per-sample conditioning), and for PixArt-α at ``sample_size == 128`` its resolution and
aspect-ratio conditions. Guidance combines ``[negative, positive]`` halves as the pipeline
does, and a learned-sigma transformer (``out_channels == 2 × latent channels``) gives the
scheduler its first half only. ``use_resolution_binning`` maps the size to the pipeline's
aspect-ratio bin before and resizes the decoded images back after, as the pipeline.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import latent_channels, prompt_count
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = ["prepare_pixart"]

_MODULE = "diffusers.pipelines.pixart_alpha.pipeline_pixart"


def _is_alpha(pipe: Any) -> bool:
    """Whether ``pipe`` runs PixArt-α's ``__call__`` (else PixArt-Σ's)."""
    from diffusers import PixArtAlphaPipeline

    return isinstance(pipe, PixArtAlphaPipeline)


def _bins(pipe: Any) -> dict[str, list[float]]:
    """The aspect-ratio bins the pipeline's ``use_resolution_binning`` uses for its size."""
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    bins = {128: alpha.ASPECT_RATIO_1024_BIN, 64: alpha.ASPECT_RATIO_512_BIN}
    bins[32] = alpha.ASPECT_RATIO_256_BIN
    if not _is_alpha(pipe):
        bins[256] = sigma.ASPECT_RATIO_2048_BIN
    size = pipe.transformer.config.sample_size
    if size not in bins:
        raise ValueError(
            f"use_resolution_binning needs a transformer sample_size in {sorted(bins)}, got "
            f"{size} (the pipeline raises 'Invalid sample size'); pass "
            "use_resolution_binning=False"
        )
    return bins[size]


def _size(pipe: Any, a: Mapping[str, Any]) -> tuple[int, int, tuple[int, int] | None]:
    """``(height, width, (requested height, width) or None)``: binned as the pipeline bins."""
    default = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    height, width = a["height"] or default, a["width"] or default
    if not a["use_resolution_binning"]:
        return height, width, None
    binned = pipe.image_processor.classify_height_width_bin(height, width, ratios=_bins(pipe))
    return *binned, (height, width)


def _encode(pipe: Any, a: Mapping[str, Any], cfg: bool, device: torch.device, alpha: bool) -> tuple:
    """The pipeline's ``encode_prompt``: ``(embeds, mask, negative embeds, negative mask)``.

    PixArt-α then adjusts the masks' dtype for the device (int32 on mps); Σ does not.
    """
    from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

    cond, mask, uncond, umask = pipe.encode_prompt(
        a["prompt"], cfg, negative_prompt=a["negative_prompt"],
        num_images_per_prompt=a["num_images_per_prompt"], device=device,
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        prompt_attention_mask=a["prompt_attention_mask"],
        negative_prompt_attention_mask=a["negative_prompt_attention_mask"],
        clean_caption=a["clean_caption"], max_sequence_length=a["max_sequence_length"],
    )  # fmt: skip
    if alpha:
        adjusted = maybe_adjust_dtype_for_device(mask.dtype, mask.device)
        mask, umask = mask.to(adjusted), None if umask is None else umask.to(adjusted)
    return cond, mask, uncond, umask


def _denoiser(
    model: Any, rows: Mapping[str, Tensor | None], images: int, scale: float, learned_sigma: bool
) -> Any:
    """The batched model call: each row's conditioning by its sample, guidance, sigma dropped.

    ``rows`` holds the per-sample ``cond``/``mask`` (and ``uncond``/``umask`` with guidance:
    ``scale > 1``) and the size conditions ``resolution``/``aspect_ratio`` (or ``None``).
    """
    cfg = scale > 1.0
    sizes = ("resolution", "aspect_ratio")

    def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
        samples = sample_rows(samples, x.shape[0], images, x.device)
        pick = {k: None if v is None else v[samples] for k, v in rows.items()}
        emb, att = pick["cond"], pick["mask"]
        added = {k: pick[k] for k in sizes}
        if cfg:  # the pipeline's halves: [negative, positive]
            x, t = torch.cat([x, x]), torch.cat([t, t])
            emb, att = torch.cat([pick["uncond"], emb]), torch.cat([pick["umask"], att])
            added = {k: None if v is None else torch.cat([v, v]) for k, v in added.items()}
        out = model(
            x, encoder_hidden_states=emb, encoder_attention_mask=att, timestep=t,
            added_cond_kwargs=added, return_dict=False,
        )[0]  # fmt: skip
        out = guided(out, scale) if cfg else out
        return out.chunk(2, dim=1)[0] if learned_sigma else out

    return call


def _micro_conditions(
    pipe: Any, height: int, width: int, images: int, like: Tensor
) -> dict[str, Tensor | None]:
    """PixArt-α's resolution and aspect-ratio conditions (``sample_size == 128``), per image."""
    if not _is_alpha(pipe) or pipe.transformer.config.sample_size != 128:
        return {"resolution": None, "aspect_ratio": None}
    resolution = torch.tensor([height, width]).repeat(images, 1)
    aspect_ratio = torch.tensor([float(height / width)]).repeat(images, 1)
    return {
        "resolution": resolution.to(dtype=like.dtype, device=like.device),
        "aspect_ratio": aspect_ratio.to(dtype=like.dtype, device=like.device),
    }


def _timesteps(pipe: Any, steps: int, device: torch.device, alpha: bool) -> tuple[Tensor, int]:
    """The pipeline's ``retrieve_timesteps``, on the device its module picks (XLA, neuron: cpu)."""
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import retrieve_timesteps

    module = importlib.import_module(f"{_MODULE}_{'alpha' if alpha else 'sigma'}")
    on_cpu = getattr(module, "XLA_AVAILABLE", False) or (alpha and device.type == "neuron")
    timestep_device = "cpu" if on_cpu else device
    return retrieve_timesteps(pipe.scheduler, steps, timestep_device)


def prepare_pixart(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``PixArtAlphaPipeline``/``PixArtSigmaPipeline`` call.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (prompts or ``prompt_embeds``
    with their attention masks), ``retrieve_timesteps`` and ``prepare_latents`` run as in
    its ``__call__``; rows of the model call carry their sample's embedding, mask and (α at
    ``sample_size == 128``) size conditions.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        ValueError: PixArt-α with ``num_inference_steps=1`` (it returns the scheduler's
            denoised estimate, not its step), an unsupported ``use_resolution_binning`` size
            or transformer ``out_channels``.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_pixart_dit import t5_prompt_embeds, tiny_pixart
        >>> pipe = tiny_pixart()
        >>> embeds, mask = t5_prompt_embeds(pipe, [3])
        >>> a = call_arguments(
        ...     pipe, prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=1.0,
        ...     use_resolution_binning=False, num_inference_steps=5)
        >>> p = prepare_pixart(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation
        (torch.Size([1, 4, 8, 8]), 1)
    """
    alpha = _is_alpha(pipe)
    if alpha and a["num_inference_steps"] == 1:
        raise ValueError(
            "num_inference_steps=1: PixArtAlphaPipeline then returns the scheduler's denoised "
            "estimate instead of its step; not supported by picard"
        )
    height, width, requested = _size(pipe, a)
    pipe.check_inputs(
        a["prompt"], height, width, a["negative_prompt"], a["callback_steps"], a["prompt_embeds"],
        a["negative_prompt_embeds"], a["prompt_attention_mask"],
        a["negative_prompt_attention_mask"],
    )  # fmt: skip
    channels, learned_sigma = latent_channels(pipe)
    images = prompt_count(a) * a["num_images_per_prompt"]
    device = pipe._execution_device
    scale = a["guidance_scale"]
    cfg = scale > 1.0
    cond, mask, uncond, umask = _encode(pipe, a, cfg, device, alpha)
    timesteps, steps = _timesteps(pipe, a["num_inference_steps"], device, alpha)
    latents = pipe.prepare_latents(
        images, channels, height, width, cond.dtype, device, a["generator"], a["latents"]
    )
    rows = {"cond": cond, "mask": mask, "uncond": uncond, "umask": umask}
    rows |= _micro_conditions(pipe, height, width, images, cond)
    if alpha and hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(0)

    def denoiser(dev: torch.device | None) -> Any:
        return _denoiser(on(dev, pipe.transformer), on(dev, rows), images, scale, learned_sigma)

    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=denoiser,
        device=pipe.transformer.device,
        finish=lambda latents: _finish(pipe, a, latents, requested, alpha),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        step_options={"eta": a["eta"]},
    )


def _finish(
    pipe: Any,
    a: Mapping[str, Any],
    latents: Tensor,
    requested: tuple[int, int] | None,
    alpha: bool,
) -> Any:
    """Decode, resize back from the resolution bin, post-process: the pipeline's output."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    if a["output_type"] == "latent":
        image = latents
    else:
        z = latents if alpha else latents.to(pipe.vae.dtype)
        image = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
        if requested is not None:
            image = pipe.image_processor.resize_and_crop_tensor(image, requested[1], requested[0])
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    return ImagePipelineOutput(images=image) if a["return_dict"] else (image,)
