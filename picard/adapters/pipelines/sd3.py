"""``StableDiffusion3Pipeline`` (and subclasses that keep its ``__call__``).

Flow matching on unpacked latents ``(B, C, H, W)``: three text encoders (two CLIP, one
T5, or their given embeddings), classifier-free guidance, skip-layer guidance (SD 3.5),
the dynamic shift ``mu``, custom ``sigmas``; the finish undoes the VAE's scaling and
shift (``latents / scaling_factor + shift_factor``) and decodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import prompt_count
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = ["prepare_sd3"]


def check_stateless(pipe: Any, a: Mapping[str, Any]) -> None:
    """Refuse what makes the model call depend on the loop's history, not its rows.

    A transformer cache (``enable_cache``: first-block cache, FasterCache, ...) reuses
    earlier steps' activations, and a ``PipelineCallback`` may ask for tensors other than
    the latents; neither has the sequential result when steps run in parallel.

    Args:
        pipe: an SD3 or Flux pipeline.
        a: the call's arguments.

    Raises:
        TypeError: naming what is refused.

    Example:
        >>> from picard.models.tiny_sd3_flux import tiny_sd3
        >>> check_stateless(tiny_sd3(), {"callback_on_step_end": None})
    """
    name = type(pipe).__name__
    if getattr(pipe.transformer, "is_cache_enabled", False):
        raise TypeError(
            f"{name}: the transformer's cache (enable_cache) is not supported by picard: it "
            "reuses earlier steps' activations; disable it (transformer.disable_cache())"
        )
    callback = a.get("callback_on_step_end")
    inputs = getattr(callback, "tensor_inputs", None)
    if inputs is not None and list(inputs) != ["latents"]:
        raise TypeError(
            f"callback_on_step_end of {name} asks for {list(inputs)}; with picard a callback "
            "may only read ['latents']"
        )


def check_unchanged(pipe: Any, guidance_scale: float) -> None:
    """Refuse a result a callback changed: the guidance scale, or an interrupt.

    Args:
        pipe: the pipeline after the solve.
        guidance_scale: the scale the model rows used.

    Raises:
        RuntimeError: the pipeline's ``_guidance_scale`` or ``_interrupt`` was changed
            during the loop (e.g. by ``callback_on_step_end``).

    Example:
        >>> from picard.models.tiny_sd3_flux import tiny_sd3
        >>> pipe = tiny_sd3()
        >>> pipe._guidance_scale, pipe._interrupt = 7.0, False
        >>> check_unchanged(pipe, 7.0)
    """
    if pipe._guidance_scale != guidance_scale or pipe._interrupt:
        raise RuntimeError(
            f"{type(pipe).__name__}: the guidance scale or the interrupt flag changed during "
            "the loop (callback_on_step_end?); picard evaluates steps in parallel and cannot "
            "follow it: run the pipeline itself"
        )


def images_of(a: Mapping[str, Any], embeds: Tensor) -> int:
    """The pipeline's batch (prompts times ``num_images_per_prompt``), matching ``embeds``.

    Given ``prompt_embeds`` are not repeated by ``encode_prompt``: with
    ``num_images_per_prompt > 1`` the pipeline fails on mismatched batches; so does this.

    Args:
        a: the call's arguments.
        embeds: the encoded prompt embeddings.

    Returns:
        The number of images.

    Raises:
        ValueError: the embeddings do not have one row per image.

    Example:
        >>> images_of({"prompt": ["a", "b"], "num_images_per_prompt": 2}, torch.zeros(4, 3))
        4
    """
    images = prompt_count(a) * a["num_images_per_prompt"]
    if embeds.shape[0] != images:
        raise ValueError(
            f"the prompt embeddings have {embeds.shape[0]} rows for {images} images "
            f"(num_images_per_prompt={a['num_images_per_prompt']} is not applied to given "
            "prompt_embeds by the pipeline: repeat them yourself)"
        )
    return images


def grid(
    pipe: Any, steps: int, device: torch.device, sigmas: Any, mu: float | None
) -> tuple[Tensor, int, int, dict[str, Any]]:
    """The pipeline's ``retrieve_timesteps``, and the same options for picard's rule.

    Args:
        pipe: the pipeline (its scheduler is set, as the pipeline sets it).
        steps: the call's ``num_inference_steps``.
        device: where the timesteps go.
        sigmas: the sigmas the pipeline passes (``None``: none).
        mu: the dynamic shift the pipeline passes (``None``: none).

    Returns:
        ``(timesteps, n, N, grid_options)``: the loop's timesteps, the step count
        ``retrieve_timesteps`` returns (the loop's ``num_inference_steps``), N as
        ``set_timesteps`` counts it (``len(sigmas)`` when given), and its options.

    Example:
        >>> from picard.models.tiny_sd3_flux import tiny_sd3
        >>> t, n, steps, options = grid(tiny_sd3(), 4, torch.device("cpu"), None, None)
        >>> n, steps, options, [round(v) for v in t.tolist()]
        (4, 4, {}, [1000, 858, 602, 9])
    """
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
        retrieve_timesteps,
    )

    options: dict[str, Any] = {} if mu is None else {"mu": mu}
    timesteps, n = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, **options)
    if sigmas is not None:
        options["sigmas"] = sigmas
        steps = len(sigmas)
    return timesteps, n, steps, options


def shifted_grid(
    pipe: Any, a: Mapping[str, Any], tokens: int, device: torch.device, flow_sigmas: bool = False
) -> tuple[Tensor, int, int, dict[str, Any]]:
    """:func:`grid` as Flux, Lumina 2 and QwenImage call ``retrieve_timesteps``.

    Their sigmas are ``linspace(1, 1/N, N)`` unless the call gives some, and ``mu`` is
    diffusers' ``calculate_shift`` of the image's token count with the scheduler's
    ``base/max_image_seq_len`` and ``base/max_shift`` (defaults 256, 4096, 0.5, 1.15).

    Args:
        pipe: the pipeline.
        a: the call's arguments (``num_inference_steps``, ``sigmas``).
        tokens: the image's sequence length, ``mu``'s argument.
        device: where the timesteps go.
        flow_sigmas: pass no sigmas when the scheduler's ``use_flow_sigmas`` is set (Flux).

    Returns:
        As :func:`grid`.

    Example:
        >>> from picard.models.tiny_sd3_flux import tiny_flux
        >>> a = {"num_inference_steps": 4, "sigmas": None}
        >>> t, n, steps, options = shifted_grid(tiny_flux(), a, 16, torch.device("cpu"))
        >>> n, steps, sorted(options)
        (4, 4, ['mu', 'sigmas'])
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    n, sigmas, config = a["num_inference_steps"], a["sigmas"], pipe.scheduler.config
    sigmas = np.linspace(1.0, 1 / n, n) if sigmas is None else sigmas
    if flow_sigmas and config.get("use_flow_sigmas", False):
        sigmas = None
    mu = calculate_shift(
        tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5), config.get("max_shift", 1.15),
    )  # fmt: skip
    return grid(pipe, n, device, sigmas, mu)


