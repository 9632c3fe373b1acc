"""``QwenImagePipeline`` (and subclasses that keep its ``__call__``).

Flow matching on packed latents ``(B, tokens, 4 C)`` over Flux's grid (``sigmas =
linspace(1, 1/N, N)``, ``mu`` from the sequence length); the transformer gets ``t / 1000``,
the image's shape (for its RoPE), each row's Qwen-VL text embedding and mask (or given
``prompt_embeds`` and ``prompt_embeds_mask``) and, for guidance-distilled models, the
guidance embedding. True classifier-free guidance (``true_cfg_scale`` with a negative
prompt) is normalized: the guided output is rescaled to the conditional output's norm
over the channels. The finish unpacks and undoes the VAE's per-channel mean and std.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.lumina2 import rescaled
from picard.adapters.pipelines.sd3 import check_stateless, images_of, shifted_grid
from picard.adapters.pipelines.spec import Prepared, on, sample_rows

__all__ = ["prepare_qwenimage"]


def prepare_qwenimage(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``QwenImagePipeline`` call: prompts and masks, packed latents, grid.

    The pipeline's own ``check_inputs``, ``encode_prompt`` (the negative prompt's too with
    true guidance), ``prepare_latents`` and ``retrieve_timesteps`` run as in its
    ``__call__``.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: a transformer cache or a callback asking for more than the latents.
        ValueError: a guidance-distilled model without ``guidance_scale`` (as the pipeline).

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_image_audio import qwen_prompt_embeds, tiny_qwenimage
        >>> pipe = tiny_qwenimage()
        >>> a = call_arguments(pipe, **qwen_prompt_embeds(["a cat"]), height=32, width=32,
        ...     num_inference_steps=4)
        >>> p = prepare_qwenimage(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation  # 16 tokens of 2x2 patches of 4 channels
        (torch.Size([1, 16, 16]), 1)
    """
    check_stateless(pipe, a)
    height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
    width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(
        a["prompt"], height, width, negative_prompt=a["negative_prompt"],
        prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
        prompt_embeds_mask=a["prompt_embeds_mask"],
        negative_prompt_embeds_mask=a["negative_prompt_embeds_mask"],
        callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
        max_sequence_length=a["max_sequence_length"],
    )  # fmt: skip
    pipe._guidance_scale, pipe._attention_kwargs = a["guidance_scale"], a["attention_kwargs"]
    pipe._current_timestep, pipe._interrupt = None, False
    device = pipe._execution_device
    has_negative = a["negative_prompt"] is not None or a["negative_prompt_embeds"] is not None
    true_cfg = a["true_cfg_scale"] > 1 and has_negative
    cond = _encode(pipe, a, device, "")
    negative = _encode(pipe, a, device, "negative_") if true_cfg else None
    latents = pipe.prepare_latents(
        images_of(a, cond[0]), pipe.transformer.config.in_channels // 4, height, width,
        cond[0].dtype, device, a["generator"], a["latents"],
    )  # fmt: skip
    shape = (1, height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2)
    timesteps, _, steps, options = shifted_grid(pipe, a, latents.shape[1], device)
    pipe._num_timesteps = len(timesteps)
    guidance_embeds = pipe.transformer.config.guidance_embeds
    if guidance_embeds and a["guidance_scale"] is None:
        raise ValueError("guidance_scale is required for guidance-distilled model.")
    pipe.scheduler.set_begin_index(0)
    model = _Model(a, cond, negative, shape, guidance_embeds)
    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x, height, width),
        generator=a["generator"],
        rows_per_evaluation=2 if true_cfg else 1,
        grid_options=options,
    )


def _encode(
    pipe: Any, a: Mapping[str, Any], device: torch.device, kind: str
) -> tuple[Tensor, Tensor | None]:
    """The pipeline's ``encode_prompt`` of the prompt (``kind=""``) or the negative one."""
    return pipe.encode_prompt(
        prompt=a[f"{kind}prompt"], prompt_embeds=a[f"{kind}prompt_embeds"],
        prompt_embeds_mask=a[f"{kind}prompt_embeds_mask"], device=device,
        num_images_per_prompt=a["num_images_per_prompt"],
        max_sequence_length=a["max_sequence_length"],
    )  # fmt: skip


class _Model:
    """The batched QwenImage transformer call of rows ``(step, sample)``, guidance inside."""

    def __init__(
        self,
        a: Mapping[str, Any],
        cond: tuple[Tensor, Tensor | None],
        negative: tuple[Tensor, Tensor | None] | None,
        shape: tuple[int, int, int],
        guidance_embeds: bool,
    ):
        self.cond, self.negative, self.shape = cond, negative, shape
        self.true_scale, self.guidance = a["true_cfg_scale"], a["guidance_scale"]
        self.guidance_embeds = guidance_embeds
        self.attention = {} if a["attention_kwargs"] is None else a["attention_kwargs"]

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> velocity`` with the transformer on ``dev``."""
        model = on(dev, transformer)
        cond, negative = on(dev, self.cond), on(dev, self.negative)

        def run(x: Tensor, t: Tensor, emb: Tensor, mask: Tensor | None) -> Tensor:
            guidance = None
            if self.guidance_embeds:  # the pipeline's per-row guidance, in float32
                guidance = torch.full([len(x)], self.guidance, device=x.device, dtype=torch.float32)
            return model(
                hidden_states=x, timestep=t, guidance=guidance, encoder_hidden_states_mask=mask,
                encoder_hidden_states=emb, img_shapes=[[self.shape]] * len(x),
                attention_kwargs=self.attention, return_dict=False,
            )[0]  # fmt: skip

        def pick(text: tuple[Tensor, Tensor | None], s: Tensor) -> tuple[Tensor, Tensor | None]:
            return text[0][s], None if text[1] is None else text[1][s]

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], cond[0].shape[0], x.device)
            t = t.to(x.dtype) / 1000  # as the pipeline passes it
            if negative is None:
                return run(x, t, *pick(cond, s))
            (emb, mask), (uemb, umask) = pick(cond, s), pick(negative, s)
            if emb.shape[1:] == uemb.shape[1:] and (mask is None) == (umask is None):
                both = None if mask is None else torch.cat([mask, umask])
                out = run(torch.cat([x, x]), torch.cat([t, t]), torch.cat([emb, uemb]), both)
                pred, uncond = out.chunk(2)
            else:
                pred, uncond = run(x, t, emb, mask), run(x, t, uemb, umask)
            return rescaled(uncond + self.true_scale * (pred - uncond), pred)

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor, height: int, width: int) -> Any:
    """The final packed latent to the pipeline's output: unpacked, de-normalized, decoded."""
    from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput

    if pipe._interrupt:
        raise RuntimeError(
            f"{type(pipe).__name__}: the interrupt flag was set during the loop "
            "(callback_on_step_end?); picard evaluates steps in parallel and cannot follow it"
        )
    if a["output_type"] == "latent":
        image = latents
    else:
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents.to(pipe.vae.dtype)
        config = pipe.vae.config
        view = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(view).to(latents.device, latents.dtype)
        std = 1.0 / torch.tensor(config.latents_std).view(view).to(latents.device, latents.dtype)
        latents = latents / std + mean
        image = pipe.vae.decode(latents, return_dict=False)[0][:, :, 0]
        image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
    return QwenImagePipelineOutput(images=image) if a["return_dict"] else (image,)
