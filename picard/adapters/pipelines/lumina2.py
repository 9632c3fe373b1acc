"""``Lumina2Pipeline`` (and subclasses that keep its ``__call__``): Lumina-Image 2.0.

Flow matching on unpacked latents ``(B, C, H, W)``, Flux's grid (``sigmas =
linspace(1, 1/N, N)``, ``mu`` from ``calculate_shift`` — of ``latents.shape[1]``, as the
pipeline computes it). Lumina's time runs the other way: the model gets ``1 - t / 1000``
and its output is negated before the step. Guidance is normalization-based
(``cfg_normalization``: the guided output rescaled to the conditional output's norm over
the last dimension) and truncated (``cfg_trunc_ratio``: steps with ``(i + 1) / N`` above it
run without guidance), each row by its step index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import (
    check_stateless,
    check_unchanged,
    images_of,
    shifted_grid,
)
from picard.adapters.pipelines.spec import Prepared, on, sample_rows

__all__ = ["prepare_lumina2", "rescaled", "step_index"]


def rescaled(guided: Tensor, cond: Tensor) -> Tensor:
    """Normalization-based guidance: ``guided`` rescaled to ``cond``'s norm over the last dim.

    As Lumina 2 (``cfg_normalization``) and QwenImage (true guidance) rescale.

    Args:
        guided: the guided model outputs.
        cond: the conditional outputs.

    Returns:
        ``guided * |cond| / |guided|``, norms over the last dimension.

    Example:
        >>> rescaled(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]]))
        tensor([[0.6000, 0.8000]])
    """
    ratio = torch.norm(cond, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True)
    return guided * ratio


def step_index(t: Tensor, timesteps: Tensor) -> Tensor:
    """Each row's step index: the position of the loop's timestep nearest the row's.

    Args:
        t: the rows' timesteps.
        timesteps: the loop's timesteps (distinct).

    Returns:
        ``(rows,)`` long indices.

    Example:
        >>> step_index(torch.tensor([500.0, 1000.0]), torch.tensor([1000.0, 750.0, 500.0]))
        tensor([2, 0])
    """
    loop = timesteps.to(t.device, torch.float64)
    return (loop[None] - t.double()[:, None]).abs().argmin(1)


def prepare_lumina2(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``Lumina2Pipeline`` call: prompts and masks, latents, grid, guidance.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (with ``system_prompt``),
    ``prepare_latents`` and ``retrieve_timesteps`` run as in its ``__call__``.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache or a callback asking for more than the latents.
        ValueError: guidance truncation on a grid that repeats a timestep (the step index
            of a row would be ambiguous).

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_image_audio import masked_prompt_embeds, tiny_lumina2
        >>> pipe = tiny_lumina2()
        >>> a = call_arguments(pipe, **masked_prompt_embeds(["a cat"]),
        ...     **masked_prompt_embeds([""], prefix="negative_"), height=64, width=64,
        ...     num_inference_steps=4)
        >>> p = prepare_lumina2(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation
        (torch.Size([1, 4, 8, 8]), 2)
    """
    check_stateless(pipe, a)
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe._guidance_scale, pipe._attention_kwargs = a["guidance_scale"], a["attention_kwargs"]
    pipe.check_inputs(
        a["prompt"], height, width, a["negative_prompt"], prompt_embeds=a["prompt_embeds"],
        negative_prompt_embeds=a["negative_prompt_embeds"],
        prompt_attention_mask=a["prompt_attention_mask"],
        negative_prompt_attention_mask=a["negative_prompt_attention_mask"],
        max_sequence_length=a["max_sequence_length"],
        callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
    )  # fmt: skip
    pipe._interrupt = False  # the pipeline never sets it; check_unchanged reads it
    device, cfg = pipe._execution_device, pipe.do_classifier_free_guidance
    cond, mask, uncond, umask = pipe.encode_prompt(
        a["prompt"], cfg, negative_prompt=a["negative_prompt"],
        num_images_per_prompt=a["num_images_per_prompt"], device=device,
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        prompt_attention_mask=a["prompt_attention_mask"],
        negative_prompt_attention_mask=a["negative_prompt_attention_mask"],
        max_sequence_length=a["max_sequence_length"], system_prompt=a["system_prompt"],
    )  # fmt: skip
    images = images_of(a, cond)
    latents = pipe.prepare_latents(
        images, pipe.transformer.config.in_channels, height, width, cond.dtype, device,
        a["generator"], a["latents"],
    )  # fmt: skip
    timesteps, _, steps, options = shifted_grid(pipe, a, latents.shape[1], device)
    pipe._num_timesteps = len(timesteps)
    pipe.scheduler.set_begin_index(0)
    guided_steps = None
    if cfg:
        n = len(timesteps)
        guided_steps = torch.tensor([not (i + 1) / n > a["cfg_trunc_ratio"] for i in range(n)])
        if not guided_steps.all() and torch.unique(timesteps).numel() != n:
            raise ValueError(
                "cfg_trunc_ratio needs distinct timesteps (it applies by step index); this grid "
                "repeats one"
            )
    total = pipe.scheduler.config.num_train_timesteps
    model = _Model(a, (cond, mask), (uncond, umask), timesteps, guided_steps, total)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        grid_options=options,
    )


