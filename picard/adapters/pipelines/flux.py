"""``FluxPipeline`` (and subclasses that keep its ``__call__``).

Flow matching on packed latents ``(B, tokens, 4 C)`` with their ``latent_image_ids`` and
the text's ``txt_ids``; the transformer gets ``t / 1000``, the guidance embedding of
guidance-distilled models (a per-row guidance tensor) and, with ``true_cfg_scale`` and a
negative prompt, a second, negative-prompt row. The grid is the pipeline's:
``sigmas = linspace(1, 1/N, N)`` (or the call's) with ``mu`` from the image's sequence
length. The finish unpacks, undoes the VAE's scaling and shift, and decodes.

``FluxKontextPipeline`` joins its image's packed latents to every row's tokens (their ids
after the latents'); ``FluxFillPipeline`` joins the masked image's latents and the mask to
every row's channels, and starts at the step ``strength`` gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import prompt_count
from picard.adapters.pipelines.sd3 import (
    check_stateless,
    check_unchanged,
    images_of,
    shifted_grid,
)
from picard.adapters.pipelines.spec import Prepared, on, sample_rows

__all__ = ["prepare_flux", "prepare_flux_fill", "prepare_flux_kontext"]


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
    timesteps, _, steps, options = shifted_grid(pipe, a, latents.shape[1], device, flow_sigmas=True)
    pipe._num_timesteps = len(timesteps)
    model = _Model(a, cond, negative, image_ids, pipe.transformer.config.guidance_embeds)
    return _prepared(pipe, a, model, attention, latents, timesteps, steps, options,
                     (height, width), rows=2 if true_cfg else 1)  # fmt: skip


def prepare_flux_kontext(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``FluxKontextPipeline`` call: as :func:`prepare_flux`, with the image's tokens.

    The size is fitted to ``max_area`` and the image resized (to a preferred Kontext
    resolution with ``_auto_resize``) and encoded by the pipeline's own code; its packed
    latents join every row's tokens (their ids after the latents' ids), and the model's
    output is cut back to the latents' tokens, as in the pipeline's loop.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_image_audio import flux_prompt_embeds, tiny_flux_kontext
        >>> pipe = tiny_flux_kontext()
        >>> a = call_arguments(pipe, torch.rand(1, 3, 16, 16), height=16, width=16,
        ...     max_area=256, _auto_resize=False, num_inference_steps=4,
        ...     **flux_prompt_embeds(pipe, ["a cat"]))
        >>> p = prepare_flux_kontext(pipe, a)
        >>> p.latents.shape, p.denoiser(None)(p.latents, p.timesteps[:1]).shape
        (torch.Size([1, 16, 16]), torch.Size([1, 16, 16]))
    """
    check_stateless(pipe, a)
    height, width, multiple = _kontext_size(pipe, a)
    pipe.check_inputs(
        a["prompt"], a["prompt_2"], height, width, negative_prompt=a["negative_prompt"],
        negative_prompt_2=a["negative_prompt_2"], prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
        callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
        max_sequence_length=a["max_sequence_length"],
    )  # fmt: skip
    attention = {} if a["joint_attention_kwargs"] is None else a["joint_attention_kwargs"]
    pipe._guidance_scale, pipe._joint_attention_kwargs = a["guidance_scale"], attention
    pipe._current_timestep, pipe._interrupt = None, False
    device, true_cfg = pipe._execution_device, _true_cfg(a)
    cond = _encode(pipe, a, device, "")
    negative = _encode(pipe, a, device, "negative_") if true_cfg else None
    image = _kontext_image(pipe, a["image"], a["_auto_resize"], multiple)
    latents, image_latents, ids, image_ids = pipe.prepare_latents(
        image, images_of(a, cond[0]), pipe.transformer.config.in_channels // 4, height, width,
        cond[0].dtype, device, a["generator"], a["latents"],
    )  # fmt: skip
    extra = None
    if image_ids is not None:
        ids, extra = torch.cat([ids, image_ids], dim=0), (1, image_latents)
    timesteps, _, steps, options = shifted_grid(pipe, a, latents.shape[1], device, flow_sigmas=True)
    pipe._num_timesteps = len(timesteps)
    pipe.scheduler.set_begin_index(0)
    config = pipe.transformer.config
    model = _Model(a, cond, negative, ids, config.guidance_embeds, extra)
    return _prepared(pipe, a, model, attention, latents, timesteps, steps, options,
                     (height, width), rows=2 if true_cfg else 1)  # fmt: skip


def _kontext_size(pipe: Any, a: Mapping[str, Any]) -> tuple[int, int, int]:
    """Kontext's height and width, fitted to ``max_area`` as the pipeline fits them."""
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    ratio, multiple = width / height, pipe.vae_scale_factor * 2
    width = round((a["max_area"] * ratio) ** 0.5) // multiple * multiple
    height = round((a["max_area"] / ratio) ** 0.5) // multiple * multiple
    return height, width, multiple


