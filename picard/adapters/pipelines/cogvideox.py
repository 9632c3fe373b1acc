"""``CogVideoXPipeline`` (and subclasses that keep its ``__call__``).

Text-to-video on latents ``(B, F, C, H, W)`` (frames before channels), a T5 text encoder
(or given embeddings), classifier-free guidance — constant, or CogVideoX's dynamic one
(``use_dynamic_cfg``: a scale that grows with the step's timestep, per row here). The
transformer's output is rounded to float32, as the pipeline rounds it; rotary embeddings
(CogVideoX-5b) are computed once. CogVideoX 1.5's temporal patches pad the latent frames,
and the finish drops the padding before decoding. The scheduler must be one picard
reproduces: CogVideoX-2b's ``CogVideoXDDIMScheduler`` is; the 5b's ``CogVideoXDPMScheduler``
(a stochastic multistep sampler) is not yet — ``on_unsupported="sequential"`` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import check_unchanged
from picard.adapters.pipelines.spec import Prepared, on, sample_rows
from picard.adapters.pipelines.video_parts import check_no_cache, step_of

__all__ = ["dynamic_scales", "prepare_cogvideox"]


def dynamic_scales(scale: float, timesteps: Tensor, n: int) -> list[float]:
    """CogVideoX's dynamic guidance scale of each step, as its loop computes it.

    ``1 + scale (1 - cos(π ((n - t) / n)^5)) / 2`` of the step's timestep ``t``.

    Args:
        scale: the call's ``guidance_scale``.
        timesteps: the loop's timesteps.
        n: the loop's ``num_inference_steps``.

    Returns:
        One scale per step.

    Example:
        >>> [round(s, 3) for s in dynamic_scales(6.0, torch.tensor([40, 25, 10]), 50)]
        [1.0, 1.014, 2.454]
    """
    fractions = [(n - t.item()) / n for t in timesteps]
    return [1 + scale * ((1 - math.cos(math.pi * f**5.0)) / 2) for f in fractions]


def prepare_cogvideox(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``CogVideoXPipeline`` call: prompts, timesteps, latents, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (an empty negative prompt
    under guidance, as it does; ``num_videos_per_prompt`` is 1 whatever the call says, as
    in the pipeline), ``retrieve_timesteps``, ``prepare_latents`` (padded for temporal
    patches) and rotary embeddings run as in its ``__call__``; ``eta`` goes to the
    scheduler as the pipeline passes it.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_video import tiny_cogvideox
        >>> pipe = tiny_cogvideox()
        >>> a = call_arguments(pipe, "a cat", height=16, width=16, num_frames=9,
        ...                    num_inference_steps=4, max_sequence_length=16)
        >>> p = prepare_cogvideox(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation  # frames before channels
        (torch.Size([1, 3, 4, 2, 2]), 2)
    """
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import retrieve_timesteps

    check_no_cache(pipe, pipe.transformer)
    config = pipe.transformer.config
    height = a["height"] or config.sample_height * pipe.vae_scale_factor_spatial
    width = a["width"] or config.sample_width * pipe.vae_scale_factor_spatial
    frames = a["num_frames"] or config.sample_frames
    pipe.check_inputs(
        a["prompt"], height, width, a["negative_prompt"],
        a["callback_on_step_end_tensor_inputs"], a["prompt_embeds"], a["negative_prompt_embeds"],
    )  # fmt: skip
    scale = a["guidance_scale"]
    pipe._guidance_scale, pipe._attention_kwargs = scale, a["attention_kwargs"]
    pipe._current_timestep, pipe._interrupt = None, False
    device, cfg = pipe._execution_device, scale > 1.0
    cond, uncond = pipe.encode_prompt(
        a["prompt"], a["negative_prompt"], cfg, num_videos_per_prompt=1,
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        max_sequence_length=a["max_sequence_length"], device=device,
    )  # fmt: skip
    dtype = torch.cat([uncond, cond]).dtype if cfg else cond.dtype
    timesteps, n = retrieve_timesteps(pipe.scheduler, a["num_inference_steps"], device)
    pipe._num_timesteps = len(timesteps)
    latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    extra = 0
    if config.patch_size_t is not None and latent_frames % config.patch_size_t != 0:
        extra = config.patch_size_t - latent_frames % config.patch_size_t
        frames += extra * pipe.vae_scale_factor_temporal
    latents = pipe.prepare_latents(
        cond.shape[0], config.in_channels, frames, height, width, dtype, device,
        a["generator"], a["latents"],
    )  # fmt: skip
    rotary = None
    if config.use_rotary_positional_embeddings:
        rotary = pipe._prepare_rotary_positional_embeddings(height, width, latents.size(1), device)
    scales = dynamic_scales(scale, timesteps, n) if a["use_dynamic_cfg"] else None
    model = _Model(cond, uncond if cfg else None, rotary, scale, timesteps, scales, a)
    return Prepared(
        latents=latents,
        num_inference_steps=n,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x, extra, scales),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        step_options={"eta": a["eta"]},
    )


class _Model:
    """The batched CogVideoX call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        cond: Tensor,
        uncond: Tensor | None,
        rotary: tuple[Tensor, Tensor] | None,
        scale: float,
        timesteps: Tensor,
        scales: list[float] | None,
        a: Mapping[str, Any],
    ):
        self.embeds = {"c": cond, "u": uncond}
        self.rotary, self.scale, self.timesteps = rotary, scale, timesteps
        self.scales = None if scales is None else torch.tensor(scales, dtype=torch.float64)
        self.attention = a["attention_kwargs"]

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> model output`` with the transformer on ``dev``."""
        model, e, rotary = on(dev, transformer), on(dev, self.embeds), on(dev, self.rotary)
        loop_t, scales = on(dev, self.timesteps), on(dev, self.scales)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], e["c"].shape[0], x.device)
            step = step_of(t, loop_t)
            t = loop_t[step]  # the loop's own timestep values
            if e["u"] is not None:
                x, t, text = torch.cat([x, x]), torch.cat([t, t]), torch.cat([e["u"][s], e["c"][s]])
            else:
                text = e["c"][s]
            out = model(
                hidden_states=x, encoder_hidden_states=text, timestep=t,
                image_rotary_emb=rotary, attention_kwargs=self.attention, return_dict=False,
            )[0].float()  # fmt: skip
            if e["u"] is None:
                return out
            uncond, cond = out.chunk(2)
            if scales is None:
                return uncond + self.scale * (cond - uncond)
            # the pipeline's Python float, rounded to the output's dtype as torch rounds it
            scale = scales[step].to(out.dtype).view(-1, *[1] * (out.ndim - 1))
            return uncond + scale * (cond - uncond)

        return call


def _finish(
    pipe: Any, a: Mapping[str, Any], latents: Tensor, extra: int, scales: list[float] | None
) -> Any:
    """The final latent to the pipeline's output: padding frames dropped, decoded."""
    from diffusers.pipelines.cogvideo.pipeline_output import CogVideoXPipelineOutput

    check_unchanged(pipe, a["guidance_scale"])
    if scales is not None:
        pipe._guidance_scale = scales[-1]  # where the pipeline's loop leaves it
    pipe._current_timestep = None
    if a["output_type"] == "latent":
        video = latents
    else:
        video = pipe.decode_latents(latents[:, extra:])
        video = pipe.video_processor.postprocess_video(video=video, output_type=a["output_type"])
    if not a["return_dict"]:
        return (video,)
    return CogVideoXPipelineOutput(frames=video)
