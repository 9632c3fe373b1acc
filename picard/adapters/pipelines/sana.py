"""``SanaPipeline`` (and subclasses that keep its ``__call__``): a linear-attention DiT.

As PixArt (:mod:`picard.adapters.pipelines.pixart`): each row carries its sample's text
embedding and attention mask (Gemma's, or given ``prompt_embeds``), guidance combines the
``[negative, positive]`` halves, a learned-sigma transformer gives the scheduler its first
half. Sana's own parts: the model's timestep is scaled by ``timestep_scale``, the latents
are float32 whatever the transformer's dtype (the model input is cast to it and its output
back to float32), and the DC-AE decodes ``latents / scaling_factor``. Flow-matching
schedulers (Euler, UniPC with flow sigmas) run in parallel; the released configs'
``DPMSolverMultistepScheduler`` with ``use_flow_sigmas`` is refused by its rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import latent_channels, prompt_count
from picard.adapters.pipelines.sd3 import check_stateless, check_unchanged
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = ["prepare_sana"]


def _bins(pipe: Any) -> dict[str, list[float]]:
    """The aspect-ratio bins of ``use_resolution_binning`` for the transformer's size."""
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma
    from diffusers.pipelines.sana import pipeline_sana as sana

    bins = {128: sana.ASPECT_RATIO_4096_BIN, 64: sigma.ASPECT_RATIO_2048_BIN}
    bins |= {32: alpha.ASPECT_RATIO_1024_BIN, 16: alpha.ASPECT_RATIO_512_BIN}
    size = pipe.transformer.config.sample_size
    if size not in bins:
        raise ValueError(
            f"use_resolution_binning needs a transformer sample_size in {sorted(bins)}, got "
            f"{size} (the pipeline raises 'Invalid sample size'); pass "
            "use_resolution_binning=False"
        )
    return bins[size]


def prepare_sana(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``SanaPipeline`` call: size bin, prompts and masks, timesteps, latents.

    The pipeline's own ``check_inputs``, ``encode_prompt``, ``retrieve_timesteps`` (with
    custom ``timesteps`` or ``sigmas``), ``prepare_latents`` (float32) and step options
    (``eta``) run as in its ``__call__``.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache or a callback asking for more than the latents.
        ValueError: an unsupported ``use_resolution_binning`` size or ``out_channels``.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_image_audio import masked_prompt_embeds, tiny_sana
        >>> pipe = tiny_sana()
        >>> a = call_arguments(pipe, **masked_prompt_embeds(["a cat"]), guidance_scale=1.0,
        ...     height=32, width=32, use_resolution_binning=False, num_inference_steps=4)
        >>> p = prepare_sana(pipe, a)
        >>> p.latents.shape, p.latents.dtype, p.rows_per_evaluation
        (torch.Size([1, 4, 16, 16]), torch.float32, 1)
    """
    from diffusers.pipelines.sana.pipeline_sana import retrieve_timesteps

    check_stateless(pipe, a)
    height, width = a["height"], a["width"]
    requested = None
    if a["use_resolution_binning"]:
        requested = (height, width)
        height, width = pipe.image_processor.classify_height_width_bin(
            height, width, ratios=_bins(pipe)
        )
    pipe.check_inputs(
        a["prompt"], height, width, a["callback_on_step_end_tensor_inputs"],
        a["negative_prompt"], a["prompt_embeds"], a["negative_prompt_embeds"],
        a["prompt_attention_mask"], a["negative_prompt_attention_mask"],
    )  # fmt: skip
    pipe._guidance_scale, pipe._attention_kwargs = a["guidance_scale"], a["attention_kwargs"]
    pipe._interrupt = False
    device, cfg = pipe._execution_device, pipe.do_classifier_free_guidance
    attention = a["attention_kwargs"]
    cond, mask, uncond, umask = pipe.encode_prompt(
        a["prompt"], cfg, negative_prompt=a["negative_prompt"],
        num_images_per_prompt=a["num_images_per_prompt"], device=device,
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        prompt_attention_mask=a["prompt_attention_mask"],
        negative_prompt_attention_mask=a["negative_prompt_attention_mask"],
        clean_caption=a["clean_caption"], max_sequence_length=a["max_sequence_length"],
        complex_human_instruction=a["complex_human_instruction"],
        lora_scale=None if attention is None else attention.get("scale", None),
    )  # fmt: skip
    timesteps, _ = retrieve_timesteps(
        pipe.scheduler, a["num_inference_steps"], device, a["timesteps"], a["sigmas"]
    )
    channels, learned_sigma = latent_channels(pipe)
    images = prompt_count(a) * a["num_images_per_prompt"]
    latents = pipe.prepare_latents(
        images, channels, height, width, torch.float32, device, a["generator"], a["latents"]
    )
    pipe._num_timesteps = len(timesteps)
    rows = {"cond": cond, "mask": mask, "uncond": uncond, "umask": umask}
    model = _Model(rows, images, a["guidance_scale"] if cfg else None, learned_sigma, attention)
    grid = {k: a[k] for k in ("timesteps", "sigmas") if a[k] is not None}
    return Prepared(
        latents=latents,
        num_inference_steps=len(timesteps),
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x, requested),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        step_options={"eta": a["eta"]},
        grid_options=grid,
    )


class _Model:
    """The batched Sana transformer call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        rows: Mapping[str, Tensor | None],
        images: int,
        scale: float | None,
        learned_sigma: bool,
        attention: Any,
    ):
        self.rows, self.images, self.scale = rows, images, scale
        self.learned_sigma, self.attention = learned_sigma, attention

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> model output`` with the transformer on ``dev``."""
        model, rows = on(dev, transformer), on(dev, self.rows)
        dtype, time_scale = transformer.dtype, transformer.config.timestep_scale

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], self.images, x.device)
            emb, att = rows["cond"][s], rows["mask"][s]
            if self.scale is not None:  # the pipeline's halves: [negative, positive]
                x, t = torch.cat([x, x]), torch.cat([t, t])
                emb, att = torch.cat([rows["uncond"][s], emb]), torch.cat([rows["umask"][s], att])
            out = model(
                x.to(dtype), encoder_hidden_states=emb.to(dtype), encoder_attention_mask=att,
                timestep=t * time_scale, return_dict=False, attention_kwargs=self.attention,
            )[0].float()  # fmt: skip
            out = guided(out, self.scale) if self.scale is not None else out
            return out.chunk(2, dim=1)[0] if self.learned_sigma else out

        return call


def _finish(
    pipe: Any, a: Mapping[str, Any], latents: Tensor, requested: tuple[int, int] | None
) -> Any:
    """Decode, resize back from the resolution bin, post-process: the pipeline's output."""
    from diffusers.pipelines.sana.pipeline_output import SanaPipelineOutput

    check_unchanged(pipe, a["guidance_scale"])
    if a["output_type"] == "latent":
        image = latents
    else:
        latents = latents.to(pipe.vae.dtype)
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        if requested is not None:
            image = pipe.image_processor.resize_and_crop_tensor(image, requested[1], requested[0])
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    return SanaPipelineOutput(images=image) if a["return_dict"] else (image,)
