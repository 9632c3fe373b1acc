"""``StableDiffusionInpaintPipeline``: a 9-channel inpainting UNet, or a 4-channel one blended.

A 9-channel UNet reads the mask and the masked image's latents beside the latents: per-sample
channels, concatenated to each row of the model call. A 4-channel (text-to-image) UNet
denoises the whole latent and the pipeline pastes the known region back after every step,
``latents = (1 - mask) * add_noise(image_latents, noise, t_{i+1}) + mask * latents`` (the
un-noised image latents after the last step): that is part of the recursion, so it is an
update rule around the scheduler's, :class:`Blended`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.pipelines.sd_parts import (
    encode,
    finisher,
    guidance_embedding,
    strength_grid,
    unet_denoiser,
    unet_prepared,
)
from picard.adapters.pipelines.spec import Prepared
from picard.adapters.rule import UpdateRule

__all__ = ["Blended", "blend_targets", "inpaint_call", "prepare_inpaint"]


class Blended(UpdateRule):
    """A rule's step, then inpainting's blend, on the painted part of the latents.

    The pipeline's step ``i`` is ``x_{i+1} = (1 - m) T_{i+1} + m F_i(x_i)``: ``F_i`` the
    scheduler's step, ``m`` the mask (1 where the sampler paints), ``T_{i+1}`` the kept
    region's target. Solved as it stands, the kept region's increment ``T_{i+1} - x_i``
    moves one-for-one with the state, and Picard sweeps would fix one step each. So the
    rule's state is the painted part, ``y_i = x_i - (1 - m) T_i`` (``T_0 = x_0``: ``y``
    is 0 in the kept region of a binary mask, always): :meth:`model_input` gives the model
    ``x_i`` itself, :meth:`update` returns ``y_{i+1}``, :meth:`latents` converts back.
    With a binary mask (the pipeline binarizes it) every conversion is exact.

    Each row's step is a coefficient (``blend_step``); its sample is its column — all
    samples in order, as shared windows and per-sample windows with every sample still
    running give them — or ``samples`` where the solver passes them. Guesses of new
    steps copy the newest state (no ``signal_keys``). The rule needs the problem to call
    :meth:`model_input` (``scale_model_input=True``, as the inpainting pipeline).

    Args:
        rule: the scheduler's rule (already started at the loop's first step).
        mask: ``(batch, 1, h, w)``: 1 where the sampler paints, 0 where the image is kept.
        targets: ``(num_steps + 1, batch, C, h, w)``: ``T_0 = x_0``, then what the kept
            region becomes after each step (:func:`blend_targets`).

    Example:
        >>> from diffusers import DDIMScheduler
        >>> from picard.adapters.schedulers.ddim import from_config
        >>> mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # paint one pixel
        >>> rule = Blended(from_config(DDIMScheduler().config, 4), mask,
        ...                torch.full((5, 1, 1, 2, 2), 7.0))
        >>> c = {k: torch.as_tensor(v[:1]).reshape(1, 1, 1, 1, 1)
        ...      for k, v in rule.coefficients.items()}
        >>> y, _ = rule.update(torch.ones(1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2), c,
        ...                    None, None)
        >>> (y[0, 0, 0] == 0).tolist(), rule.latents(y[0], 1)[0, 0, 1, 1].item()
        ([[False, True], [True, True]], 7.0)
    """

    def __init__(self, rule: UpdateRule, mask: Tensor, targets: Tensor):
        if targets.shape[0] != rule.num_steps + 1 or targets.shape[1] != mask.shape[0]:
            raise ValueError(
                f"targets must be (steps + 1={rule.num_steps + 1}, batch={mask.shape[0]}, ...), "
                f"got {tuple(targets.shape)}"
            )
        self.rule, self.mask, self.keep, self.targets = rule, mask, 1 - mask, targets
        self.num_steps, self.timesteps = rule.num_steps, rule.timesteps
        self.coefficients = {
            **rule.coefficients,
            "blend_step": np.arange(rule.num_steps, dtype=np.float64),
        }
        self.noise_draws, self.tol_scale = rule.noise_draws, rule.tol_scale
        self.memory = rule.memory
        self.init_noise_sigma, self.output_channels = rule.init_noise_sigma, rule.output_channels
        self.noise_dtype, self.prediction_type = rule.noise_dtype, rule.prediction_type
        self.signal_keys = None

    def tail(self, begin: int) -> UpdateRule:
        """Not supported: wrap the inner rule's tail instead (the targets are the loop's)."""
        if begin == 0:
            return self
        raise NotImplementedError("Blended wraps the loop's rule: wrap rule.tail(begin) instead")

    def latents(self, y: Tensor, step: int) -> Tensor:
        """The pipeline's latents before step ``step`` of the rule's state ``y`` (all samples)."""
        return y + self.keep.to(y) * self.targets[step].to(y)

    def _kept(self, x: Tensor, c: Mapping[str, Tensor], samples: Tensor | None, ahead: int):
        """``(1 - m) T_{i + ahead}`` of each row (step i from ``c``) and its mask."""
        batch = self.mask.shape[0]
        if samples is None:
            if x.shape[1] != batch:
                raise ValueError(
                    f"inpainting's blend got {x.shape[1]} of {batch} samples without their "
                    "indices: per_sample windows where samples finish early are not "
                    "supported with a 4-channel UNet (use shared windows)"
                )
            samples = torch.arange(batch, device=x.device)
        step = c["blend_step"].flatten(2)[..., 0].round().long() + ahead  # (w, 1) or (w, S)
        cols = samples.to(self.targets.device)
        target = self.targets[step.to(cols.device), cols[None, :]].to(x)
        return self.keep[cols].to(x) * target, self.mask[cols].to(x)

    def model_input(
        self, x: Tensor, c: Mapping[str, Tensor], samples: Tensor | None = None
    ) -> Tensor:
        """The inner rule's model input of the pipeline's latents ``y + (1 - m) T_i``."""
        kept, _ = self._kept(x, c, samples, 0)
        return self.rule.model_input(x + kept, c)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
        samples: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The inner rule's step of the latents, blended, as the painted part ``y_{i+1}``.

        Args:
            x: states ``y`` ``(w, S, *shape)``.
            out: their model outputs.
            c: the coefficients sliced to the rows (with ``blend_step``).
            noise: the rule's noise, or ``None``.
            history: the rule's stored outputs, or ``None``.
            samples: ``(S,)`` the columns' samples (``None``: the whole batch, in order).

        Returns:
            ``(next states, outputs to store)``.

        Raises:
            ValueError: fewer columns than samples and no ``samples``.
        """
        kept, _ = self._kept(x, c, samples, 0)
        nxt, outputs = self.rule.update(x + kept, out, c, noise, history)
        kept, mask = self._kept(x, c, samples, 1)
        return (kept + mask * nxt) - kept, outputs