def _kontext_image(pipe: Any, image: Any, auto_resize: bool, multiple: int) -> Any:
    """The pipeline's preprocessing of Kontext's image (latents pass through)."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    if image is None or (isinstance(image, Tensor) and image.size(1) == pipe.latent_channels):
        return image
    first = image[0] if isinstance(image, list) else image
    image_height, image_width = pipe.image_processor.get_default_height_width(first)
    ratio = image_width / image_height
    if auto_resize:
        _, image_width, image_height = min(
            (abs(ratio - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS
        )
    image_width, image_height = (
        image_width // multiple * multiple,
        image_height // multiple * multiple,
    )
    image = pipe.image_processor.resize(image, image_height, image_width)
    return pipe.image_processor.preprocess(image, image_height, image_width)


def prepare_flux_fill(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``FluxFillPipeline`` call: prompts, the masked image and mask, strength.

    The pipeline's own ``check_inputs``, ``encode_prompt``, grid (its default sigmas and
    ``mu`` from the image size), ``get_timesteps`` (``strength``: the solve starts at its
    step), ``prepare_latents`` and ``prepare_mask_latents`` run as in its ``__call__``;
    each row's latents get their sample's masked image latents and mask as channels.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        ValueError: a ``strength`` that leaves no step (as the pipeline).

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_image_audio import flux_prompt_embeds, tiny_flux_fill
        >>> pipe = tiny_flux_fill()
        >>> a = call_arguments(pipe, image=torch.rand(1, 3, 16, 16),
        ...     mask_image=torch.ones(1, 1, 16, 16), height=16, width=16, strength=0.5,
        ...     num_inference_steps=4, **flux_prompt_embeds(pipe, ["a cat"]))
        >>> p = prepare_flux_fill(pipe, a)
        >>> p.latents.shape, p.begin, len(p.timesteps)
        (torch.Size([1, 16, 16]), 2, 2)
    """
    check_stateless(pipe, a)
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"], a["prompt_2"], a["strength"], height, width,
        prompt_embeds=a["prompt_embeds"], pooled_prompt_embeds=a["pooled_prompt_embeds"],
        callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
        max_sequence_length=a["max_sequence_length"], image=a["image"],
        mask_image=a["mask_image"], masked_image_latents=a["masked_image_latents"],
    )  # fmt: skip
    attention = a["joint_attention_kwargs"]
    pipe._guidance_scale, pipe._joint_attention_kwargs = a["guidance_scale"], attention
    pipe._interrupt = False
    init_image = pipe.image_processor.preprocess(a["image"], height=height, width=width)
    init_image = init_image.to(dtype=torch.float32)
    device = pipe._execution_device
    cond = _encode(pipe, a, device, "")
    images = images_of(a, cond[0])
    scale = pipe.vae_scale_factor * 2
    tokens = (int(height) // scale) * (int(width) // scale)
    _, n, steps, options = shifted_grid(pipe, a, tokens, device)
    timesteps, left = pipe.get_timesteps(n, a["strength"], device)
    if left < 1:
        raise ValueError(
            f"After adjusting the num_inference_steps by strength parameter: {a['strength']}, "
            f"the number of pipeline steps is {left} which is < 1 and not appropriate for this "
            "pipeline."
        )
    channels = pipe.vae.config.latent_channels
    latents, ids = pipe.prepare_latents(
        init_image, timesteps[:1].repeat(images), images, channels, height, width,
        cond[0].dtype, device, a["generator"], a["latents"],
    )  # fmt: skip
    masked = a["masked_image_latents"]
    if masked is not None:
        masked = masked.to(latents.device)
    else:
        mask_image = pipe.mask_processor.preprocess(a["mask_image"], height=height, width=width)
        masked_image = (init_image * (1 - mask_image)).to(device=device, dtype=cond[0].dtype)
        height, width = init_image.shape[-2:]
        mask, masked = pipe.prepare_mask_latents(
            mask_image, masked_image, prompt_count(a), channels, a["num_images_per_prompt"],
            height, width, cond[0].dtype, device, a["generator"],
        )  # fmt: skip
        masked = torch.cat((masked, mask), dim=-1)
    pipe._num_timesteps = len(timesteps)
    model = _Model(a, cond, None, ids, pipe.transformer.config.guidance_embeds, (2, masked))
    begin = len(pipe.scheduler.timesteps) - len(timesteps)
    return _prepared(pipe, a, model, attention, latents, timesteps, steps, options,
                     (height, width), begin=begin)  # fmt: skip


def _prepared(
    pipe: Any,
    a: Mapping[str, Any],
    model: _Model,
    attention: Any,
    latents: Tensor,
    timesteps: Tensor,
    steps: int,
    options: dict[str, Any],
    size: tuple[int, int],
    rows: int = 1,
    begin: int = 0,
) -> Prepared:
    """The prepared call of a Flux family: its model's rows, decode and grid."""
    height, width = size
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, attention, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x, height, width),
        generator=a["generator"],
        rows_per_evaluation=rows,
        grid_options=options,
        begin=begin,
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


class _Model:
    """The batched Flux transformer call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        a: Mapping[str, Any],
        cond: tuple[Tensor, Tensor, Tensor],
        negative: tuple[Tensor, Tensor, Tensor] | None,
        image_ids: Tensor,
        guidance_embeds: bool,
        extra: tuple[int, Tensor] | None = None,
    ):
        self.cond, self.negative, self.image_ids = cond, negative, image_ids
        self.true_scale = a.get("true_cfg_scale", 1.0)
        self.guidance = a["guidance_scale"]
        self.guidance_embeds = guidance_embeds
        self.extra = extra  # (dim, per-sample tensor) joined to the rows' latents

    def on(self, transformer: Any, attention: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model, ids = on(dev, transformer), on(dev, self.image_ids)
        cond, negative = on(dev, self.cond), on(dev, self.negative)
        extra = None if self.extra is None else (self.extra[0], on(dev, self.extra[1]))

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
            tokens = x.shape[1]
            if extra is not None:  # Kontext's image tokens, Fill's masked image channels
                x = torch.cat([x, extra[1][s]], dim=extra[0])
            return velocity(x, t, s)[:, :tokens]

        def velocity(x: Tensor, t: Tensor, s: Tensor) -> Tensor:
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
