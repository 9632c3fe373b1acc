"""``DDPMPipeline`` and ``DDIMPipeline``: unconditional image UNets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from picard.adapters.pipelines.spec import Prepared, on

__all__ = ["prepare_unconditional"]


def prepare_unconditional(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``DDPMPipeline``/``DDIMPipeline`` call (its own arguments in ``a``).

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Example:
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny import tiny_unet_pipeline
        >>> pipe = tiny_unet_pipeline("ddim")
        >>> a = call_arguments(pipe, num_inference_steps=5)
        >>> prepare_unconditional(pipe, a).latents.shape
        torch.Size([1, 3, 8, 8])
    """
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    batch, generator = a["batch_size"], a["generator"]
    size = pipe.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch, pipe.unet.config.in_channels, *size)
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(
            f"generator is a list of {len(generator)} generators but batch_size is {batch}; "
            "give one per image"
        )
    device = pipe._execution_device
    image = randn_tensor(shape, generator=generator, device=device, dtype=pipe.unet.dtype)
    pipe.scheduler.set_timesteps(a["num_inference_steps"])  # as the pipeline does

    def denoiser(dev: torch.device | None) -> Any:
        unet = on(dev, pipe.unet)
        return lambda x, t: unet(x, t).sample

    step_options: dict[str, Any] = {}
    if "eta" in a:  # DDIMPipeline passes these to the scheduler's step, whatever it is
        step_options = {
            "eta": a["eta"],
            "use_clipped_model_output": bool(a["use_clipped_model_output"]),
        }

    def finish(image: Tensor) -> Any:
        image = (image / 2 + 0.5).clamp(0, 1)
        if a["output_type"] != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if a["output_type"] == "pil":
                image = pipe.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if a["return_dict"] else (image,)

    # These pipelines neither scale the latent by init_noise_sigma nor call
    # scale_model_input; with a sigma-based scheduler set, neither does picard.
    return Prepared(
        latents=image,
        num_inference_steps=a["num_inference_steps"],
        timesteps=pipe.scheduler.timesteps,
        denoiser=denoiser,
        device=pipe.unet.device,
        finish=finish,
        generator=generator,
        step_options=step_options,
        scale_model_input=False,
    )