def blend_targets(
    pipe: Any, latents: Tensor, image_latents: Tensor, noise: Tensor, timesteps: Tensor, begin: int
) -> Tensor:
    """:class:`Blended`'s targets: the starting latents, then the kept region after each step.

    After step i, ``scheduler.add_noise(image_latents, noise, [t_{i+1}])`` as the loop
    computes it (the image latents themselves after the last step), on a copy of the
    scheduler standing where the loop's stands then (step index ``begin + i + 1``: sigma
    schedulers read it).

    Args:
        pipe: the pipeline (its scheduler, set to the call's grid).
        latents: the starting latents.
        image_latents: ``(batch, C, h, w)``.
        noise: the noise ``prepare_latents`` drew.
        timesteps: the loop's timesteps.
        begin: the loop's first step in the grid.

    Returns:
        ``(len(timesteps) + 1, batch, C, h, w)``.

    Example:
        >>> from picard.models.tiny_sd_variants import tiny_sd_inpaint
        >>> pipe = tiny_sd_inpaint(in_channels=4)
        >>> pipe.scheduler.set_timesteps(3)
        >>> blend_targets(pipe, torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2),
        ...               torch.zeros(1, 4, 2, 2), pipe.scheduler.timesteps, 0).shape
        torch.Size([4, 1, 4, 2, 2])
    """
    scheduler = copy.deepcopy(pipe.scheduler)
    targets = [latents]
    for i in range(len(timesteps) - 1):
        if hasattr(scheduler, "_step_index"):
            scheduler._step_index = begin + i + 1
        targets.append(scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2].cpu()))
    targets.append(image_latents)
    return torch.stack(targets)


