"""diffusers pipelines with their denoising loop solved by picard.

Each supported pipeline keeps everything but its loop: the pipeline's own methods
prepare the prompt embeddings and the starting latent (drawing it from the user's
generator exactly as the pipeline does), and decode and post-process the result; the loop
``for t in timesteps: latents = scheduler.step(model(latents, t), t, latents)`` becomes
one :func:`picard.solve` of the problem :func:`~picard.adapters.diffusers.from_scheduler`
builds from the pipeline's scheduler.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from picard.adapters.rule import DiffusionProblem
from picard.adapters.schedulers import from_scheduler
from picard.options import Options
from picard.rows import Replicable
from picard.solution import Stats
from picard.solver import solve_with

__all__ = ["PIPELINES", "ParallelPipeline", "Runner", "parallelize"]


def parallelize(pipe: Any, **options: Any) -> ParallelPipeline:
    """Wrap ``pipe`` so that calling it solves its denoising loop in parallel sweeps.

    Args:
        pipe: a diffusers pipeline; see :data:`PIPELINES`. Any supported scheduler may be
            set on it (:data:`picard.adapters.schedulers.SCHEDULERS`).
        window: steps per sweep (``None``: all the steps). Each model call then gets
            ``window × images`` rows (twice that with classifier-free guidance).
        tol: tolerance: ``None`` (default) is 0.01 relative to each latent's RMS, which
            bounds the final latent's relative error to about that for every scheduler
            (see :func:`picard.solve`'s ``relative``); 0 gives the sequential sample to
            float rounding. ``relative=False`` (in ``options``) selects ParaDiGMS's test
            relative to each step's noise std, whose default is 0.1.
        max_iters: sweep budget (default: the number of steps, which always suffices).
        **options: :func:`picard.solve`'s sweep options: ``accelerate``, ``predict``,
            ``max_rows`` (a row budget per model call instead of a window),
            ``per_sample`` (each image slides its own window; prompts follow their rows),
            ``relative``, ``verify`` (an error estimate in ``stats``).

    Returns:
        A callable taking the pipeline's own arguments and returning its own output;
        ``.stats`` holds the :class:`picard.Stats` of its last call.

    Example:
        >>> import torch
        >>> from picard.models.tiny import tiny_unet_pipeline
        >>> fast = parallelize(tiny_unet_pipeline("ddpm"))
        >>> out = fast(num_inference_steps=50, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].size, fast.stats.iterations < 50
        ((8, 8), True)
    """
    return ParallelPipeline(pipe, **options)


class ParallelPipeline:
    """A pipeline whose calls run picard; see :func:`parallelize`.

    Args:
        pipe: the pipeline to wrap.
        window: as for :func:`parallelize`.
        tol: as for :func:`parallelize`.
        max_iters: as for :func:`parallelize`.
        **options: as for :func:`parallelize`.

    Attributes:
        pipe: the wrapped pipeline (its components are used as they are).
        stats: the :class:`picard.Stats` of the last call (``None`` before the first).

    Example:
        >>> from picard.models.tiny import tiny_unet_pipeline
        >>> fast = ParallelPipeline(tiny_unet_pipeline("ddim"), window=4, tol=0.01, max_iters=None)
        >>> fast(num_inference_steps=8, output_type="pt").images.shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, pipe: Any, **options: Any):
        name = type(pipe).__name__
        if name not in PIPELINES:
            raise TypeError(f"pipeline {name} is not supported; supported: {', '.join(PIPELINES)}")
        self.pipe = pipe
        self.options = Options.of(**options)
        if self.options.init is not None:
            raise ValueError("init (a warm start) is not supported by pipelines; use solve")
        self.stats: Stats | None = None
        self._run = PIPELINES[name].run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the pipeline with its own arguments; returns its own output type."""
        with torch.no_grad():  # as the pipelines' own __call__
            return self._run(self, *args, **kwargs)

    def _solve(self, problem: DiffusionProblem, latents: Tensor) -> Tensor:
        sol = solve_with(problem, latents, self.options)
        self.stats = sol.stats
        return sol.final

    def _problem(
        self,
        num_inference_steps: int,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        generator: Any,
        *,
        eta: float | None = None,
        scale_model_input: bool = True,
        rows_per_evaluation: int = 1,
        **options: Any,
    ) -> DiffusionProblem:
        """The problem of the pipeline's scheduler, with the step options it accepts."""
        accepted = inspect.signature(self.pipe.scheduler.step).parameters
        if eta is not None and "eta" in accepted:  # as the pipelines pass it
            options["eta"] = eta
        return from_scheduler(
            self.pipe.scheduler,
            denoiser,
            num_inference_steps,
            generator=generator,
            rows_per_evaluation=rows_per_evaluation,
            scale_model_input=scale_model_input,
            **options,
        )


