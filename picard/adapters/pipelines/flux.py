"""``FluxPipeline`` (and subclasses that keep its ``__call__``).

Flow matching on packed latents ``(B, tokens, 4 C)`` with their ``latent_image_ids`` and
the text's ``txt_ids``; the transformer gets ``t / 1000``, the guidance embedding of
guidance-distilled models (a per-row guidance tensor) and, with ``true_cfg_scale`` and a
negative prompt, a second, negative-prompt row. The grid is the pipeline's:
``sigmas = linspace(1, 1/N, N)`` (or the call's) with ``mu`` from the image's sequence
length. The finish unpacks, undoes the VAE's scaling and shift, and decodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import check_stateless, check_unchanged, grid, images_of
from picard.adapters.pipelines.spec import Prepared, on, sample_rows

__all__ = ["prepare_flux"]


def prepare_flux(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``FluxPipeline`` call: prompts, packed latents, grid, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (the negative prompt's too
    with true classifier-free guidance), ``prepare_latents`` (packed, with the image ids)
    and ``retrieve_timesteps`` (its default sigmas and ``mu`` from ``calculate_shift``)
    run as in its ``__call__``; rows carry their sample's prompt.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache or a callback asking for more than the latents.
        ValueError: ``prompt_embeds`` and ``negative_prompt_embeds`` of different shapes
            with true guidance (as the pipeline).

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sd3_flux import t5_embeddings, tiny_flux
        >>> pipe = tiny_flux()
        >>> pooled = pipe._get_clip_prompt_embeds(["a cat"], 1, "cpu")
        >>> a = call_arguments(
        ...     pipe, prompt_embeds=t5_embeddings(pipe, ["a cat"]), pooled_prompt_embeds=pooled,
        ...     height=16, width=16, num_inference_steps=5)
        >>> p = prepare_flux(pipe, a)
        >>> p.latents.shape, sorted(p.grid_options)  # 16 tokens of 2x2 patches of 4 channels
        (torch.Size([1, 16, 16]), ['mu', 'sigmas'])
    """
    check_stateless(pipe, a)
    attention = {} if a["joint_attention_kwargs"] is None else a["joint_attention_kwargs"]
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"], a["prompt_2"], height, width, negative_prompt=a["negative_prompt"],
        negative_prompt_2=a["negative_prompt_2"], prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
        callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
        max_sequence_length=a["max_sequence_length"],
    )  # fmt: skip
    pipe._guidance_scale, pipe._joint_attention_kwargs = a["guidance_scale"], attention
    pipe._current_timestep, pipe._interrupt = None, False
    device, true_cfg = pipe._execution_device, _true_cfg(a)
    cond = _encode(pipe, a, device, "")
    negative = _encode(pipe, a, device, "negative_") if true_cfg else None
    latents, image_ids = pipe.prepare_latents(
        images_of(a, cond[0]), pipe.transformer.config.in_channels // 4, height, width,
        cond[0].dtype, device, a["generator"], a["latents"],
    )  # fmt: skip
    timesteps, steps, options = _grid(pipe, a, latents, device)
    pipe._num_timesteps = len(timesteps)
    model = _Model(a, cond, negative, image_ids, pipe.transformer.config.guidance_embeds)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, attention, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x, height, width),
        generator=a["generator"],
        rows_per_evaluation=2 if true_cfg else 1,
        grid_options=options,
    )


def _true_cfg(a: Mapping[str, Any]) -> bool:
    """Whether the pipeline runs true classifier-free guidance (checking as it does)."""
    has_negative = a["negative_prompt"] is not None or (
        a["negative_prompt_embeds"] is not None and a["negative_pooled_prompt_embeds"] is not None
    )
    true_cfg = a["true_cfg_scale"] > 1 and has_negative
    cond, uncond = a["prompt_embeds"], a["negative_prompt_embeds"]
    if true_cfg and cond is not None and uncond is not None and cond.shape != uncond.shape:
        raise ValueError(
            "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed "
            f"directly, but got: `prompt_embeds` {cond.shape} != `negative_prompt_embeds` "
            f"{uncond.shape}."
        )
    return true_cfg


