"""``StableAudioPipeline`` (and subclasses that keep its ``__call__``): latent audio.

A DiT over 1-D latents ``(B, C, L)`` conditioned on the projected T5 text (or given
``prompt_embeds`` with their attention mask) joined with the start and end seconds'
embeddings, and on a global state of those seconds. The conditioning is assembled as the
pipeline assembles it — the negative half from the negative prompt, or zeros — and each
row takes its sample's halves; the rotary embedding is shared. The scheduler is the
pipeline's (``EDMDPMSolverMultistepScheduler``: the model input scaled, ``eta`` passed);
Stable Audio Open's released ``CosineDPMSolverMultistepScheduler`` is refused as
unsupported. The finish decodes with the Oobleck VAE and cuts the waveform to
``audio_start_in_s … audio_end_in_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.spec import Prepared, guided, on, sample_rows

__all__ = ["prepare_stable_audio"]


def prepare_stable_audio(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableAudioPipeline`` call: text and duration conditioning, latents.

    The pipeline's own ``check_inputs``, ``encode_prompt``, ``encode_duration``,
    ``set_timesteps`` and ``prepare_latents`` (with ``initial_audio_waveforms``) run as in
    its ``__call__``, and its conditioning tensors are built by its own recipe.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        ValueError: a requested length beyond the model's (as the pipeline).

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_image_audio import tiny_stable_audio
        >>> pipe = tiny_stable_audio()
        >>> a = call_arguments(pipe, prompt_embeds=torch.randn(2, 5, 32), num_inference_steps=4)
        >>> p = prepare_stable_audio(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation
        (torch.Size([2, 3, 8]), 2)
    """
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    start, end, waveform = _span(pipe, a)
    pipe.check_inputs(
        a["prompt"], a["audio_start_in_s"], end, a["callback_steps"], a["negative_prompt"],
        a["prompt_embeds"], a["negative_prompt_embeds"], a["attention_mask"],
        a["negative_attention_mask"], a["initial_audio_waveforms"],
        a["initial_audio_sampling_rate"],
    )  # fmt: skip
    prompts = _prompts(a)
    device, cfg = pipe._execution_device, a["guidance_scale"] > 1.0
    text, duration = _conditioning(pipe, a, prompts, end, device, cfg)
    per_prompt = a["num_waveforms_per_prompt"]
    pipe.scheduler.set_timesteps(a["num_inference_steps"], device=device)
    latents = pipe.prepare_latents(
        prompts * per_prompt, pipe.transformer.config.in_channels,
        int(pipe.transformer.config.sample_size), text.dtype, device, a["generator"],
        a["latents"], a["initial_audio_waveforms"], per_prompt,
        audio_channels=pipe.vae.config.audio_channels,
    )  # fmt: skip
    rotary = get_1d_rotary_pos_embed(
        pipe.rotary_embed_dim, latents.shape[2] + duration.shape[1], use_real=True,
        repeat_interleave_real=False,
    )  # fmt: skip
    model = _Model(text, duration, rotary, a["guidance_scale"] if cfg else None)
    return Prepared(
        latents=latents,
        num_inference_steps=a["num_inference_steps"],
        timesteps=pipe.scheduler.timesteps,
        denoiser=lambda dev: model.on(pipe.transformer, dev),
        device=pipe.transformer.device,
        finish=lambda x: _finish(pipe, a, x, start, waveform),
        generator=a["generator"],
        rows_per_evaluation=2 if cfg else 1,
        step_options={"eta": a["eta"]},
    )


def _span(pipe: Any, a: Mapping[str, Any]) -> tuple[int, float, int]:
    """``(first sample, end in seconds, end sample)`` of the waveform, checked as the pipeline."""
    rate = pipe.vae.config.sampling_rate
    longest = pipe.transformer.config.sample_size * pipe.vae.hop_length / rate
    start, end = a["audio_start_in_s"], a["audio_end_in_s"]
    end = longest if end is None else end
    if end - start > longest:
        raise ValueError(
            f"The total audio length requested ({end - start}s) is longer than the model maximum "
            f"possible length ({longest}). Make sure that 'audio_end_in_s-audio_start_in_s<="
            f"{longest}'."
        )
    return int(start * rate), end, int(end * rate)


def _prompts(a: Mapping[str, Any]) -> int:
    """The call's prompts: 1 for a string, a list's length, else ``prompt_embeds``' rows."""
    prompt = a["prompt"]
    if prompt is None:
        return a["prompt_embeds"].shape[0]
    return 1 if isinstance(prompt, str) else len(prompt)


def _conditioning(
    pipe: Any, a: Mapping[str, Any], prompts: int, end: float, device: torch.device, cfg: bool
) -> tuple[Tensor, Tensor]:
    """The loop's text-and-duration and duration states, as the pipeline builds them.

    With guidance, rows ``[negative …, positive …]``, each repeated per waveform.
    """
    text = pipe.encode_prompt(
        a["prompt"], device, cfg, a["negative_prompt"], a["prompt_embeds"],
        a["negative_prompt_embeds"], a["attention_mask"], a["negative_attention_mask"],
    )  # fmt: skip
    negative = a["negative_prompt"] is not None or a["negative_prompt_embeds"] is not None
    start_states, end_states = pipe.encode_duration(
        a["audio_start_in_s"], end, device, cfg and negative, prompts
    )
    joined = torch.cat([text, start_states, end_states], dim=1)
    duration = torch.cat([start_states, end_states], dim=2)
    if cfg and not negative:  # the pipeline's negative half: zeros
        joined = torch.cat([torch.zeros_like(joined), joined], dim=0)
        duration = torch.cat([duration, duration], dim=0)
    per_prompt = a["num_waveforms_per_prompt"]
    rows, length, width = joined.shape
    joined = joined.repeat(1, per_prompt, 1).view(rows * per_prompt, length, width)
    duration = duration.repeat(1, per_prompt, 1)
    return joined, duration.view(rows * per_prompt, -1, duration.shape[-1])


class _Model:
    """The batched Stable Audio DiT call of rows ``(step, sample)``, guidance inside."""

    def __init__(self, text: Tensor, duration: Tensor, rotary: Any, scale: float | None):
        self.states = {"text": text, "duration": duration}
        self.rotary, self.scale = rotary, scale

    def on(self, transformer: Any, dev: torch.device | None) -> Any:
        """The call ``(x, t, samples) -> model output`` with the transformer on ``dev``."""
        model, states, rotary = on(dev, transformer), on(dev, self.states), on(dev, self.rotary)
        text, duration = states["text"], states["duration"]
        images = text.shape[0] // (2 if self.scale is not None else 1)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            s = sample_rows(samples, x.shape[0], images, x.device)
            if self.scale is not None:  # the pipeline's halves: [negative, positive]
                x, t, s = torch.cat([x, x]), torch.cat([t, t]), torch.cat([s, s + images])
            out = model(
                x, t, encoder_hidden_states=text[s], global_hidden_states=duration[s],
                rotary_embedding=rotary, return_dict=False,
            )[0]  # fmt: skip
            return out if self.scale is None else guided(out, self.scale)

        return call


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor, start: int, end: int) -> Any:
    """Decode and cut the waveform: the pipeline's output (latents always in an output)."""
    from diffusers.pipelines.pipeline_utils import AudioPipelineOutput

    if a["output_type"] == "latent":
        return AudioPipelineOutput(audios=latents)
    audio = pipe.vae.decode(latents).sample[:, :, start:end]
    if a["output_type"] == "np":
        audio = audio.cpu().float().numpy()
    return AudioPipelineOutput(audios=audio) if a["return_dict"] else (audio,)
