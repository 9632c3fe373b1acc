"""DDPM (Ho et al. 2020) ancestral sampling, as diffusers' ``DDPMScheduler`` steps it.

Variables (diffusers -> paper): ``alpha_prod_t`` ᾱ_t, ``alpha_prod_t_prev`` ᾱ_{t'} (t' the
next grid timestep, ᾱ = 1 past the end), ``current_beta_t`` β_t = 1 - ᾱ_t/ᾱ_{t'}.
Eq. (7): ``x_{t'} = c0 x̂_0 + c1 x_t + σ_t z`` with ``c0 = √ᾱ_{t'} β_t / (1-ᾱ_t)``,
``c1 = √(1-β_t) (1-ᾱ_{t'}) / (1-ᾱ_t)`` and σ_t² the variance of ``variance_type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules

__all__ = ["DDPMRule"]

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")


class DDPMRule(UpdateRule):
    """DDPM on ``num_inference_steps`` steps of the config's grid.

    Args:
        config: a ``DDPMScheduler`` configuration (mapping).
        num_inference_steps: N.

    Example:
        >>> rule = DDPMRule({"num_train_timesteps": 1000}, 10)
        >>> rule.timesteps[:3].tolist(), bool(rule.noise_draws[-1])
        ([900, 800, 700], False)
    """

    signal_keys = ("sqrt_alpha", "sqrt_beta")

    def __init__(self, config: Mapping[str, Any], num_inference_steps: int):
        self.config = config
        self.variance_type = config.get("variance_type", "fixed_small")
        if self.variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"variance_type must be one of {VARIANCE_TYPES} for DDPM, got "
                f"{self.variance_type!r}"
            )
        self.prediction_type = schedules.prediction_type(config)
        n = num_inference_steps
        total = config.get("num_train_timesteps", 1000)
        if not 1 <= n <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}], got {n}")
        ab = schedules.alphas_cumprod(config)
        t = schedules.leading_timesteps(config, n)
        schedules.check_timesteps(t, total, config)
        prev = np.append(t[1:], -1)  # the grid's next timestep, never a fixed stride
        a_t = ab[torch.from_numpy(t)]
        a_prev = torch.where(
            torch.from_numpy(prev) >= 0, ab[torch.from_numpy(prev).clamp(min=0)], torch.tensor(1.0)
        )
        beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
        current_alpha = a_t / a_prev
        current_beta = 1 - current_alpha
        posterior_var = torch.clamp(beta_prod_prev / beta_prod_t * current_beta, min=1e-20)
        self.num_steps = n
        self.timesteps = torch.from_numpy(t)
        self.coefficients = {
            "sqrt_alpha": (a_t**0.5).numpy(),
            "sqrt_beta": (beta_prod_t**0.5).numpy(),
            "c0": ((a_prev**0.5 * current_beta) / beta_prod_t).numpy(),
            "c1": (current_alpha**0.5 * beta_prod_prev / beta_prod_t).numpy(),
            "std": self._fixed_std(posterior_var, current_beta).numpy(),
            "log_min": torch.log(posterior_var).numpy(),
            "log_max": torch.log(current_beta).numpy(),
            "draws": (torch.from_numpy(t) > 0).float().numpy(),
        }
        self.noise_draws = t > 0  # diffusers draws no noise at timestep 0
        self.output_channels = 2 if self.variance_type.startswith("learned") else 1
        std = (
            self.coefficients["std"] if self.output_channels == 1 else posterior_var.sqrt().numpy()
        )
        self.tol_scale = np.append(np.asarray(std, dtype=np.float64)[1:], 0.0)

    def _fixed_std(self, posterior_var: Tensor, current_beta: Tensor) -> Tensor:
        if self.variance_type == "fixed_large":
            return current_beta**0.5
        if self.variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior_var))
        return posterior_var**0.5  # fixed_small (and the scale of the learned types)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """Eq. (7) with the config's prediction type, clipping and variance."""
        channels = x.shape[2]
        predicted_variance = None
        if self.output_channels == 2:
            out, predicted_variance = out[:, :, :channels], out[:, :, channels:]
        x0 = schedules.predict_x0(self.prediction_type, x, out, c["sqrt_alpha"], c["sqrt_beta"])
        x0 = schedules.clip_or_threshold(x0, self.config, x.ndim - 2)
        nxt = c["c0"] * x0 + c["c1"] * x
        if noise is None:
            return nxt, None
        if self.variance_type == "learned":
            assert predicted_variance is not None
            std = predicted_variance**0.5
        elif self.variance_type == "learned_range":
            assert predicted_variance is not None
            frac = (predicted_variance + 1) / 2
            std = torch.exp(0.5 * (frac * c["log_max"] + (1 - frac) * c["log_min"]))
        else:
            std = c["std"]
        # Steps that draw no noise add none (a learned std there may be NaN: unused).
        return nxt + torch.where(c["draws"] > 0, std * noise, 0.0), None


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> DDPMRule:
    """The DDPM rule of a ``DDPMScheduler`` config (the sampler takes no step options)."""
    return DDPMRule(config, num_inference_steps)
