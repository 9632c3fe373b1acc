"""What the sigma-grid rules share: grid checks, churn, and the VE latent of a VP model.

The Euler family (Euler, Euler-ancestral, Heun, KDPM2, LMS, EDM Euler, flow-matching
Euler/Heun) and the σ conversions of UniPC and SA-Solver read the same sigma-schedule
options, refuse the same broken grids and share Algorithm 2's churn (Karras et al.
2022); the helpers here do it once, as diffusers' Euler schedulers do it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from picard.adapters.rule import UpdateRule
from picard.adapters.schedulers import schedules

__all__: list[str] = []


def chosen_sigma_schedule(config: Mapping[str, Any]) -> str | None:
    """Which of karras/exponential/beta sigmas the config asks for (at most one)."""
    keys = schedules.SIGMA_SCHEDULES
    chosen = [k for k in keys if config.get(k)]
    if len(chosen) > 1:
        raise ValueError(f"only one of {', '.join(keys)} can be set, got {', '.join(chosen)}")
    return chosen[0] if chosen else None


def convert_config_sigmas(
    kind: str, in_sigmas: np.ndarray, n: int, config: Mapping[str, Any]
) -> np.ndarray:
    """:func:`schedules.convert_sigmas` between the config's bounds, else the input's ends.

    ``sigma_min``/``sigma_max`` of the config, as diffusers' Euler-type schedulers read them.
    """
    lo = config.get("sigma_min")
    hi = config.get("sigma_max")
    lo = float(in_sigmas[-1].item()) if lo is None else float(lo)
    hi = float(in_sigmas[0].item()) if hi is None else float(hi)
    return schedules.convert_sigmas(kind, lo, hi, n)


def check_grid(timesteps: Tensor, sigmas: Tensor) -> None:
    """Refuse grids diffusers would step wrongly: non-finite, or a repeated first timestep.

    diffusers finds the first step by value and takes the *second* match if repeated.
    """
    if not (torch.isfinite(timesteps).all() and torch.isfinite(sigmas).all()):
        raise ValueError(
            f"the grid is not finite (timesteps {_brief(timesteps)}, sigmas {_brief(sigmas)}); "
            "check the config's schedule options and the step count"
        )
    repeats = int((timesteps == timesteps[0]).sum()) if len(timesteps) else 0
    if repeats > 1:
        raise ValueError(
            f"the first timestep {timesteps[0].item():g} occurs {repeats} times in the grid "
            f"{_brief(timesteps)}; diffusers would start at the second occurrence and step "
            "past the end of its sigmas. Use fewer steps, another timestep_spacing or "
            "sigma_min/sigma_max inside the training range"
        )


def _brief(values: Tensor, k: int = 6) -> str:
    items = [f"{v:g}" for v in values.tolist()]
    return "[" + ", ".join(items if len(items) <= k else [*items[:k], "…"]) + "]"


def init_noise_sigma(config: Mapping[str, Any], sigmas: Tensor) -> float:
    """The ``init_noise_sigma`` of diffusers: max σ, or √(max σ² + 1) for leading spacing."""
    top = sigmas.max()
    if config["timestep_spacing"] in ("linspace", "trailing"):
        return float(top)
    return float((top**2 + 1) ** 0.5)


def ancestral_tol_scale(sigmas: Tensor, m: int) -> np.ndarray:
    """``ancestral_std(σ_{i+1}, σ_{i+2})`` for i < M - 1, then 0 (VE latent units)."""
    s = sigmas.double()
    std = schedules.ancestral_std(s[1:m], s[2 : m + 1]).numpy()
    return np.append(np.nan_to_num(std, nan=0.0), 0.0)


def karras_churn(
    sigma: Tensor, count: int, s_churn: float, s_tmin: float, s_tmax: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 2's churn at each step's σ_i: ``(σ̂_i, draws, √(σ̂_i² - σ_i²))``.

    γ = min(S_churn/count, √2 - 1) where S_tmin ≤ σ_i ≤ S_tmax (``count`` is diffusers'
    ``len(sigmas) - 1``); a step draws noise where γ > 0 there.
    """
    gamma = min(s_churn / count, 2**0.5 - 1)
    inside = (s_tmin <= sigma) & (sigma <= s_tmax)  # compared in float32, as diffusers
    sigma_hat = torch.where(inside, sigma * (gamma + 1), sigma)
    draws = inside & (gamma > 0)
    churn = torch.where(draws, (sigma_hat**2 - sigma**2) ** 0.5, torch.zeros(()))
    return sigma_hat, draws, churn


def vp_scalings(sigma: Tensor) -> dict[str, np.ndarray]:
    """``c_in``'s inverse √(σ² + 1) and the v-prediction constants at each σ (float32)."""
    return {
        "input_scale": ((sigma**2 + 1) ** 0.5).numpy(),
        "c_out": (-sigma / (sigma**2 + 1) ** 0.5).numpy(),
        "c_skip_inv": (sigma**2 + 1).numpy(),
    }


class VPDenoiser(UpdateRule):
    """The VE latent of a VP-trained model: ``c_in``, the denoiser D and the ε signal.

    Subclasses hold ``coefficients`` with :func:`vp_scalings`' keys.
    """

    prediction_type: str

    def _unit_signal(self, sigma_key: str) -> None:
        """Declare ``x = 1 · x_0 + σ ε`` for the predicted guesses (ε-prediction only).

        The state is the unscaled latent, so α = 1 and σ is the step's σ; for an
        ε-model ``x̂_0 = x - σ ε̂`` as in :meth:`_denoised`. (v- and sample-prediction
        rules keep copies: their outputs relate to the scaled latent.)
        """
        if self.prediction_type == "epsilon":
            self.coefficients["unit"] = np.ones(self.num_steps)
            self.signal_keys = ("unit", sigma_key)

    def model_input(self, x: Tensor, c: Mapping[str, Tensor]) -> Tensor:
        """``scale_model_input``: ``x / √(σ² + 1)``, the VP latent the model was trained on."""
        return x / c["input_scale"]

    def _denoised(self, x: Tensor, out: Tensor, c: Mapping[str, Tensor], sigma: Tensor) -> Tensor:
        """``pred_original_sample`` at σ, as diffusers writes it."""
        if self.prediction_type == "epsilon":
            return x - sigma * out
        if self.prediction_type == "v_prediction":
            return out * c["c_out"] + x / c["c_skip_inv"]
        return out  # sample (or its old name, original_sample)


def real_number(name: str, value: Any) -> float:
    """``value`` as a float, else a ``TypeError`` naming ``name`` (``bool`` is not real)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)
