"""Latent Consistency Models (Luo et al. 2023), as diffusers' ``LCMScheduler`` steps them.

Multistep latent consistency sampling (Luo et al. 2023, Algorithm 3): at each grid
timestep τ_n the consistency function ``f_θ(z, τ_n)`` maps the latent to a clean
estimate (§4.1, the ε-parametrised form ``c_skip z + c_out (z - σ ε̂)/α``), and unless
it is the last step the estimate is pushed forward to the next timestep
``z_{n+1} = α(τ_{n+1}) f_θ + σ(τ_{n+1}) ε`` with fresh noise. Variables (diffusers ->
paper):

- ``alpha_prod_t`` ᾱ_t, ``alpha_prod_t.sqrt()`` α(τ_n), ``beta_prod_t.sqrt()`` σ(τ_n);
  ``alpha_prod_t_prev`` ᾱ of the next grid timestep τ_{n+1}.
- ``predicted_original_sample`` x̂_0 of the config's ``prediction_type`` (clipped or
  thresholded where configured); ``denoised`` f_θ = ``c_out x̂_0 + c_skip z``.
- ``c_skip`` = σ_d²/((10 t)² + σ_d²), ``c_out`` = 10 t/√((10 t)² + σ_d²) with σ_d = 0.5
  and the factor ``timestep_scaling`` (10): the consistency-model boundary scalings
  (Song et al. 2023, Consistency Models) on the discrete timestep, as LCM's code writes
  them (c_out without Song et al.'s σ_d factor, so c_out → 1), computed in float32
  from the integer timestep as diffusers does.
- ``noise``: drawn with ``randn_tensor`` in the dtype of ``denoised`` (the latent's) at
  every step except the last, whose output is ``denoised`` itself.

The grid (``set_timesteps``): with ``k = T // original_inference_steps``, the
distillation timesteps ``k - 1, 2k - 1, …`` (descending), of which N are taken at the
indices ``floor(linspace(0, original_inference_steps, N, endpoint=False))``.
``timestep_spacing``, ``steps_offset`` and ``set_alpha_to_one`` are config keys that
diffusers' LCM never reads on this path (the grid never steps past timestep 0): they
change nothing, here or there.

``LatentConsistencyModelPipeline`` steps the latents with ``prev_sample`` and decodes the
last step's ``denoised``; at the last step ``prev_sample`` *is* ``denoised``, so the
rule's final state is exactly what the pipeline decodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules

__all__ = ["LCM_DEFAULTS", "LCMRule", "check_zero_snr", "from_config", "lcm_timesteps"]

LCM_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "original_inference_steps": 50,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    **schedules.THRESHOLD_DEFAULTS,
    "timestep_spacing": "leading",
    "timestep_scaling": 10.0,
    "rescale_betas_zero_snr": False,
}
"""The defaults of diffusers' ``LCMScheduler`` (and ``TCDScheduler``): a plain mapping
config falls back to them."""

SIGMA_DATA = 0.5
"""σ_d of the boundary scalings (fixed in diffusers' LCM)."""


def _counts(config: Mapping[str, Any], n: Any, original: Any) -> tuple[int, int, int]:
    """``(num_train_timesteps, original_inference_steps, N)``, the two step counts checked."""
    total = int(config["num_train_timesteps"])
    original = schedules.check_steps(original, "original_inference_steps")
    return total, original, schedules.check_steps(n)


def pick_timesteps(origin: np.ndarray, n: int) -> np.ndarray:
    """N of the descending ``origin`` timesteps, at evenly spaced (floored) indices.

    Args:
        origin: the candidate timesteps, ascending (as diffusers builds them).
        n: how many to take.

    Returns:
        An int64 array of shape ``(n,)``, descending.

    Example:
        >>> pick_timesteps(np.arange(1, 11) * 100 - 1, 4).tolist()
        [999, 799, 499, 299]
    """
    desc = origin[::-1].copy()
    idx = np.floor(np.linspace(0, len(desc), num=n, endpoint=False)).astype(np.int64)
    return desc[idx].astype(np.int64)


def lcm_timesteps(
    config: Mapping[str, Any],
    num_inference_steps: int,
    original_inference_steps: int | None = None,
) -> np.ndarray:
    """``LCMScheduler.set_timesteps(N, original_inference_steps=…)``: the integer grid.

    Args:
        config: an ``LCMScheduler`` configuration (missing keys take :data:`LCM_DEFAULTS`).
        num_inference_steps: N, at most ``original_inference_steps``.
        original_inference_steps: the distillation grid's size (default: the config's).

    Returns:
        An int64 array of shape ``(N,)``, descending.

    Raises:
        ValueError: N or ``original_inference_steps`` out of range (as diffusers).

    Example:
        >>> lcm_timesteps({}, 4).tolist()
        [999, 759, 499, 259]
        >>> lcm_timesteps({}, 4, original_inference_steps=100).tolist()
        [999, 749, 499, 249]
    """
    config = schedules.with_defaults(config, LCM_DEFAULTS)
    if original_inference_steps is None:
        original_inference_steps = config["original_inference_steps"]
    total, original, n = _counts(config, num_inference_steps, original_inference_steps)
    if original > total:
        raise ValueError(
            f"original_inference_steps ({original}) must be at most num_train_timesteps ({total})"
        )
    if n > original:
        raise ValueError(
            f"num_inference_steps ({n}) must be at most original_inference_steps ({original}): "
            "the grid is a subset of the distillation grid"
        )
    k = total // original
    return pick_timesteps(np.arange(1, original + 1, dtype=np.int64) * k - 1, n)


def check_zero_snr(config: Mapping[str, Any], kind: str, timesteps: np.ndarray) -> None:
    """Refuse ε-prediction at a timestep where ᾱ_t = 0 (zero terminal SNR).

    diffusers divides by √ᾱ_t = 0 there and its sample is NaN.

    Args:
        config: the full configuration.
        kind: the prediction type.
        timesteps: the grid.

    Raises:
        ValueError: if the grid meets ᾱ_t = 0 with ``prediction_type="epsilon"``.

    Example:
        >>> check_zero_snr({"rescale_betas_zero_snr": True}, "v_prediction", np.array([999]))
    """
    if kind != "epsilon":
        return
    ab = schedules.alphas_cumprod(config)
    if bool((ab[torch.from_numpy(timesteps)] == 0).any()):
        raise ValueError(
            "prediction_type='epsilon' with rescale_betas_zero_snr=True divides by "
            f"√ᾱ_t = 0 at timestep {int(timesteps.max())}: diffusers' sample is NaN; use "
            "v_prediction (as zero-SNR models do)"
        )


def scalings(timesteps: Tensor, timestep_scaling: float) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` of each timestep, in diffusers' float32 arithmetic.

    Args:
        timesteps: the integer grid (int64 tensor).
        timestep_scaling: the config's factor on t.

    Returns:
        Two float32 tensors shaped like ``timesteps``.

    Example:
        >>> c_skip, c_out = scalings(torch.tensor([0, 999]), 10.0)
        >>> c_skip.tolist()[0], round(c_out[1].item(), 6)
        (1.0, 1.0)
    """
    scaled = timesteps * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.float(), c_out.float()


class LCMRule(UpdateRule):
    """Multistep latent consistency sampling, as ``LCMScheduler`` (noise at all but the last).

    Args:
        config: an ``LCMScheduler`` configuration (mapping).
        num_inference_steps: N (at most ``original_inference_steps``).
        original_inference_steps: ``set_timesteps``' option (default: the config's).

    Attributes:
        config: the full configuration (defaults filled in).

    Example:
        >>> rule = LCMRule({}, 4)
        >>> rule.timesteps.tolist(), rule.noise_draws.tolist()
        ([999, 759, 499, 259], [True, True, True, False])
    """

    signal_keys = ("sqrt_alpha", "sqrt_beta")

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        original_inference_steps: int | None = None,
    ):
        self.config = schedules.with_defaults(config, LCM_DEFAULTS)
        self.prediction_type = schedules.prediction_type(self.config)
        t = lcm_timesteps(self.config, num_inference_steps, original_inference_steps)
        check_zero_snr(self.config, self.prediction_type, t)
        n = len(t)
        ab = schedules.alphas_cumprod(self.config)
        ts = torch.from_numpy(t)
        a_t = ab[ts]
        a_next = ab[torch.cat([ts[1:], ts[-1:]])]  # the last step's is unused
        c_skip, c_out = scalings(ts, self.config["timestep_scaling"])
        last = torch.arange(n) == n - 1
        next_alpha = torch.where(last, torch.ones(()), a_next.sqrt())
        next_sigma = torch.where(last, torch.zeros(()), (1 - a_next).sqrt())
        self.num_steps = n
        self.timesteps = ts
        self.coefficients = {
            "sqrt_alpha": a_t.sqrt().numpy(),
            "sqrt_beta": (1 - a_t).sqrt().numpy(),
            "c_skip": c_skip.numpy(),
            "c_out": c_out.numpy(),
            "next_alpha": next_alpha.numpy(),
            "next_sigma": next_sigma.numpy(),
        }
        self.noise_draws = ~last.numpy()
        self.tol_scale = np.append(next_sigma.double().numpy()[1:], 0.0)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """``f_θ = c_out x̂_0 + c_skip x``, then ``α_next f_θ + σ_next z`` (last: ``f_θ``)."""
        x0 = schedules.predict_x0(self.prediction_type, x, out, c["sqrt_alpha"], c["sqrt_beta"])
        x0 = schedules.clip_or_threshold(x0, self.config, x.ndim - 2)
        denoised = c["c_out"] * x0 + c["c_skip"] * x
        if noise is None:
            return c["next_alpha"] * denoised, None
        return c["next_alpha"] * denoised + c["next_sigma"] * noise, None


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    original_inference_steps: int | None = None,
    timesteps: Any = None,
    strength: float = 1.0,
) -> LCMRule:
    """The LCM rule of an ``LCMScheduler`` config, with ``set_timesteps``' options.

    Args:
        config: an ``LCMScheduler`` configuration (mapping).
        num_inference_steps: N.
        original_inference_steps: the distillation grid's size (default: the config's).
        timesteps: custom timesteps: not supported (must be ``None``).
        strength: img2img strength: not supported (must be 1).

    Returns:
        The :class:`LCMRule` on N steps.

    Raises:
        ValueError: for custom ``timesteps`` or ``strength`` other than 1, and for
            options out of range.

    Example:
        >>> from_config({"prediction_type": "v_prediction"}, 2).timesteps.tolist()
        [999, 499]
        >>> from_config({}, 4, strength=0.5)
        Traceback (most recent call last):
            ...
        ValueError: strength (img2img) is not supported by picard's LCM rule, got 0.5
    """
    refuse_custom_grid(timesteps, strength, "LCM")
    return LCMRule(config, num_inference_steps, original_inference_steps)


def refuse_custom_grid(timesteps: Any, strength: float, name: str) -> None:
    """Refuse ``set_timesteps``' custom ``timesteps`` and ``strength`` ≠ 1.

    Args:
        timesteps: the custom timesteps (must be ``None``).
        strength: the img2img strength (must be 1).
        name: the sampler's name, for the message.

    Raises:
        ValueError: naming the option.

    Example:
        >>> refuse_custom_grid(None, 1.0, "LCM")
    """
    if timesteps is not None:
        raise ValueError(
            f"custom timesteps are not supported by picard's {name} rule; pass "
            "num_inference_steps (and original_inference_steps)"
        )
    if strength != 1.0:
        raise ValueError(
            f"strength (img2img) is not supported by picard's {name} rule, got {strength!r}"
        )
