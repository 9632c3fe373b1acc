"""CogVideoX's DDIM, as diffusers' ``CogVideoXDDIMScheduler`` steps it.

Deterministic DDIM (Song et al. 2021, eq. 12 with η = 0), written as CogVideoX writes it:
``x_{t'} = a_t x_t + b_t x̂_0`` with ``a_t = √((1-ᾱ_{t'})/(1-ᾱ_t))`` and
``b_t = √ᾱ_{t'} − √ᾱ_t a_t`` (the same step as ``√ᾱ_{t'} x̂_0 + √(1-ᾱ_{t'}) ε̂``). Its
schedule differs from ``DDIMScheduler``'s: ``scaled_linear`` betas in float64, the SNR
shift of SD3 (``ᾱ ← ᾱ / (s + (1 - s) ᾱ)``, ``s = snr_shift_scale``), and zero-terminal-SNR
rescaling applied to ᾱ after the shift. Like diffusers' step, it never clips x̂_0 and
ignores ``eta``: the pipelines' ``eta`` changes nothing, here or there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules
from picard.adapters.schedulers.config import read_option

__all__ = ["CogVideoXDDIMRule", "alphas_cumprod", "from_config"]


def alphas_cumprod(config: Mapping[str, Any]) -> Tensor:
    """``ᾱ_t`` of a ``CogVideoXDDIMScheduler`` config, as its constructor computes it.

    Args:
        config: the scheduler configuration.

    Returns:
        ``(num_train_timesteps,)`` ᾱ (float64 for ``scaled_linear`` betas, else float32).

    Example:
        >>> ab = alphas_cumprod({"snr_shift_scale": 1.0})
        >>> ab.dtype, round(float(ab[-1]), 4)
        (torch.float64, 0.0047)
        >>> float(alphas_cumprod({"rescale_betas_zero_snr": True})[-1])
        0.0
    """
    n = int(read_option(config, "num_train_timesteps", 1000))
    if read_option(config, "trained_betas") is None and (
        read_option(config, "beta_schedule", "scaled_linear") == "scaled_linear"
    ):
        start = read_option(config, "beta_start", 0.00085) ** 0.5
        end = read_option(config, "beta_end", 0.012) ** 0.5
        betas = torch.linspace(start, end, n, dtype=torch.float64) ** 2
    else:
        plain = {k: read_option(config, k) for k in ("beta_start", "beta_end", "trained_betas")}
        plain.update(num_train_timesteps=n, beta_schedule=read_option(config, "beta_schedule"))
        betas = schedules.betas({k: v for k, v in plain.items() if v is not None})
    ab = torch.cumprod(1.0 - betas, dim=0)
    shift = read_option(config, "snr_shift_scale", 3.0)
    ab = ab / (shift + (1 - shift) * ab)
    if read_option(config, "rescale_betas_zero_snr", False):  # on ᾱ, after the shift
        root = ab.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        ab = root**2
    return ab


class CogVideoXDDIMRule(UpdateRule):
    """CogVideoX's deterministic DDIM on ``num_inference_steps`` steps.

    Args:
        config: a ``CogVideoXDDIMScheduler`` configuration (mapping).
        num_inference_steps: N.

    Example:
        >>> rule = CogVideoXDDIMRule({"timestep_spacing": "trailing"}, 4)
        >>> rule.timesteps.tolist()
        [999, 749, 499, 249]
    """

    signal_keys = ("sqrt_alpha", "sqrt_beta")

    def __init__(self, config: Mapping[str, Any], num_inference_steps: int):
        self.config = config
        self.prediction_type = schedules.prediction_type(config)
        n = num_inference_steps
        total = int(read_option(config, "num_train_timesteps", 1000))
        if not 1 <= n <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}], got {n}")
        ab = alphas_cumprod(config)
        final = torch.tensor(1.0) if read_option(config, "set_alpha_to_one", True) else ab[0]
        t = schedules.leading_timesteps(config, n)
        schedules.check_timesteps(t, total, config)
        prev = torch.from_numpy(t - total // n)
        a_t = ab[torch.from_numpy(t)]
        a_prev = torch.where(prev >= 0, ab[prev.clamp(min=0)], final.to(ab.dtype))
        a = ((1 - a_prev) / (1 - a_t)) ** 0.5
        variance = ((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)
        self.num_steps = n
        self.timesteps = torch.from_numpy(t)
        self.coefficients = {
            "sqrt_alpha": (a_t**0.5).numpy(),
            "sqrt_beta": ((1 - a_t) ** 0.5).numpy(),
            "a": a.numpy(),
            "b": (a_prev**0.5 - a_t**0.5 * a).numpy(),
        }
        self.noise_draws = np.zeros(n, dtype=bool)
        self.tol_scale = np.append(variance.sqrt().double().numpy()[1:], 0.0)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """``a_t x + b_t x̂_0``, x̂_0 of the config's prediction type (never clipped)."""
        x0 = schedules.predict_x0(self.prediction_type, x, out, c["sqrt_alpha"], c["sqrt_beta"])
        return c["a"] * x + c["b"] * x0, None


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> CogVideoXDDIMRule:
    """The rule of a ``CogVideoXDDIMScheduler`` config (it takes no step options).

    Args:
        config: a ``CogVideoXDDIMScheduler`` configuration (mapping).
        num_inference_steps: N.

    Returns:
        The rule.

    Example:
        >>> from_config({"timestep_spacing": "trailing"}, 4).num_steps
        4
    """
    return CogVideoXDDIMRule(config, num_inference_steps)
