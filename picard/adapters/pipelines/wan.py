"""``WanPipeline`` (Wan 2.1, and Wan 2.2's two experts) and subclasses that keep its ``__call__``.

Text-to-video on latents ``(B, C, F, H, W)`` (Wan's VAE: 4x in time, 8x in space), a
UMT5 text encoder (or given embeddings), classifier-free guidance. Wan 2.2 splits the
loop between two experts: ``transformer`` (with ``guidance_scale``) on the steps whose
timestep is at least ``boundary_ratio * num_train_timesteps``, ``transformer_2`` (with
``guidance_scale_2``) on the rest; a window of rows on both sides of the boundary is two
model calls. ``expand_timesteps`` (Wan 2.2 TI2V) gives every latent token its timestep.
The finish undoes the VAE's per-channel normalisation and decodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import check_unchanged
from picard.adapters.pipelines.spec import Prepared, on, sample_rows
from picard.adapters.pipelines.video_parts import check_no_cache, step_of, videos_of

__all__ = ["prepare_wan"]


def _size(pipe: Any, a: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(num_frames, height, width)`` rounded as the pipeline rounds them (with its warnings)."""
    from diffusers.pipelines.wan.pipeline_wan import logger

    frames, height, width = a["num_frames"], a["height"], a["width"]
    temporal = pipe.vae_scale_factor_temporal
    if frames % temporal != 1:
        logger.warning(
            f"`num_frames - 1` has to be divisible by {temporal}. Rounding to the nearest number."
        )
        frames = frames // temporal * temporal + 1
    frames = max(frames, 1)
    model = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
    patch = model.config.patch_size
    h_of, w_of = pipe.vae_scale_factor_spatial * patch[1], pipe.vae_scale_factor_spatial * patch[2]
    if height % h_of or width % w_of:
        logger.warning(
            f"`height` and `width` must be multiples of ({h_of}, {w_of}) for proper "
            f"patchification. Adjusting ({height}, {width}) -> "
            f"({height // h_of * h_of}, {width // w_of * w_of})."
        )
    return frames, height // h_of * h_of, width // w_of * w_of


