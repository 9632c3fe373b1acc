"""``CogView4Pipeline`` (and subclasses that keep its ``__call__``).

Flow matching on unpacked latents ``(B, C, H, W)`` — float32 unless given ``latents`` of
another dtype, as the pipeline keeps them — over the pipeline's own grid: integer
timesteps ``linspace(1000, 1, N)`` (or the call's), sigmas ``timesteps / 1000`` (or the
call's) and the linear shift ``mu`` from the image's sequence length. Each row carries its
sample's GLM embedding (or given ``prompt_embeds``) and its size conditions (original
size, target size, crop coordinates); guidance runs the negative prompt's rows beside
them. ``callback_on_step_end`` is refused: the pipeline passes it a sigma, not a timestep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.pipelines.sd3 import check_stateless, check_unchanged, images_of
from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = ["prepare_cogview4"]


def prepare_cogview4(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``CogView4Pipeline`` call: prompts, latents, size conditions, grid.

    The pipeline's own ``check_inputs``, ``encode_prompt``, ``prepare_latents``,
    ``calculate_shift`` and ``retrieve_timesteps`` (with custom ``timesteps`` and
    ``sigmas``) run as in its ``__call__``.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache or a callback asking for more than the latents.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_image_audio import masked_prompt_embeds, tiny_cogview4
        >>> pipe = tiny_cogview4()
        >>> text = masked_prompt_embeds(["a cat"], width=16)["prompt_embeds"]
        >>> a = call_arguments(pipe, prompt_embeds=text, negative_prompt_embeds=0 * text,
        ...     height=16, width=16, num_inference_steps=4)
        >>> p = prepare_cogview4(pipe, a)
        >>> p.latents.shape, p.latents.dtype, sorted(p.grid_options)
        (torch.Size([1, 4, 8, 8]), torch.float32, ['mu', 'sigmas', 'timesteps'])
    """
    from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift, retrieve_timesteps

    check_stateless(pipe, a)
    default = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    height, width = a["height"] or default, a["width"] or default
    original = a["original_size"] or (height, width)
    pipe.check_inputs(
        a["prompt"], height, width, a["negative_prompt"],
        a["callback_on_step_end_tensor_inputs"], a["prompt_embeds"], a["negative_prompt_embeds"],
    )  # fmt: skip
    pipe._guidance_scale, pipe._attention_kwargs = a["guidance_scale"], a["attention_kwargs"]
    pipe._current_timestep, pipe._interrupt = None, False
    device, cfg = pipe._execution_device, pipe.do_classifier_free_guidance
    cond, uncond = pipe.encode_prompt(
        a["prompt"], a["negative_prompt"], cfg, num_images_per_prompt=a["num_images_per_prompt"],
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        max_sequence_length=a["max_sequence_length"], device=device,
    )  # fmt: skip
    images = images_of(a, cond)
    latents = pipe.prepare_latents(
        images, pipe.transformer.config.in_channels, height, width, torch.float32, device,
        a["generator"], a["latents"],
    )  # fmt: skip
    sizes = [original, (height, width), a["crops_coords_top_left"]]
    sizes = [torch.tensor([s], dtype=cond.dtype, device=device).repeat(images, 1) for s in sizes]
    config, n = pipe.scheduler.config, a["num_inference_steps"]
    patch = pipe.transformer.config.patch_size
    seq_len = ((height // pipe.vae_scale_factor) * (width // pipe.vae_scale_factor)) // patch**2
    given = a["timesteps"]
    steps = np.linspace(config.num_train_timesteps, 1.0, n) if given is None else np.array(given)
    steps = steps.astype(np.int64).astype(np.float32)
    sigmas = steps / config.num_train_timesteps if a["sigmas"] is None else a["sigmas"]
    mu = calculate_shift(
        seq_len, config.get("base_image_seq_len", 256), config.get("base_shift", 0.25),
        config.get("max_shift", 0.75),
    )  # fmt: skip
    timesteps, _ = retrieve_timesteps(pipe.scheduler, n, device, steps, sigmas, mu=mu)
    pipe._num_timesteps = len(timesteps)
    model = _Model(a, cond, uncond if cfg else None, sizes)
    return Prepared(
        latents=latents,
        num_inference_steps=len(timesteps),
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        grid_options={"timesteps": steps, "sigmas": sigmas, "mu": mu},
    )


class _Model:
    """The batched CogView4 transformer call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self, a: Mapping[str, Any], cond: Tensor, uncond: Tensor | None, sizes: list[Tensor]
    ):
        self.text, self.sizes = {"c": cond, "u": uncond}, sizes
        self.scale, self.attention = a["guidance_scale"], a["attention_kwargs"]

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model, text, sizes = on(dev, transformer), on(dev, self.text), on(dev, self.sizes)
        dtype = transformer.dtype

        def run(x: Tensor, t: Tensor, emb: Tensor, s: Tensor) -> Tensor:
            return model(
                hidden_states=x.to(dtype), encoder_hidden_states=emb, timestep=t,
                original_size=sizes[0][s], target_size=sizes[1][s], crop_coords=sizes[2][s],
                attention_kwargs=self.attention, return_dict=False,
            )[0]  # fmt: skip

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], text["c"].shape[0], x.device)
            if text["u"] is None:
                return run(x, t, text["c"][s], s)
            cond, uncond = text["c"][s], text["u"][s]
            if cond.shape[1:] == uncond.shape[1:]:  # one call on [negative rows, prompt rows]
                both = torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond])
                return guided(run(*both, torch.cat([s, s])), self.scale)
            negative = run(x, t, uncond, s)
            return negative + self.scale * (run(x, t, cond, s) - negative)

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor) -> Any:
    """The final latent to the pipeline's output: unscaled, decoded, post-processed."""
    from diffusers.pipelines.cogview4.pipeline_output import CogView4PipelineOutput

    check_unchanged(pipe, a["guidance_scale"])
    if a["output_type"] == "latent":
        image = latents
    else:
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        image = pipe.vae.decode(latents, return_dict=False, generator=a["generator"])[0]
    image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    return CogView4PipelineOutput(images=image) if a["return_dict"] else (image,)