def _shift(pipe: Any, latents: Tensor, mu: float | None) -> float | None:
    """``mu`` as the pipeline computes it with ``use_dynamic_shifting`` (else as given)."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
        calculate_shift,
    )

    config = pipe.scheduler.config
    if not config.get("use_dynamic_shifting", None) or mu is not None:
        return mu
    patch = pipe.transformer.config.patch_size
    height, width = latents.shape[-2:]
    return calculate_shift(
        (height // patch) * (width // patch),
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.16),
    )


def _skip_steps(a: Mapping[str, Any], timesteps: Tensor, n: int, cfg: bool) -> Tensor | None:
    """Which steps add skip-layer guidance (``None``: none), as the loop decides by index."""
    layers = a["skip_guidance_layers"]
    if layers is None or not cfg:
        return None
    if torch.unique(timesteps).numel() != len(timesteps):
        raise ValueError(
            "skip_guidance_layers needs distinct timesteps (it applies by step index); "
            "this grid repeats one"
        )
    start, stop = a["skip_layer_guidance_start"], a["skip_layer_guidance_stop"]
    return torch.tensor([i > n * start and i < n * stop for i in range(len(timesteps))])


def _step_of(t: Tensor, timesteps: Tensor) -> Tensor:
    """Each row's step index: the loop's timestep nearest its timestep."""
    return (timesteps.to(t.device, torch.float64)[None] - t.double()[:, None]).abs().argmin(1)


def prepare_sd3(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableDiffusion3Pipeline`` call: prompts, timesteps, latents, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (with ``clip_skip`` and the LoRA
    scale of ``joint_attention_kwargs``), ``prepare_latents`` and ``retrieve_timesteps``
    (with ``sigmas`` and ``mu``, computed as the pipeline does under
    ``use_dynamic_shifting``) run as in its ``__call__``. Rows carry their sample's
    prompt; skip-layer guidance is added on the rows whose step index (found from their
    timestep) the pipeline's loop would add it at.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache or a callback asking for more than the latents.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sd3_flux import tiny_sd3
        >>> pipe = tiny_sd3()
        >>> a = call_arguments(
        ...     pipe, "a cat", height=16, width=16, num_inference_steps=5)
        >>> p = prepare_sd3(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation  # guidance: two rows per evaluation
        (torch.Size([1, 4, 8, 8]), 2)
    """
    check_stateless(pipe, a)
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"], a["prompt_2"], a["prompt_3"], height, width,
        negative_prompt=a["negative_prompt"], negative_prompt_2=a["negative_prompt_2"],
        negative_prompt_3=a["negative_prompt_3"], prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
        callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
        max_sequence_length=a["max_sequence_length"],
    )  # fmt: skip
    pipe._guidance_scale = a["guidance_scale"]
    pipe._skip_layer_guidance_scale = a["skip_layer_guidance_scale"]
    pipe._clip_skip, pipe._joint_attention_kwargs = a["clip_skip"], a["joint_attention_kwargs"]
    pipe._interrupt = False
    device, cfg = pipe._execution_device, pipe.do_classifier_free_guidance
    cond, uncond, pooled, upooled = _encode(pipe, a, device, cfg)
    images = images_of(a, cond)
    dtype = torch.cat([uncond, cond]).dtype if cfg else cond.dtype
    latents = pipe.prepare_latents(
        images, pipe.transformer.config.in_channels, height, width, dtype, device,
        a["generator"], a["latents"],
    )  # fmt: skip
    mu = _shift(pipe, latents, a["mu"])
    timesteps, n, steps, options = grid(pipe, a["num_inference_steps"], device, a["sigmas"], mu)
    pipe._num_timesteps = len(timesteps)
    skip = _skip_steps(a, timesteps, n, cfg)
    model = _Model(a, cond, uncond, pooled, upooled, timesteps, skip, cfg)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x),
        generator=a["generator"],
        rows_per_evaluation=(3 if skip is not None else 2) if cfg else 1,
        grid_options=options,
    )