class _Model:
    """The batched Lumina 2 transformer call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        a: Mapping[str, Any],
        cond: tuple[Tensor, Tensor],
        uncond: tuple[Tensor | None, Tensor | None],
        timesteps: Tensor,
        guided_steps: Tensor | None,
        total: int,
    ):
        self.total = total  # the scheduler's num_train_timesteps
        self.text = {"c": cond[0], "cm": cond[1], "u": uncond[0], "um": uncond[1]}
        self.timesteps, self.guided_steps = timesteps, guided_steps
        self.scale, self.normalize = a["guidance_scale"], a["cfg_normalization"]
        self.attention = a["attention_kwargs"]

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model, e = on(dev, transformer), on(dev, self.text)
        loop_t, guided_steps = on(dev, self.timesteps), on(dev, self.guided_steps)
        total = self.total

        def run(x: Tensor, t: Tensor, emb: Tensor, mask: Tensor) -> Tensor:
            return model(
                hidden_states=x, timestep=1 - t / total, encoder_hidden_states=emb,
                encoder_attention_mask=mask, return_dict=False, attention_kwargs=self.attention,
            )[0]  # fmt: skip

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], e["c"].shape[0], x.device)
            emb, mask = e["c"][s], e["cm"][s]
            if guided_steps is None:
                return -run(x, t, emb, mask)
            rows = guided_steps[step_index(t, loop_t)]
            if not rows.any():
                return -run(x, t, emb, mask)
            uemb, umask = e["u"][s][rows], e["um"][s][rows]
            if emb.shape[1:] == uemb.shape[1:]:  # one call on [prompt rows, negative rows]
                out = run(torch.cat([x, x[rows]]), torch.cat([t, t[rows]]),
                          torch.cat([emb, uemb]), torch.cat([mask, umask]))  # fmt: skip
                pred, negative = out[: len(x)], out[len(x) :]
            else:
                pred, negative = run(x, t, emb, mask), run(x[rows], t[rows], uemb, umask)
            text = pred[rows]
            mixed = negative + self.scale * (text - negative)
            if self.normalize:
                mixed = rescaled(mixed, text)
            pred = pred.clone()
            pred[rows] = mixed
            return -pred

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor) -> Any:
    """The final latent to the pipeline's output: unscaled, shifted, decoded."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    check_unchanged(pipe, a["guidance_scale"])
    if a["output_type"] == "latent":
        image = latents
    else:
        config = pipe.vae.config
        latents = (latents / config.scaling_factor) + config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    return ImagePipelineOutput(images=image) if a["return_dict"] else (image,)