def prepare_wan(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``WanPipeline`` call: prompts, timesteps, latents, experts, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (an empty negative prompt
    under guidance, as it does), ``set_timesteps`` and ``prepare_latents`` (in float32,
    as the pipeline asks) run as in its ``__call__``; frames and size are rounded as it
    rounds them. Each row gets the model, guidance scale and timestep of its step.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache.
        ValueError: given embeddings without a row per video.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_video import tiny_wan
        >>> pipe = tiny_wan(boundary_ratio=0.5)
        >>> a = call_arguments(pipe, "a cat", height=16, width=16, num_frames=9,
        ...                    num_inference_steps=4, max_sequence_length=8)
        >>> p = prepare_wan(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation  # guidance: two rows per evaluation
        (torch.Size([1, 16, 3, 2, 2]), 2)
    """
    check_no_cache(pipe, pipe.transformer, pipe.transformer_2)
    frames, height, width = _size(pipe, a)
    pipe.check_inputs(
        a["prompt"], a["negative_prompt"], height, width, a["prompt_embeds"],
        a["negative_prompt_embeds"], a["callback_on_step_end_tensor_inputs"],
        a["guidance_scale_2"],
    )  # fmt: skip
    scale, scale_2 = a["guidance_scale"], a["guidance_scale_2"]
    if pipe.config.boundary_ratio is not None and scale_2 is None:
        scale_2 = scale
    pipe._guidance_scale, pipe._guidance_scale_2 = scale, scale_2
    pipe._attention_kwargs, pipe._current_timestep = a["attention_kwargs"], None
    pipe._interrupt = False
    device, cfg = pipe._execution_device, pipe.do_classifier_free_guidance
    cond, uncond = pipe.encode_prompt(
        prompt=a["prompt"], negative_prompt=a["negative_prompt"],
        do_classifier_free_guidance=cfg, num_videos_per_prompt=a["num_videos_per_prompt"],
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        max_sequence_length=a["max_sequence_length"], device=device,
    )  # fmt: skip
    first = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
    dtype = first.dtype
    cond, uncond = cond.to(dtype), None if uncond is None else uncond.to(dtype)
    steps = a["num_inference_steps"]
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps = pipe.scheduler.timesteps
    latents = pipe.prepare_latents(
        videos_of(a, cond), first.config.in_channels, height, width, frames, torch.float32,
        device, a["generator"], a["latents"],
    )  # fmt: skip
    pipe._num_timesteps = len(timesteps)
    boundary = pipe.config.boundary_ratio
    if boundary is not None:
        boundary = boundary * pipe.scheduler.config.num_train_timesteps
    high = torch.tensor([boundary is None or bool(t >= boundary) for t in timesteps])
    model = _Model(pipe, cond, uncond if cfg else None, timesteps, high, (scale, scale_2), a)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=model.on,
        device=first.device,
        finish=lambda x: _finish(pipe, a, x),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
    )


class _Model:
    """The batched Wan call of rows ``(step, sample)``: each row's expert, guidance inside."""

    def __init__(
        self,
        pipe: Any,
        cond: Tensor,
        uncond: Tensor | None,
        timesteps: Tensor,
        high: Tensor,
        scales: tuple[float, float | None],
        a: Mapping[str, Any],
    ):
        self.models = (pipe.transformer, pipe.transformer_2)
        self.embeds = {"c": cond, "u": uncond}
        self.timesteps, self.high, self.scales = timesteps, high, scales
        self.attention, self.expand = a["attention_kwargs"], pipe.config.expand_timesteps

    def on(self, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformers on ``dev``."""
        models = tuple(on(dev, m) for m in self.models)
        e, loop_t, high = on(dev, self.embeds), on(dev, self.timesteps), on(dev, self.high)

        def run(model: Any, x: Tensor, t: Tensor, s: Tensor, scale: float | None) -> Tensor:
            x = x.to(model.dtype)
            if self.expand:  # each latent token its timestep, as the pipeline's mask gives
                ones = torch.ones(x.shape[2:], dtype=torch.float32, device=x.device)
                t = ones[None, :, ::2, ::2] * t.to(torch.float32)[:, None, None, None]
                t = t.flatten(1)
            if e["u"] is None:
                return model(hidden_states=x, timestep=t, encoder_hidden_states=e["c"][s],
                             attention_kwargs=self.attention, return_dict=False)[0]  # fmt: skip
            out = model(
                hidden_states=torch.cat([x, x]), timestep=torch.cat([t, t]),
                encoder_hidden_states=torch.cat([e["c"][s], e["u"][s]]),
                attention_kwargs=self.attention, return_dict=False,
            )[0]  # fmt: skip
            pred, uncond = out.chunk(2)
            return uncond + scale * (pred - uncond)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], e["c"].shape[0], x.device)
            step = step_of(t, loop_t)
            t, first = loop_t[step], high[step]  # the loop's own timesteps and experts
            if bool(first.all()) or bool((~first).all()):
                which = 0 if bool(first[0]) else 1
                return run(models[which], x, t, s, self.scales[which])
            out = None
            for which, rows in ((0, first), (1, ~first)):
                part = run(models[which], x[rows], t[rows], s[rows], self.scales[which])
                if out is None:
                    out = part.new_empty((x.shape[0], *part.shape[1:]))
                out[rows] = part
            return out

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor) -> Any:
    """The final latent to the pipeline's output: un-normalised per channel, decoded."""
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
    from diffusers.utils.torch_utils import get_module_execution_device

    check_unchanged(pipe, a["guidance_scale"])
    pipe._current_timestep = None
    if a["output_type"] == "latent":
        video = latents
    else:
        vae = pipe.vae
        latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(
            latents.device, latents.dtype
        )
        video = vae.decode(latents / std + mean, return_dict=False)[0]
        video = pipe.video_processor.postprocess_video(video, output_type=a["output_type"])
    if not a["return_dict"]:
        return (video,)
    return WanPipelineOutput(frames=video)
