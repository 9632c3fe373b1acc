"""DDIM (Song et al. 2021), as diffusers' ``DDIMScheduler`` steps it.

Eq. (12): ``x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - σ_t²) ε̂ + σ_t z`` with
``σ_t = η √((1-ᾱ_{t'})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t'})``. As in diffusers, the step goes to
``t' = t - T/N`` (``num_train_timesteps // num_inference_steps``), and past the start of
the training schedule ``ᾱ_{t'}`` is ``final_alpha_cumprod`` (1 with ``set_alpha_to_one``,
else ᾱ_0) — the value the ParaDiGMS code forgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules

__all__ = ["DDIMRule"]


class DDIMRule(UpdateRule):
    """DDIM on ``num_inference_steps`` steps, any ``eta`` (noise drawn once when > 0).

    Args:
        config: a ``DDIMScheduler`` configuration (mapping).
        num_inference_steps: N.
        eta: η, the weight of the noise (0 deterministic, 1 DDPM-like).
        use_clipped_model_output: re-derive ε̂ from the clipped x̂_0, as diffusers' option.

    Example:
        >>> rule = DDIMRule({"num_train_timesteps": 1000, "timestep_spacing": "trailing"}, 4)
        >>> rule.timesteps.tolist()
        [999, 749, 499, 249]
    """

    signal_keys = ("sqrt_alpha", "sqrt_beta")

    def __init__(
        self,
        config: Mapping[str, Any],
        num_inference_steps: int,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ):
        self.config = config
        self.prediction_type = schedules.prediction_type(config)
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.use_clipped_model_output = bool(use_clipped_model_output)
        n = num_inference_steps
        total = int(config.get("num_train_timesteps", 1000))
        if not 1 <= n <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}], got {n}")
        ab = schedules.alphas_cumprod(config)
        final = torch.tensor(1.0) if config.get("set_alpha_to_one", True) else ab[0]
        t = schedules.leading_timesteps(config, n)
        schedules.check_timesteps(t, total, config)
        prev = torch.from_numpy(t - total // n)
        a_t = ab[torch.from_numpy(t)]
        a_prev = torch.where(prev >= 0, ab[prev.clamp(min=0)], final)
        beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
        variance = (beta_prod_prev / beta_prod_t) * (1 - a_t / a_prev)
        std = self.eta * variance**0.5
        self.num_steps = n
        self.timesteps = torch.from_numpy(t)
        self.coefficients = {
            "sqrt_alpha": (a_t**0.5).numpy(),
            "sqrt_beta": (beta_prod_t**0.5).numpy(),
            "sqrt_alpha_prev": (a_prev**0.5).numpy(),
            "direction": ((1 - a_prev - std**2) ** 0.5).numpy(),
            "std": std.numpy(),
        }
        self.noise_draws = np.full(n, self.eta > 0)
        self.tol_scale = np.append(variance.sqrt().double().numpy()[1:], 0.0)

    def update(
        self,
        x: Tensor,
        out: Tensor,
        c: Mapping[str, Tensor],
        noise: Tensor | None,
        history: Tensor | None,
    ) -> tuple[Tensor, None]:
        """Eq. (12) with the config's prediction type and clipping."""
        sa, sb = c["sqrt_alpha"], c["sqrt_beta"]
        x0 = schedules.predict_x0(self.prediction_type, x, out, sa, sb)
        eps = schedules.predict_eps(self.prediction_type, x, out, sa, sb)
        x0 = schedules.clip_or_threshold(x0, self.config, x.ndim - 2)
        if self.use_clipped_model_output:
            eps = (x - sa * x0) / sb
        nxt = c["sqrt_alpha_prev"] * x0 + c["direction"] * eps
        if noise is not None:
            nxt = nxt + c["std"] * noise
        return nxt, None


def from_config(
    config: Mapping[str, Any],
    num_inference_steps: int,
    *,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
) -> DDIMRule:
    """The DDIM rule of a ``DDIMScheduler`` config with the step options of its pipelines."""
    return DDIMRule(config, num_inference_steps, eta, use_clipped_model_output)