def _unconditional(ddim: bool) -> Callable[..., Any]:
    """The runner of ``DDPMPipeline`` (``ddim=False``) or ``DDIMPipeline``."""

    def run(
        self: ParallelPipeline,
        batch_size: int = 1,
        generator: Any = None,
        eta: float = 0.0,
        num_inference_steps: int = 50 if ddim else 1000,
        use_clipped_model_output: bool | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
    ) -> Any:
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipe
        size = pipe.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, pipe.unet.config.in_channels, *size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but batch_size is "
                f"{batch_size}; give one per image"
            )
        device = pipe._execution_device
        image = randn_tensor(shape, generator=generator, device=device, dtype=pipe.unet.dtype)
        pipe.scheduler.set_timesteps(num_inference_steps)  # as the pipeline does

        def make(dev: torch.device | None) -> Callable[[Tensor, Tensor], Tensor]:
            unet = pipe.unet if dev is None else copy.deepcopy(pipe.unet).to(dev)
            return lambda x, t: unet(x, t).sample

        denoiser = Replicable(make, pipe.unet.device)

        options: dict[str, Any] = {}
        if ddim:  # DDIMPipeline passes these to the scheduler's step, whatever it is
            options = {"eta": eta, "use_clipped_model_output": bool(use_clipped_model_output)}
        # These pipelines neither scale the latent by init_noise_sigma nor call
        # scale_model_input; with a sigma-based scheduler set, neither does picard.
        problem = self._problem(
            num_inference_steps, denoiser, generator, scale_model_input=False, **options
        )
        image = self._solve(problem, image)
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = pipe.numpy_to_pil(image)
        pipe.maybe_free_model_hooks()
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    return run


_SD_UNSUPPORTED = (
    "timesteps",
    "sigmas",
    "ip_adapter_image",
    "ip_adapter_image_embeds",
    "callback_on_step_end",
    "callback",
    "callback_steps",
)


