"""``HunyuanVideoPipeline`` (and subclasses that keep its ``__call__``).

Flow matching on latents ``(B, C, F, H, W)``: a Llama text encoder (its prompt template,
cropped) with attention masks and a CLIP's pooled embedding (or given embeddings), the
guidance embedding of a guidance-distilled transformer (``guidance_scale * 1000`` per
row) and, with ``true_cfg_scale`` and a negative prompt, a second, negative-prompt row.
The grid is the pipeline's ``sigmas = linspace(1, 0, N + 1)[:-1]`` (or the call's). The
finish undoes the VAE's scaling and decodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import check_unchanged, grid
from picard.adapters.pipelines.spec import Prepared, on, sample_rows
from picard.adapters.pipelines.video_parts import check_no_cache, videos_of

__all__ = ["prepare_hunyuan_video"]

Text = tuple[Tensor, Tensor, Tensor]
"""A prompt's ``(embeddings, pooled embedding, attention mask)``, one row per video."""


def prepare_hunyuan_video(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``HunyuanVideoPipeline`` call: prompts, latents, grid, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (the negative prompt's too with
    true classifier-free guidance), ``prepare_latents`` (in float32, as the pipeline asks)
    and ``retrieve_timesteps`` (its sigmas) run as in its ``__call__``; rows carry their
    sample's prompt, pooled embedding and mask.

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
        >>> from picard.models.tiny_video import HUNYUAN_TEMPLATE, tiny_hunyuan_video
        >>> pipe = tiny_hunyuan_video()
        >>> a = call_arguments(pipe, "a cat", height=16, width=16, num_frames=9,
        ...                    num_inference_steps=4, max_sequence_length=8,
        ...                    prompt_template=HUNYUAN_TEMPLATE)
        >>> p = prepare_hunyuan_video(pipe, a)
        >>> p.latents.shape, sorted(p.grid_options)
        (torch.Size([1, 4, 3, 2, 2]), ['sigmas'])
    """
    check_no_cache(pipe, pipe.transformer)
    pipe.check_inputs(
        a["prompt"], a["prompt_2"], a["height"], a["width"], a["prompt_embeds"],
        a["callback_on_step_end_tensor_inputs"], a["prompt_template"],
    )  # fmt: skip
    has_negative = a["negative_prompt"] is not None or (
        a["negative_prompt_embeds"] is not None and a["negative_pooled_prompt_embeds"] is not None
    )
    true_cfg = a["true_cfg_scale"] > 1 and has_negative
    pipe._guidance_scale, pipe._attention_kwargs = a["guidance_scale"], a["attention_kwargs"]
    pipe._current_timestep, pipe._interrupt = None, False
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    cond = _encode(pipe, a, device, "", dtype)
    negative = _encode(pipe, a, device, "negative_", dtype) if true_cfg else None
    n, sigmas = a["num_inference_steps"], a["sigmas"]
    sigmas = np.linspace(1.0, 0.0, n + 1)[:-1] if sigmas is None else sigmas
    timesteps, _, steps, options = grid(pipe, n, device, sigmas, None)
    latents = pipe.prepare_latents(
        videos_of(a, cond[0]), pipe.transformer.config.in_channels, a["height"], a["width"],
        a["num_frames"], torch.float32, device, a["generator"], a["latents"],
    )  # fmt: skip
    pipe._num_timesteps = len(timesteps)
    model = _Model(a, cond, negative, dtype)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x),
        generator=a["generator"],
        rows_per_evaluation=2 if true_cfg else 1,
        grid_options=options,
    )


def _encode(pipe: Any, a: Mapping[str, Any], device: Any, kind: str, dtype: Any) -> Text:
    """The pipeline's ``encode_prompt`` of the prompt (``kind=""``) or the negative one."""
    embeds, pooled, mask = pipe.encode_prompt(
        prompt=a[f"{kind}prompt"], prompt_2=a[f"{kind}prompt_2"],
        prompt_template=a["prompt_template"], num_videos_per_prompt=a["num_videos_per_prompt"],
        prompt_embeds=a[f"{kind}prompt_embeds"],
        pooled_prompt_embeds=a[f"{kind}pooled_prompt_embeds"],
        prompt_attention_mask=a[f"{kind}prompt_attention_mask"], device=device,
        max_sequence_length=a["max_sequence_length"],
    )  # fmt: skip
    return embeds.to(dtype), pooled.to(dtype), mask.to(dtype)


class _Model:
    """The batched HunyuanVideo call of rows ``(step, sample)``, guidance inside."""

    def __init__(self, a: Mapping[str, Any], cond: Text, negative: Text | None, dtype: Any):
        self.cond, self.negative, self.dtype = cond, negative, dtype
        self.true_scale, self.guidance = a["true_cfg_scale"], a["guidance_scale"]
        self.attention = a["attention_kwargs"]

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model, cond, negative = on(dev, transformer), on(dev, self.cond), on(dev, self.negative)

        def run(x: Tensor, t: Tensor, text: Text) -> Tensor:
            guidance = torch.tensor([self.guidance] * x.shape[0], dtype=self.dtype,
                                    device=x.device) * 1000.0  # fmt: skip
            return model(
                hidden_states=x.to(self.dtype), timestep=t, encoder_hidden_states=text[0],
                encoder_attention_mask=text[2], pooled_projections=text[1], guidance=guidance,
                attention_kwargs=self.attention, return_dict=False,
            )[0]  # fmt: skip

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], cond[0].shape[0], x.device)
            t = t.to(x.dtype)  # the pipeline's timestep in the latents' dtype
            text = (cond[0][s], cond[1][s], cond[2][s])
            if negative is None:
                return run(x, t, text)
            other = (negative[0][s], negative[1][s], negative[2][s])
            if text[0].shape[1:] == other[0].shape[1:]:  # one call on [prompt, negative] rows
                both = tuple(torch.cat(pair) for pair in zip(text, other, strict=True))
                pred, uncond = run(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            else:
                pred, uncond = run(x, t, text), run(x, t, other)
            return uncond + self.true_scale * (pred - uncond)

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor) -> Any:
    """The final latent to the pipeline's output: unscaled and decoded."""
    from diffusers.pipelines.hunyuan_video.pipeline_output import HunyuanVideoPipelineOutput

    check_unchanged(pipe, a["guidance_scale"])
    pipe._current_timestep = None
    if a["output_type"] == "latent":
        video = latents
    else:
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        video = pipe.vae.decode(latents, return_dict=False)[0]
        video = pipe.video_processor.postprocess_video(video, output_type=a["output_type"])
    if not a["return_dict"]:
        return (video,)
    return HunyuanVideoPipelineOutput(frames=video)