def prepare_inpaint(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare a ``StableDiffusionInpaintPipeline`` call (see :func:`inpaint_call`).

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Example:
        >>> import torch
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sd_variants import tiny_sd_inpaint
        >>> pipe = tiny_sd_inpaint()
        >>> a = call_arguments(
        ...     pipe, "a cat", image=torch.rand(1, 3, 16, 16),
        ...     mask_image=torch.ones(1, 1, 16, 16), num_inference_steps=5)
        >>> prepare_inpaint(pipe, a).latents.shape
        torch.Size([1, 4, 8, 8])
    """
    return inpaint_call(pipe, a)


def inpaint_call(pipe: Any, a: Mapping[str, Any]) -> Prepared:
    """Prepare an inpainting call: prompts, ``strength``, image and mask latents, the blend.

    The pipeline's own ``check_inputs``, ``encode_prompt``, ``get_timesteps`` (setting
    the scheduler's begin index), image and mask preprocessing (with
    ``padding_mask_crop``'s crop), ``prepare_latents`` and ``prepare_mask_latents`` (the
    image encodings and the noise drawn from the call's generator as the pipeline draws
    them) run as in its ``__call__``. A 9-channel UNet's rows get their sample's mask and
    masked-image latents; a 4-channel UNet's rule is wrapped in :class:`Blended`
    (:attr:`Prepared.wrap_rule`), whose state — the starting latent and what the finish
    takes — is the painted part of the latents.

    Args:
        pipe: the pipeline.
        a: the call's arguments, defaults filled in.

    Returns:
        The prepared call.

    Raises:
        TypeError: an ``AsymmetricAutoencoderKL`` (its decoder reads the image and mask), or
            ``callback_on_step_end`` with a 4-channel UNet.
        ValueError: bad inputs, as the pipeline raises them.

    Example:
        >>> import torch
        >>> from picard.adapters.pipelines.preamble import call_arguments
        >>> from picard.models.tiny_sd_variants import tiny_sd_inpaint
        >>> pipe = tiny_sd_inpaint(in_channels=4)
        >>> a = call_arguments(
        ...     pipe, "a cat", image=torch.rand(1, 3, 16, 16),
        ...     mask_image=torch.ones(1, 1, 16, 16), num_inference_steps=5, strength=0.6)
        >>> p = inpaint_call(pipe, a)
        >>> p.begin, p.wrap_rule is not None  # strength 0.6 of 5 steps; the blend
        (2, True)
    """
    _check_supported(pipe, a)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = a["height"] or size, a["width"] or size
    strength, steps, crop = a["strength"], a["num_inference_steps"], a["padding_mask_crop"]
    pipe.check_inputs(
        a["prompt"], a["image"], a["mask_image"], height, width, strength, None,
        a["output_type"], a["negative_prompt"], a["prompt_embeds"], a["negative_prompt_embeds"],
        None, None, ["latents"], crop,
    )  # fmt: skip
    prompts = encode(pipe, a)
    timesteps, begin = strength_grid(pipe, steps, strength, prompts.device)
    coords = None if crop is None else pipe.mask_processor.get_crop_region(
        a["mask_image"], width, height, pad=crop
    )  # fmt: skip
    resize = "default" if crop is None else "fill"
    init_image = pipe.image_processor.preprocess(
        a["image"], height=height, width=width, crops_coords=coords, resize_mode=resize
    ).to(dtype=torch.float32)
    channels = pipe.unet.config.in_channels
    out = pipe.prepare_latents(
        prompts.images, pipe.vae.config.latent_channels, height, width, prompts.cond.dtype,
        prompts.device, a["generator"], a["latents"], image=init_image,
        timestep=timesteps[:1].repeat(prompts.images), is_strength_max=strength == 1.0,
        return_noise=True, return_image_latents=channels == 4,
    )  # fmt: skip
    latents, noise = out[0], out[1]
    mask, masked = _mask_latents(pipe, a, prompts, init_image, height, width, coords, resize)
    _check_channels(pipe, latents, mask, masked)
    tcond = guidance_embedding(pipe, a, prompts, latents.dtype)
    extra = torch.cat([mask, masked], 1) if channels == 9 else None
    finish = finisher(pipe, a, prompts, after=_overlay(pipe, a, coords))
    wrap = None
    if channels == 4:  # the solver's state is the painted part (see Blended)
        targets = blend_targets(pipe, latents, out[2], noise, timesteps, begin)
        latents, finish, wrap = _blended(latents, mask, targets, finish)
    denoiser = unet_denoiser(pipe, a, prompts, tcond, extra=extra)
    return unet_prepared(
        pipe, a, latents, timesteps, denoiser, finish, prompts.cfg, begin=begin, wrap_rule=wrap
    )


def _check_supported(pipe: Any, a: Mapping[str, Any]) -> None:
    """Refuse an ``AsymmetricAutoencoderKL``, and a callback with a 4-channel UNet."""
    from diffusers import AsymmetricAutoencoderKL

    if isinstance(pipe.vae, AsymmetricAutoencoderKL):
        raise TypeError(
            "StableDiffusionInpaintPipeline with an AsymmetricAutoencoderKL is not supported "
            "by picard"
        )
    if pipe.unet.config.in_channels == 4 and a["callback_on_step_end"] is not None:
        raise TypeError(
            "callback_on_step_end of StableDiffusionInpaintPipeline with a 4-channel UNet is "
            "not supported by picard: its solver's states are the painted part of the latents"
        )


def _blended(
    latents: Tensor, mask: Tensor, targets: Tensor, finish: Callable[[Tensor], Any]
) -> tuple[Tensor, Callable[[Tensor], Any], Callable[[UpdateRule], UpdateRule]]:
    """A 4-channel UNet's call as :class:`Blended` solves it: painted-part start and finish.

    Returns ``(starting state, finish of the final state, wrap_rule)``.
    """
    keep = 1 - mask

    def wrap(rule: UpdateRule) -> UpdateRule:
        return Blended(rule, mask, targets)

    def painted_finish(y: Tensor) -> Any:
        return finish(y + keep * targets[-1])

    return latents - keep * targets[0], painted_finish, wrap


def _mask_latents(
    pipe: Any,
    a: Mapping[str, Any],
    prompts: Any,
    init_image: Tensor,
    height: int,
    width: int,
    coords: Any,
    resize: str,
) -> tuple[Tensor, Tensor]:
    """The mask and masked-image latents per sample (``prepare_mask_latents``, no guidance copy)."""
    condition = pipe.mask_processor.preprocess(
        a["mask_image"], height=height, width=width, resize_mode=resize, crops_coords=coords
    )
    given = a["masked_image_latents"]
    masked = init_image * (condition < 0.5) if given is None else given
    return pipe.prepare_mask_latents(
        condition, masked, prompts.images, height, width, prompts.cond.dtype, prompts.device,
        a["generator"], False,
    )  # fmt: skip


def _check_channels(pipe: Any, latents: Tensor, mask: Tensor, masked: Tensor) -> None:
    """The pipeline's check of the UNet's input channels."""
    channels = pipe.unet.config.in_channels
    given = latents.shape[1] + mask.shape[1] + masked.shape[1]
    if channels == 9 and given != 9:
        raise ValueError(
            f"the inpainting UNet takes 9 input channels; latents, mask and masked-image "
            f"latents give {given}"
        )
    if channels not in (4, 9):
        raise ValueError(f"the UNet should have 4 or 9 input channels, not {channels}")


def _overlay(pipe: Any, a: Mapping[str, Any], coords: Any) -> Callable[[Any], Any] | None:
    """``padding_mask_crop``'s overlay of the painted crop onto the original image."""
    if coords is None:
        return None

    def after(images: Any) -> Any:
        return [
            pipe.image_processor.apply_overlay(a["mask_image"], a["image"], i, coords)
            for i in images
        ]

    return after
