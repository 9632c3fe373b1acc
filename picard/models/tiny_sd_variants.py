"""Tiny Stable Diffusion img2img, inpainting and ControlNet pipelines, built from configs.

Each is built on :func:`picard.models.tiny.tiny_stable_diffusion`'s components (the same
VAE, CLIP text encoder, tokenizer and scheduler; the same UNet, or its configuration with
9 input channels for inpainting), with random weights and never downloaded: 16 px images,
8x8x4 latents, a 20-step call in a fraction of a second on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from picard.models.tiny import tiny_stable_diffusion

__all__ = ["tiny_controlnet", "tiny_sd_controlnet", "tiny_sd_img2img", "tiny_sd_inpaint"]


def _components(seed: int, scheduler: Any) -> dict[str, Any]:
    """The tiny Stable Diffusion pipeline's components, without the optional image encoder."""
    components = dict(tiny_stable_diffusion(seed, scheduler).components)
    components.pop("image_encoder", None)
    return components


def _finish(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd_img2img(seed: int = 0, scheduler: Any = None) -> Any:
    """A ``StableDiffusionImg2ImgPipeline`` of the tiny Stable Diffusion components.

    Args:
        seed: the weights' seed.
        scheduler: the scheduler to set (default: the tiny pipeline's ``DDPMScheduler``).

    Returns:
        The pipeline, without safety checker, progress bar disabled.

    Example:
        >>> pipe = tiny_sd_img2img()
        >>> type(pipe).__name__, pipe.unet.config.in_channels
        ('StableDiffusionImg2ImgPipeline', 4)
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    components = _components(seed, scheduler)
    return _finish(StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False))


def tiny_sd_inpaint(seed: int = 0, scheduler: Any = None, in_channels: int = 9) -> Any:
    """A ``StableDiffusionInpaintPipeline``: a 9-channel inpainting UNet or the plain 4-channel one.

    Args:
        seed: the weights' seed.
        scheduler: the scheduler to set (default: the tiny pipeline's ``DDPMScheduler``).
        in_channels: 9 (an inpainting UNet: latents, mask and masked-image latents, built
            from the tiny UNet's configuration) or 4 (the tiny text-to-image UNet itself:
            the pipeline blends the known region back after every step).

    Returns:
        The pipeline, without safety checker, progress bar disabled.

    Raises:
        ValueError: if ``in_channels`` is neither 4 nor 9.

    Example:
        >>> [tiny_sd_inpaint(in_channels=c).unet.config.in_channels for c in (9, 4)]
        [9, 4]
    """
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    if in_channels not in (4, 9):
        raise ValueError(f"in_channels must be 4 or 9, got {in_channels}")
    components = _components(seed, scheduler)
    if in_channels == 9:
        torch.manual_seed(seed)
        unet: Any = UNet2DConditionModel.from_config(components["unet"].config, in_channels=9)
        components["unet"] = unet.eval()
    return _finish(StableDiffusionInpaintPipeline(**components, requires_safety_checker=False))


def tiny_controlnet(unet: Any, seed: int = 0, global_pool_conditions: bool = False) -> Any:
    """A ``ControlNetModel`` made from ``unet`` (``from_unet``), its zero layers randomized.

    A fresh ControlNet's output layers are zero, so its residuals would be zero and a test
    could not tell them from none: here they are drawn at random (std 0.02).

    Args:
        unet: the tiny ``UNet2DConditionModel`` (16 px images, 8 px latents).
        seed: the random layers' seed.
        global_pool_conditions: the config flag (the pipeline then runs in guess mode).

    Returns:
        The ControlNet, in eval mode.

    Example:
        >>> from picard.models.tiny import tiny_stable_diffusion
        >>> net = tiny_controlnet(tiny_stable_diffusion().unet)
        >>> bool(net.controlnet_mid_block.weight.detach().abs().sum() > 0)
        True
    """
    from diffusers import ControlNetModel

    net: Any = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    if global_pool_conditions:
        net.register_to_config(global_pool_conditions=True)
    generator = torch.Generator().manual_seed(seed)
    zeros = [*net.controlnet_down_blocks, net.controlnet_mid_block]
    zeros.append(net.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for layer in zeros:
            for p in layer.parameters():
                p.copy_(0.02 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return net.eval()


def tiny_sd_controlnet(
    seed: int = 0, scheduler: Any = None, global_pool_conditions: bool = False
) -> Any:
    """A ``StableDiffusionControlNetPipeline`` with one tiny ControlNet (:func:`tiny_controlnet`).

    Args:
        seed: the weights' seed.
        scheduler: the scheduler to set (default: the tiny pipeline's ``DDPMScheduler``).
        global_pool_conditions: the ControlNet's config flag (guess mode always).

    Returns:
        The pipeline, without safety checker, progress bar disabled; its control images
        are 16 px, 3 channels.

    Example:
        >>> pipe = tiny_sd_controlnet()
        >>> type(pipe).__name__, type(pipe.controlnet).__name__
        ('StableDiffusionControlNetPipeline', 'ControlNetModel')
    """
    from diffusers import StableDiffusionControlNetPipeline

    components = _components(seed, scheduler)
    controlnet = tiny_controlnet(components["unet"], seed, global_pool_conditions)
    return _finish(
        StableDiffusionControlNetPipeline(
            **components, controlnet=controlnet, requires_safety_checker=False
        )
    )
