"""``LTXPipeline`` (LTX-Video) and subclasses that keep its ``__call__``.

Flow matching on packed latents ``(B, tokens, C)`` (in float32, as the pipeline makes
them) with Flux's grid: ``sigmas = linspace(1, 1/N, N)`` and ``mu`` from the video's
sequence length. A T5 text encoder (or given embeddings with their attention masks),
classifier-free guidance (and its rescale); the transformer's output is rounded to float32,
as the pipeline rounds it. The finish unpacks, denormalises and decodes — with the VAE's
timestep conditioning, adding ``decode_noise_scale`` noise drawn from the call's generator
after the loop, as the pipeline draws it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import check_unchanged, grid
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows
from picard.adapters.pipelines.video_parts import check_no_cache, videos_of

__all__ = ["prepare_ltx"]


def prepare_ltx(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare an ``LTXPipeline`` call: prompts and masks, packed latents, grid, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (an empty negative prompt under
    guidance, as it does), ``prepare_latents`` and ``retrieve_timesteps`` (its sigmas and
    ``mu``) run as in its ``__call__``; rows carry their sample's prompt and mask.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_video import tiny_ltx
        >>> pipe = tiny_ltx()
        >>> a = call_arguments(pipe, "a cat", height=32, width=32, num_frames=9,
        ...                    num_inference_steps=4, max_sequence_length=16)
        >>> p = prepare_ltx(pipe, a)
        >>> p.latents.shape, sorted(p.grid_options)  # 3 frames of 4x4 tokens
        (torch.Size([1, 48, 8]), ['mu', 'sigmas'])
    """
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    check_no_cache(pipe, pipe.transformer)
    height, width, frames = a["height"], a["width"], a["num_frames"]
    pipe.check_inputs(
        prompt=a["prompt"], height=height, width=width,
        callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        prompt_attention_mask=a["prompt_attention_mask"],
        negative_prompt_attention_mask=a["negative_prompt_attention_mask"],
    )  # fmt: skip
    pipe._guidance_scale, pipe._guidance_rescale = a["guidance_scale"], a["guidance_rescale"]
    pipe._attention_kwargs, pipe._current_timestep = a["attention_kwargs"], None
    pipe._interrupt = False
    device, cfg = pipe._execution_device, pipe.do_classifier_free_guidance
    cond, mask, uncond, umask = pipe.encode_prompt(
        prompt=a["prompt"], negative_prompt=a["negative_prompt"], do_classifier_free_guidance=cfg,
        num_videos_per_prompt=a["num_videos_per_prompt"], prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        prompt_attention_mask=a["prompt_attention_mask"],
        negative_prompt_attention_mask=a["negative_prompt_attention_mask"],
        max_sequence_length=a["max_sequence_length"], device=device,
    )  # fmt: skip
    latents = pipe.prepare_latents(
        videos_of(a, cond), pipe.transformer.config.in_channels, height, width,
        frames, torch.float32, device, a["generator"], a["latents"],
    )  # fmt: skip
    size = (
        (frames - 1) // pipe.vae_temporal_compression_ratio + 1,
        height // pipe.vae_spatial_compression_ratio,
        width // pipe.vae_spatial_compression_ratio,
    )
    n, config = a["num_inference_steps"], pipe.scheduler.config
    mu = calculate_shift(
        size[0] * size[1] * size[2],
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    timesteps, _, steps, options = grid(pipe, n, device, np.linspace(1.0, 1 / n, n), mu)
    pipe._num_timesteps = len(timesteps)
    rope = (
        pipe.vae_temporal_compression_ratio / a["frame_rate"],
        pipe.vae_spatial_compression_ratio,
        pipe.vae_spatial_compression_ratio,
    )
    embeds = {"c": cond, "m": mask, "u": uncond if cfg else None, "um": umask if cfg else None}
    model = _Model(embeds, size, rope, a)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x, size, cond.dtype),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        grid_options=options,
    )


class _Model:
    """The batched LTX-Video call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        embeds: dict[str, Tensor | None],
        size: tuple[int, int, int],
        rope: tuple[float, float, float],
        a: Mapping[str, Any],
    ):
        self.embeds, self.size, self.rope = embeds, size, rope
        self.scale, self.rescale = a["guidance_scale"], a["guidance_rescale"]
        self.attention = a["attention_kwargs"]

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model, e = on(dev, transformer), on(dev, self.embeds)
        frames, height, width = self.size

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], e["c"].shape[0], x.device)
            text, mask = e["c"][s], e["m"][s]
            if e["u"] is not None:
                x, t = torch.cat([x, x]), torch.cat([t, t])
                text, mask = torch.cat([e["u"][s], text]), torch.cat([e["um"][s], mask])
            out = model(
                hidden_states=x.to(text.dtype), encoder_hidden_states=text, timestep=t,
                encoder_attention_mask=mask, num_frames=frames, height=height, width=width,
                rope_interpolation_scale=self.rope, attention_kwargs=self.attention,
                return_dict=False,
            )[0].float()  # fmt: skip
            return guided(out, self.scale, self.rescale) if e["u"] is not None else out

        return call


def _finish(
    pipe: Any, a: Mapping[str, Any], latents: Tensor, size: tuple[int, int, int], dtype: Any
) -> Any:
    """The final packed latent to the pipeline's output: unpacked, denormalised, decoded."""
    from diffusers.pipelines.ltx.pipeline_output import LTXPipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    check_unchanged(pipe, a["guidance_scale"])
    if a["output_type"] == "latent":
        video = latents
    else:
        vae = pipe.vae
        latents = pipe._unpack_latents(
            latents, *size, pipe.transformer_spatial_patch_size,
            pipe.transformer_temporal_patch_size,
        )  # fmt: skip
        latents = pipe._denormalize_latents(
            latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        ).to(dtype)
        timestep = None
        if vae.config.timestep_conditioning:  # as the pipeline: noise after the loop
            noise = randn_tensor(
                latents.shape, generator=a["generator"], device=latents.device, dtype=latents.dtype
            )
            times, scales = a["decode_timestep"], a["decode_noise_scale"]
            times = times if isinstance(times, list) else [times] * _prompts(a)
            if scales is None:
                scales = times
            elif not isinstance(scales, list):
                scales = [scales] * _prompts(a)
            timestep = torch.tensor(times, device=latents.device, dtype=latents.dtype)
            scale = torch.tensor(scales, device=latents.device, dtype=latents.dtype)
            scale = scale[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        video = pipe.video_processor.postprocess_video(video, output_type=a["output_type"])
    if not a["return_dict"]:
        return (video,)
    return LTXPipelineOutput(frames=video)


def _prompts(a: Mapping[str, Any]) -> int:
    """The pipeline's ``batch_size``: prompts before ``num_videos_per_prompt``."""
    prompt = a["prompt"]
    if prompt is None:
        return a["prompt_embeds"].shape[0]
    return 1 if isinstance(prompt, str) else len(prompt)
