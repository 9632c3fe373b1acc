"""``AnimateDiffPipeline`` (and subclasses that keep its ``__call__``).

Stable Diffusion with a motion adapter: latents ``(B, C, F, H, W)``, a CLIP text encoder
(or given embeddings) whose prompt reaches every frame (the pipeline's
``repeat_interleave``), classifier-free guidance, any scheduler picard reproduces (its
``scale_model_input`` and ``eta`` as the pipeline passes them). FreeInit (several passes of
the loop, re-noised between them) and FreeNoise (prompts and windows over frames) change
the loop itself: they are refused, as are IP-Adapter images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import check_unchanged
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = ["prepare_animatediff"]


def _check(pipe: Any) -> None:
    """Refuse FreeInit and FreeNoise: they change the loop, not the model rows."""
    name = type(pipe).__name__
    for flag, what in (("free_init_enabled", "FreeInit"), ("free_noise_enabled", "FreeNoise")):
        if getattr(pipe, flag, False):
            raise TypeError(
                f"{name}: {what} is not supported by picard (it changes the denoising loop); "
                f"disable it ({'disable_free_init' if what == 'FreeInit' else 'disable_free_noise'}"
                "()) or run the pipeline itself"
            )


def prepare_animatediff(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare an ``AnimateDiffPipeline`` call: prompts, timesteps, latents, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (with ``clip_skip`` and the
    LoRA scale of ``cross_attention_kwargs``; ``num_videos_per_prompt`` is 1 whatever the
    call says, as in the pipeline), ``set_timesteps`` and ``prepare_latents`` run as in its
    ``__call__``.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: FreeInit or FreeNoise enabled.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_video import tiny_animatediff
        >>> pipe = tiny_animatediff()
        >>> a = call_arguments(pipe, "a cat", num_frames=4, num_inference_steps=4)
        >>> p = prepare_animatediff(pipe, a)
        >>> p.latents.shape, p.step_options  # channels before frames
        (torch.Size([1, 4, 4, 8, 8]), {'eta': 0.0})
    """
    _check(pipe)
    height = a["height"] or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.unet.config.sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"], height, width, None, a["negative_prompt"], a["prompt_embeds"],
        a["negative_prompt_embeds"], a["ip_adapter_image"], a["ip_adapter_image_embeds"],
        a["callback_on_step_end_tensor_inputs"],
    )  # fmt: skip
    attention = a["cross_attention_kwargs"]
    pipe._guidance_scale, pipe._clip_skip = a["guidance_scale"], a["clip_skip"]
    pipe._cross_attention_kwargs, pipe._interrupt = attention, False
    device, cfg = pipe._execution_device, pipe.do_classifier_free_guidance
    cond, uncond = pipe.encode_prompt(
        a["prompt"], device, 1, cfg, a["negative_prompt"], prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        lora_scale=None if attention is None else attention.get("scale", None),
        clip_skip=a["clip_skip"],
    )  # fmt: skip
    dtype = torch.cat([uncond, cond]).dtype if cfg else cond.dtype
    steps = a["num_inference_steps"]
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps = pipe.scheduler.timesteps
    prompt = a["prompt"]
    videos = len(cond) if prompt is None else 1 if isinstance(prompt, str | dict) else len(prompt)
    latents = pipe.prepare_latents(
        videos, pipe.unet.config.in_channels, a["num_frames"], height, width, dtype, device,
        a["generator"], a["latents"],
    )  # fmt: skip
    pipe._num_timesteps = len(timesteps)
    model = _Model(cond, uncond if cfg else None, a)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.unet, dev),
        device=pipe.unet.device,
        finish=lambda x: _finish(pipe, a, x),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        step_options={"eta": a["eta"]},
    )


class _Model:
    """The batched motion-UNet call of rows ``(step, sample)``, guidance inside."""

    def __init__(self, cond: Tensor, uncond: Tensor | None, a: Mapping[str, Any]):
        self.embeds = {"c": cond, "u": uncond}
        self.scale, self.attention = a["guidance_scale"], a["cross_attention_kwargs"]

    def on(self, unet: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> model output`` with the UNet on ``dev``."""
        model, e = on(dev, unet), on(dev, self.embeds)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], e["c"].shape[0], x.device)
            text = e["c"][s]
            if e["u"] is not None:
                x, t, text = torch.cat([x, x]), torch.cat([t, t]), torch.cat([e["u"][s], text])
            frames = x.shape[2]  # each row's prompt on each of its frames, as the pipeline
            text = text.repeat_interleave(repeats=frames, dim=0)
            out = model(
                x, t, encoder_hidden_states=text, cross_attention_kwargs=self.attention,
                added_cond_kwargs=None,
            ).sample  # fmt: skip
            return guided(out, self.scale) if e["u"] is not None else out

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor) -> Any:
    """The final latent to the pipeline's output: decoded in chunks of frames."""
    from diffusers.pipelines.animatediff.pipeline_output import AnimateDiffPipelineOutput

    check_unchanged(pipe, a["guidance_scale"])
    if a["output_type"] == "latent":
        video = latents
    else:
        video = pipe.decode_latents(latents, a["decode_chunk_size"])
        video = pipe.video_processor.postprocess_video(video=video, output_type=a["output_type"])
    if not a["return_dict"]:
        return (video,)
    return AnimateDiffPipelineOutput(frames=video)