def _encode(
    pipe: Any, a: Mapping[str, Any], device: torch.device, kind: str
) -> tuple[Tensor, Tensor, Tensor]:
    """The pipeline's ``encode_prompt`` of the prompt (``kind=""``) or the negative one."""
    attention = a["joint_attention_kwargs"]
    return pipe.encode_prompt(
        prompt=a[f"{kind}prompt"], prompt_2=a[f"{kind}prompt_2"],
        prompt_embeds=a[f"{kind}prompt_embeds"],
        pooled_prompt_embeds=a[f"{kind}pooled_prompt_embeds"], device=device,
        num_images_per_prompt=a["num_images_per_prompt"],
        max_sequence_length=a["max_sequence_length"],
        lora_scale=None if attention is None else attention.get("scale", None),
    )  # fmt: skip


def _grid(
    pipe: Any, a: Mapping[str, Any], latents: Tensor, device: torch.device
) -> tuple[Tensor, int, dict[str, Any]]:
    """The pipeline's sigmas and ``mu``, through its ``retrieve_timesteps``."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    n, sigmas = a["num_inference_steps"], a["sigmas"]
    sigmas = np.linspace(1.0, 1 / n, n) if sigmas is None else sigmas
    config = pipe.scheduler.config
    if hasattr(config, "use_flow_sigmas") and config.use_flow_sigmas:
        sigmas = None
    mu = calculate_shift(
        latents.shape[1],
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    timesteps, _, steps, options = grid(pipe, n, device, sigmas, mu)
    return timesteps, steps, options


class _Model:
    """The batched Flux transformer call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        a: Mapping[str, Any],
        cond: tuple[Tensor, Tensor, Tensor],
        negative: tuple[Tensor, Tensor, Tensor] | None,
        image_ids: Tensor,
        guidance_embeds: bool,
    ):
        self.cond, self.negative, self.image_ids = cond, negative, image_ids
        self.true_scale, self.guidance = a["true_cfg_scale"], a["guidance_scale"]
        self.guidance_embeds = guidance_embeds

    def on(self, transformer: Any, attention: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model, ids = on(dev, transformer), on(dev, self.image_ids)
        cond, negative = on(dev, self.cond), on(dev, self.negative)

        def run(x: Tensor, t: Tensor, embeds: tuple[Tensor, Tensor, Tensor]) -> Tensor:
            guidance = None
            if self.guidance_embeds:  # the pipeline's per-row guidance, in float32
                guidance = torch.full(
                    [x.shape[0]], self.guidance, device=x.device, dtype=torch.float32
                )
            return model(
                hidden_states=x, timestep=t, guidance=guidance, pooled_projections=embeds[1],
                encoder_hidden_states=embeds[0], txt_ids=embeds[2], img_ids=ids,
                joint_attention_kwargs=attention, return_dict=False,
            )[0]  # fmt: skip

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], cond[0].shape[0], x.device)
            t = t.to(x.dtype) / 1000  # as the pipeline passes it
            if negative is None:
                return run(x, t, (cond[0][s], cond[1][s], cond[2]))
            if _batchable(cond, negative):  # one call on [prompt rows, negative rows]
                embeds = (torch.cat([cond[0][s], negative[0][s]]),
                          torch.cat([cond[1][s], negative[1][s]]), cond[2])  # fmt: skip
                pred, uncond = run(torch.cat([x, x]), torch.cat([t, t]), embeds).chunk(2)
            else:
                pred = run(x, t, (cond[0][s], cond[1][s], cond[2]))
                uncond = run(x, t, (negative[0][s], negative[1][s], negative[2]))
            return uncond + self.true_scale * (pred - uncond)

        return call


def _batchable(cond: tuple[Tensor, ...], negative: tuple[Tensor, ...]) -> bool:
    """Whether prompt and negative rows can share one call (same text length and ids)."""
    return cond[0].shape[1:] == negative[0].shape[1:] and torch.equal(cond[2], negative[2])


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor, height: int, width: int) -> Any:
    """The final packed latent to the pipeline's output: unpacked, unscaled, decoded."""
    from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
    from diffusers.utils.torch_utils import get_module_execution_device

    check_unchanged(pipe, a["guidance_scale"])
    if a["output_type"] == "latent":
        image = latents
    else:
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        config = pipe.vae.config
        latents = (latents / config.scaling_factor) + config.shift_factor
        latents = latents.to(get_module_execution_device(pipe.vae))
        image = pipe.vae.decode(latents, return_dict=False)[0]
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    if not a["return_dict"]:
        return (image,)
    return FluxPipelineOutput(images=image)