def _encode(
    pipe: Any, a: Mapping[str, Any], device: torch.device, cfg: bool
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """The pipeline's ``encode_prompt``: (cond, uncond, pooled, uncond pooled)."""
    attention = a["joint_attention_kwargs"]
    return pipe.encode_prompt(
        prompt=a["prompt"], prompt_2=a["prompt_2"], prompt_3=a["prompt_3"],
        negative_prompt=a["negative_prompt"], negative_prompt_2=a["negative_prompt_2"],
        negative_prompt_3=a["negative_prompt_3"], do_classifier_free_guidance=cfg,
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        pooled_prompt_embeds=a["pooled_prompt_embeds"],
        negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"], device=device,
        clip_skip=a["clip_skip"], num_images_per_prompt=a["num_images_per_prompt"],
        max_sequence_length=a["max_sequence_length"],
        lora_scale=None if attention is None else attention.get("scale", None),
    )  # fmt: skip


class _Model:
    """The batched SD3 transformer call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        a: Mapping[str, Any],
        cond: Tensor,
        uncond: Tensor | None,
        pooled: Tensor,
        upooled: Tensor | None,
        timesteps: Tensor,
        skip: Tensor | None,
        cfg: bool,
    ):
        self.embeds = {"c": cond, "u": uncond, "pc": pooled, "pu": upooled}
        self.timesteps, self.skip, self.cfg = timesteps, skip, cfg
        self.scale, self.skip_scale = a["guidance_scale"], a["skip_layer_guidance_scale"]
        self.layers: Sequence[int] | None = a["skip_guidance_layers"]
        self.attention = a["joint_attention_kwargs"]

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model, e = on(dev, transformer), on(dev, self.embeds)
        loop_t, skip = on(dev, self.timesteps), on(dev, self.skip)

        def run(x: Tensor, t: Tensor, emb: Tensor, pooled: Tensor, **extra: Any) -> Tensor:
            return model(
                hidden_states=x, timestep=t, encoder_hidden_states=emb,
                pooled_projections=pooled, joint_attention_kwargs=self.attention,
                return_dict=False, **extra,
            )[0]  # fmt: skip

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], e["c"].shape[0], x.device)
            if not self.cfg:
                return run(x, t, e["c"][s], e["pc"][s])
            both = torch.cat([e["u"][s], e["c"][s]]), torch.cat([e["pu"][s], e["pc"][s]])
            out = run(torch.cat([x, x]), torch.cat([t, t]), *both)
            pred = guided(out, self.scale)
            if skip is None:
                return pred
            rows = skip[_step_of(t, loop_t)]
            if rows.any():
                text = out.chunk(2)[1][rows]
                skipped = run(x[rows], t[rows], e["c"][s][rows], e["pc"][s][rows],
                              skip_layers=self.layers)  # fmt: skip
                pred[rows] = pred[rows] + (text - skipped) * self.skip_scale
            return pred

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor) -> Any:
    """The final latent to the pipeline's output: unscaled, shifted, decoded."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_output import (
        StableDiffusion3PipelineOutput,
    )

    check_unchanged(pipe, a["guidance_scale"])
    if a["output_type"] == "latent":
        image = latents
    else:
        config = pipe.vae.config
        latents = (latents / config.scaling_factor) + config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    if not a["return_dict"]:
        return (image,)
    return StableDiffusion3PipelineOutput(images=image)