def _stable_diffusion(
    self: ParallelPipeline,
    prompt: str | list[str] | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    negative_prompt: str | list[str] | None = None,
    num_images_per_prompt: int | None = 1,
    eta: float = 0.0,
    generator: Any = None,
    latents: Tensor | None = None,
    prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    output_type: str | None = "pil",
    return_dict: bool = True,
    cross_attention_kwargs: dict[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    clip_skip: int | None = None,
    **unsupported: Any,
) -> Any:
    """``StableDiffusionPipeline.__call__`` with the loop solved by picard."""
    from diffusers.pipelines.stable_diffusion.pipeline_output import (
        StableDiffusionPipelineOutput,
    )
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        rescale_noise_cfg,
    )

    for name in unsupported:
        why = "not supported by picard" if name in _SD_UNSUPPORTED else "unknown"
        raise TypeError(f"argument {name!r} of StableDiffusionPipeline is {why}")
    pipe = self.pipe
    sample = pipe.unet.config.sample_size
    sample = (sample, sample) if isinstance(sample, int) else sample
    height = height or sample[0] * pipe.vae_scale_factor
    width = width or sample[1] * pipe.vae_scale_factor
    pipe.check_inputs(
        prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds
    )
    pipe._guidance_scale, pipe._guidance_rescale = guidance_scale, guidance_rescale
    pipe._clip_skip, pipe._cross_attention_kwargs = clip_skip, cross_attention_kwargs
    pipe._interrupt = False
    if prompt is not None:
        batch = 1 if isinstance(prompt, str) else len(prompt)
    else:
        assert prompt_embeds is not None
        batch = prompt_embeds.shape[0]
    images = batch * (num_images_per_prompt or 1)
    device = pipe._execution_device
    cfg = pipe.do_classifier_free_guidance
    lora_scale = (cross_attention_kwargs or {}).get("scale")
    cond, uncond = pipe.encode_prompt(
        prompt,
        device,
        num_images_per_prompt,
        cfg,
        negative_prompt,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        lora_scale=lora_scale,
        clip_skip=clip_skip,
    )
    # As the pipeline: set the scheduler's grid (init_noise_sigma of the Euler family
    # depends on it), then draw the starting latent and scale it.
    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    latents = pipe.prepare_latents(
        images, pipe.unet.config.in_channels, height, width, cond.dtype, device, generator, latents
    )
    timestep_cond = None
    if pipe.unet.config.time_cond_proj_dim is not None:
        scale = torch.tensor(guidance_scale - 1).repeat(images)
        timestep_cond = pipe.get_guidance_scale_embedding(
            scale, embedding_dim=pipe.unet.config.time_cond_proj_dim
        ).to(device=device, dtype=latents.dtype)

    def make(dev: torch.device | None) -> Callable[..., Tensor]:
        """The guided model call, on ``dev`` (a replica of the UNet) or where it is."""
        unet = pipe.unet if dev is None else copy.deepcopy(pipe.unet).to(dev)
        c = cond if dev is None else cond.to(dev)
        u = uncond if dev is None or uncond is None else uncond.to(dev)
        tcond = timestep_cond if dev is None or timestep_cond is None else timestep_cond.to(dev)

        def denoiser(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            if samples is None:  # a shared window: rows are (step, image), step-major
                samples = torch.arange(images, device=x.device).repeat(x.shape[0] // images)
            emb = c[samples]
            tc = None if tcond is None else tcond[samples]
            if cfg:
                x, t = torch.cat([x, x]), torch.cat([t, t])
                emb = torch.cat([u[samples], emb])
                tc = None if tc is None else torch.cat([tc, tc])
            out = unet(
                x,
                t,
                encoder_hidden_states=emb,
                timestep_cond=tc,
                cross_attention_kwargs=cross_attention_kwargs,
                return_dict=False,
            )[0]
            if not cfg:
                return out
            out_uncond, out_text = out.chunk(2)
            guided = out_uncond + guidance_scale * (out_text - out_uncond)
            if guidance_rescale > 0.0:
                guided = rescale_noise_cfg(guided, out_text, guidance_rescale=guidance_rescale)
            return guided

        return denoiser

    denoiser = Replicable(make, pipe.unet.device)
    problem = self._problem(
        num_inference_steps, denoiser, generator, eta=eta, rows_per_evaluation=2 if cfg else 1
    )
    latents = self._solve(problem, latents)
    if output_type == "latent":
        image, nsfw = latents, None
    else:
        image = pipe.vae.decode(
            latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator
        )[0]
        image, nsfw = pipe.run_safety_checker(image, device, cond.dtype)
    denormalize = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
    image = pipe.image_processor.postprocess(
        image, output_type=output_type, do_denormalize=denormalize
    )
    pipe.maybe_free_model_hooks()
    if not return_dict:
        return image, nsfw
    return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)


@dataclass(frozen=True)
class Runner:
    """How :func:`parallelize` runs one pipeline class.

    Attributes:
        run: ``run(parallel_pipeline, *args, **kwargs)``: the pipeline's call with its loop
            solved by picard.
        inputs: what a call takes, for the command line: ``"text"`` (a prompt) or
            ``"none"`` (unconditional: ``batch_size``).
        supports: what of the pipeline's call is supported (one line, for the docs).

    Example:
        >>> PIPELINES["StableDiffusionPipeline"].inputs
        'text'
    """

    run: Callable[..., Any]
    inputs: str
    supports: str


PIPELINES: dict[str, Runner] = {
    "DDPMPipeline": Runner(_unconditional(ddim=False), "none", "every argument"),
    "DDIMPipeline": Runner(_unconditional(ddim=True), "none", "every argument"),
    "StableDiffusionPipeline": Runner(
        _stable_diffusion,
        "text",
        "prompts and embeddings, guidance (rescale), clip_skip, LCM guidance embedding; "
        f"not {', '.join(_SD_UNSUPPORTED)}",
    ),
}
"""Pipeline class names :func:`parallelize` runs, and how (see :class:`Runner`)."""
