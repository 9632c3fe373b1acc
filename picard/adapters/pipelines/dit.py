"""``DiTPipeline``: a class-conditioned diffusion transformer.

DiT's loop runs a doubled batch ``[x, x]`` on ``[labels, null class 1000]``, guides only
the first ``in_channels`` output channels (eps; the learned-sigma half is then dropped),
steps both halves and keeps the first. Per row, that is the guided eps of the row's state
on its label: the denoiser here. Two of DiT's quirks limit the schedulers: its loop steps
the state *after* ``scale_model_input`` (so schedulers that scale the model input, the
Euler/LMS/Heun family, run a different sampler there: refused), and its ``scheduler.step``
gets no generator — the noise of a stochastic scheduler comes from torch's global
generator, for the doubled batch with guidance (refused), for the batch itself without
(reproduced: picard draws it from the global generator in the same order).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.pipelines.preamble import latent_channels
from picard.adapters.pipelines.spec import Prepared, on, sample_rows

__all__ = ["prepare_dit"]

_NULL_CLASS = 1000
"""The class id DiT's pipeline gives the unconditional half."""


def _check_scheduler(pipe: Any, steps: int, cfg: bool) -> None:
    """Refuse schedulers whose DiT loop picard's rule does not reproduce.

    Raises:
        ValueError: the scheduler scales the model input (DiT steps the scaled state), or
            draws noise while guidance doubles the batch.
    """
    from picard.adapters.schedulers import rule_for

    rule = rule_for(pipe.scheduler, steps)
    name = type(pipe.scheduler).__name__
    c = {
        k: torch.as_tensor(np.asarray(v), dtype=torch.float64).reshape(-1, 1)
        for k, v in rule.coefficients.items()
    }
    ones = torch.ones(rule.num_steps, 1, dtype=torch.float64)
    if not torch.equal(rule.model_input(ones, c), ones):
        raise ValueError(
            f"DiTPipeline with {name}: the pipeline steps the state after scale_model_input "
            "(a different sampler than the scheduler's); not supported by picard — use a "
            "scheduler that does not scale the model input (DDIM, DPM-Solver, ...)"
        )
    if cfg and rule.noise_draws.any():
        raise ValueError(
            f"DiTPipeline with guidance_scale > 1 and the stochastic {name}: the pipeline "
            "draws each step's noise for the doubled batch from torch's global generator; "
            "not supported by picard — use guidance_scale <= 1 or a deterministic scheduler"
        )


def prepare_dit(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``DiTPipeline`` call: labels, latents, timesteps, guided eps.

    The starting latent is drawn from the call's generator as the pipeline draws it (not
    scaled by ``init_noise_sigma``: DiT does not scale it), then the scheduler's grid is
    set; rows of the model call carry their sample's class label.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in (``class_labels``: class ids; map names
            with ``pipe.get_label_ids``).

    Returns:
        The prepared call.

    Raises:
        ValueError: an unsupported scheduler (see :func:`_check_scheduler`) or transformer
            ``out_channels``.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_pixart_dit import tiny_dit
        >>> pipe = tiny_dit()
        >>> a = call_arguments(pipe, [3, 7], num_inference_steps=5)
        >>> p = prepare_dit(pipe, a)
        >>> p.latents.shape, p.rows_per_evaluation
        (torch.Size([2, 4, 8, 8]), 2)
    """
    from diffusers.utils.torch_utils import randn_tensor

    channels, _ = latent_channels(pipe, "DiTPipeline")
    scale, steps = a["guidance_scale"], a["num_inference_steps"]
    cfg = scale > 1
    _check_scheduler(pipe, steps, cfg)
    batch, size = len(a["class_labels"]), pipe.transformer.config.sample_size
    device = pipe._execution_device
    latents = randn_tensor(
        (batch, channels, size, size), generator=a["generator"], device=device,
        dtype=pipe.transformer.dtype,
    )  # fmt: skip
    labels = torch.tensor(a["class_labels"], device=device).reshape(-1)
    pipe.scheduler.set_timesteps(steps)

    def denoiser(dev: torch.device | None) -> Any:
        model, ids = on(dev, pipe.transformer), on(dev, labels)

        def call(x: Tensor, t: Tensor, samples: Tensor | None = None) -> Tensor:
            samples = sample_rows(samples, x.shape[0], batch, x.device)
            lab = ids[samples]
            if cfg:  # the pipeline's halves: [labels, null class]
                x, t = torch.cat([x, x]), torch.cat([t, t])
                lab = torch.cat([lab, torch.full_like(lab, _NULL_CLASS)])
            out = model(x, timestep=t, class_labels=lab).sample
            eps = out[:, :channels]
            if cfg:
                cond, uncond = eps.chunk(2)
                return uncond + scale * (cond - uncond)
            return eps  # the learned-sigma half, if any, is dropped as the pipeline does

        return call

    return Prepared(
        latents=latents,
        num_inference_steps=steps,
        timesteps=pipe.scheduler.timesteps,
        denoiser=denoiser,
        device=pipe.transformer.device,
        finish=lambda latents: _finish(pipe, a, latents),
        generator=None,  # DiT's scheduler.step draws from torch's global generator
        rows_per_evaluation=2 if cfg else 1,
    )


def _finish(pipe: Any, a: Mapping[str, Any], latents: Tensor) -> Any:
    """Decode and post-process as the pipeline: ``pt`` tensors, else numpy (``pil``: images)."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    samples = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    samples = (samples / 2 + 0.5).clamp(0, 1)
    if a["output_type"] != "pt":
        samples = samples.cpu().permute(0, 2, 3, 1).float().numpy()
        if a["output_type"] == "pil":
            samples = pipe.numpy_to_pil(samples)
    return ImagePipelineOutput(images=samples) if a["return_dict"] else (samples,)
